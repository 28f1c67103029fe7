// The clinician workspace: the patients they may open (found by name or identifier), a
// chart by category with a trend plot, forms that write an observation, a condition or a
// note (checked by the node's $validate before they are sent), the contract's own words when
// a read is refused, and break-glass with its time box running on screen. Every read here is
// a FHIR read with the clinician's token, decided and recorded on chain.
import { describe, dateOf, day, text } from '/ui/render.js';
import { $, el, say, fail, call, fhir, everyEntry, loadDirectory, tabs } from '/ui/common.js';

let patients = [];
let current = null; // {id, name}
let chart = {}; // type -> resources
let glassTimer = null;
let glassFor = null; // the patient whose emergency access runs
const select = tabs($('tabs-clinician'), { 'w-patients': showPatients, 'w-chart': showChart, 'w-write': showWrite });

// The types this node serves, from its CapabilityStatement: the chart asks for no other.
let served = new Set();

export async function show(me) {
  await loadDirectory();
  const metadata = await fhir('metadata');
  served = new Set(((metadata.rest || [])[0] || {}).resource?.map((r) => r.type) || []);
  $('who').textContent = `Clinician ${me.identity.slice(0, 8)}…`;
  $('tabs-clinician').hidden = false;
  select('w-patients');
}

const nameOfPatient = (p) => describe(p).title;
const identifierOf = (p) => ((p.identifier || [])[0] || {}).value || '';

// ---- patients --------------------------------------------------------------------------
async function showPatients() {
  say('Loading your patients…', true);
  const { patients: list } = await call('/ui/patients');
  patients = [];
  for (const { patient, why } of list) {
    // Each demographic read is a read on the trail, as in any chart.
    const resource = await fhir(`Patient/${patient}`).catch(() => null);
    patients.push({ id: patient, why, resource });
  }
  drawPatients();
  say(patients.length ? '' : 'No patient has given you access, and none is registered at your institution.');
}

function drawPatients() {
  const query = $('w-find').value.trim().toLowerCase();
  const shown = patients.filter((p) => !query || [p.id, p.resource && nameOfPatient(p.resource), p.resource && identifierOf(p.resource)]
    .some((v) => v && v.toLowerCase().includes(query)));
  $('w-patient-rows').replaceChildren(...shown.map((p) => {
    const row = el('tr');
    const name = p.resource ? nameOfPatient(p.resource) : `Patient ${p.id.slice(0, 8)}…`;
    row.append(el('td', name), el('td', p.resource ? p.resource.birthDate || '' : ''),
      el('td', p.resource ? identifierOf(p.resource) : ''), el('td', p.why));
    const cell = el('td');
    const open = el('button', 'Open chart', { type: 'button', 'aria-label': `Open chart of ${name}` });
    open.addEventListener('click', () => { current = { id: p.id, name }; select('w-chart'); });
    cell.append(open);
    row.append(cell);
    return row;
  }));
}
$('w-find').addEventListener('input', drawPatients);
$('w-open-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('w-open-id').value.trim().toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(id)) return say('A patient id is 32 hexadecimal characters.');
  current = { id, name: `Patient ${id.slice(0, 8)}…` };
  return select('w-chart');
});

// ---- the chart -------------------------------------------------------------------------
const SECTIONS = [
  ['Problems', ['Condition']],
  ['Medications', ['MedicationRequest', 'MedicationStatement']],
  ['Allergies', ['AllergyIntolerance']],
  ['Vitals and labs', ['Observation']],
  ['Encounters', ['Encounter']],
  ['Documents', ['DocumentReference', 'DiagnosticReport']],
  ['Immunizations and procedures', ['Immunization', 'Procedure']],
];

async function showChart() {
  if (!current) {
    $('w-chart-title').textContent = 'Chart';
    $('w-chart-body').replaceChildren(el('p', 'Choose a patient first.'));
    return;
  }
  $('w-chart-title').textContent = `Chart of ${current.name}`;
  say('Loading the chart…', true);
  await fillReasons();
  chart = {};
  const refusals = [];
  const types = SECTIONS.flatMap(([, t]) => t).filter((t) => served.has(t));
  for (const type of types) {
    try {
      chart[type] = (await everyEntry(`${type}?patient=${current.id}&_count=100`, 2000)).map((e) => e.resource);
    } catch (error) {
      if (error.status !== 403) throw error;
      chart[type] = null;
      refusals.push([type, error.message]);
    }
  }
  drawChart(refusals);
  say('');
}

function drawChart(refusals) {
  const denied = $('w-denied');
  denied.hidden = refusals.length === 0;
  // While emergency access runs for this patient, the form is not offered again.
  $('w-glass-form').hidden = glassFor === current.id && !$('w-glass-running').hidden;
  if (refusals.length) {
    const reasons = [...new Set(refusals.map(([, why]) => why))];
    $('w-denied-why').textContent = `Refused: ${reasons.join('; ')} (${refusals.map(([t]) => t).join(', ')}). The attempt is on the patient's trail.`;
  }
  const body = SECTIONS.map(([title, types]) => {
    const section = el('section', null, { 'aria-label': title });
    section.append(el('h3', title));
    const kept = types.filter((t) => t in chart);
    if (!kept.length) {
      section.append(el('p', 'This network keeps no such records.'));
      return section;
    }
    const allowed = kept.filter((t) => chart[t]);
    if (!allowed.length) {
      section.append(el('p', 'Not shown: no consent covers it.', { class: 'denied' }));
      return section;
    }
    const items = allowed.flatMap((t) => chart[t]).sort((a, b) => String(dateOf(b)).localeCompare(String(dateOf(a))));
    if (title === 'Vitals and labs') section.append(trend(items));
    if (!items.length) section.append(el('p', 'None recorded.'));
    const list = el('ul', null, { class: 'chart-list' });
    for (const r of items.slice(0, 50)) {
      const { title: heading, facts } = describe(r);
      const item = el('li');
      item.append(el('strong', heading), ` · ${day(dateOf(r)) || 'no date'}`);
      if (facts.length) item.append(el('span', ` · ${facts.slice(0, 2).map(([k, v]) => `${k}: ${v}`).join(' · ')}`));
      list.append(item);
    }
    if (items.length > 50) list.append(el('li', `and ${items.length - 50} more`));
    section.append(list);
    return section;
  });
  $('w-chart-body').replaceChildren(...body);
}

// A numeric observation over time, as an SVG line with its values in a table beside it.
function trend(observations) {
  const series = {};
  for (const o of observations) {
    const q = o.valueQuantity;
    const when = dateOf(o);
    if (!q || typeof q.value !== 'number' || !when) continue;
    const name = text(o.code) || 'Observation';
    (series[name] = series[name] || { unit: q.unit || '', points: [] }).points.push([Date.parse(when), q.value]);
  }
  const names = Object.keys(series).filter((n) => series[n].points.length >= 2).sort();
  const box = el('figure', null, { class: 'trend' });
  if (!names.length) return box;
  const label = el('label', 'Trend of ', { for: 'w-trend-code' });
  const chooser = el('select', null, { id: 'w-trend-code' });
  chooser.append(...names.map((n) => el('option', n, { value: n })));
  label.append(chooser);
  const plot = el('div');
  const draw = () => {
    const { unit, points } = series[chooser.value];
    points.sort((a, b) => a[0] - b[0]);
    const [w, h, pad] = [600, 200, 40];
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const x = (v) => pad + ((v - x0) / Math.max(1, x1 - x0)) * (w - 2 * pad);
    const y = (v) => h - pad + ((v - y0) / Math.max(1e-9, y1 - y0 || 1)) * -(h - 2 * pad);
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${chooser.value} from ${day(new Date(x0).toISOString())} to ${day(new Date(x1).toISOString())}, ${points.length} values between ${y0} and ${y1} ${unit}`);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', '#0b4f8a');
    line.setAttribute('stroke-width', '2');
    svg.append(line);
    for (const [value, at] of [[y1, pad], [y0, h - pad]]) {
      const t = document.createElementNS(ns, 'text');
      t.setAttribute('x', '2');
      t.setAttribute('y', String(at));
      t.setAttribute('font-size', '12');
      t.textContent = `${value} ${unit}`;
      svg.append(t);
    }
    plot.replaceChildren(svg, el('p', `${points.length} values, latest ${points[points.length - 1][1]} ${unit} on ${day(new Date(points[points.length - 1][0]).toISOString())}`, { class: 'meta' }));
  };
  chooser.addEventListener('change', draw);
  box.append(label, plot);
  draw();
  return box;
}

// ---- break-glass -----------------------------------------------------------------------
async function fillReasons() {
  const chooser = $('w-glass-reason');
  if (chooser.options.length > 1) return;
  const { break_glass: reasons } = await call('/access/reasons');
  chooser.append(...reasons.map((r) => el('option', r.text || r.description || r.reason, { value: r.code })));
}
$('w-glass-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const reason = Number($('w-glass-reason').value);
    if (!reason) throw new Error('choose the reason for emergency access');
    say('Opening the record in an emergency; this is flagged to the patient and the auditors…', true);
    const opened = await call('/ui/break-glass', { method: 'POST', body: JSON.stringify({ patient: current.id, reason }) });
    glassFor = current.id;
    runGlass(opened.until_ms);
    await showChart();
    say('Emergency access is open and recorded on the chain.');
  } catch (error) { fail(error); }
});
function runGlass(untilMs) {
  clearInterval(glassTimer);
  const banner = $('w-glass-running');
  const tick = () => {
    const left = Math.max(0, Number(untilMs) - Date.now());
    const minutes = Math.floor(left / 60000);
    const seconds = Math.floor((left % 60000) / 1000);
    $('w-glass-timer').textContent = `${minutes} min ${String(seconds).padStart(2, '0')} s`;
    if (!left) { clearInterval(glassTimer); banner.hidden = true; }
  };
  banner.hidden = false;
  tick();
  glassTimer = setInterval(tick, 1000);
}

// ---- writing to the chart --------------------------------------------------------------
const VITALS = {
  '8867-4': ['Heart rate', '/min', 'vital-signs', 20, 250],
  '8480-6': ['Systolic blood pressure', 'mm[Hg]', 'vital-signs', 50, 260],
  '8310-5': ['Body temperature', 'Cel', 'vital-signs', 30, 45],
  '29463-7': ['Body weight', 'kg', 'vital-signs', 0.3, 400],
  '2339-0': ['Glucose [Mass/volume] in Blood', 'mg/dL', 'laboratory', 10, 1000],
};

async function showWrite() {
  if (!current) {
    $('w-write-who').textContent = 'no patient yet: choose one first';
    return;
  }
  $('w-write-who').textContent = current.name;
  const code = $('w-obs-code');
  if (!code.options.length) code.append(...Object.entries(VITALS).map(([c, [name, unit]]) => el('option', `${name} (${unit})`, { value: c })));
  $('w-obs-when').value = $('w-obs-when').value || new Date().toISOString().slice(0, 16);
  await fillReasons().catch(() => {});
}

function chosenKind() {
  return document.querySelector('input[name="w-kind"]:checked').value;
}
$('w-kinds').addEventListener('change', () => {
  for (const kind of ['Observation', 'Condition', 'DocumentReference']) $(`w-fields-${kind}`).hidden = kind !== chosenKind();
});

// The resource the form describes, or an error naming the field to fix.
function resourceFromForm() {
  const subject = { reference: `Patient/${current.id}` };
  const kind = chosenKind();
  if (kind === 'Observation') {
    const code = $('w-obs-code').value;
    const [name, unit, category, low, high] = VITALS[code];
    const value = Number($('w-obs-value').value);
    if ($('w-obs-value').value === '' || Number.isNaN(value)) throw new Error('enter the value as a number');
    if (value < low || value > high) throw new Error(`${name} must be between ${low} and ${high} ${unit}`);
    const when = $('w-obs-when').value;
    if (!when) throw new Error('enter when it was measured');
    return {
      resourceType: 'Observation', status: 'final', subject,
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: category }] }],
      code: { coding: [{ system: 'http://loinc.org', code, display: name }], text: name },
      effectiveDateTime: new Date(when).toISOString(),
      valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit },
    };
  }
  if (kind === 'Condition') {
    const what = $('w-cond-text').value.trim();
    if (!what) throw new Error('describe the condition');
    const onset = $('w-cond-onset').value;
    return {
      resourceType: 'Condition', subject,
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: $('w-cond-status').value }] },
      verificationStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] },
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-category', code: 'problem-list-item' }] }],
      code: { text: what },
      ...(onset ? { onsetDateTime: onset } : {}),
      recordedDate: new Date().toISOString(),
    };
  }
  const title = $('w-note-title').value.trim();
  const body = $('w-note-text').value.trim();
  if (!title || !body) throw new Error('a note needs a title and a text');
  const bytes = new TextEncoder().encode(body);
  return {
    resourceType: 'DocumentReference', status: 'current', subject, description: title,
    type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }], text: 'Progress note' },
    date: new Date().toISOString(),
    content: [{ attachment: { contentType: 'text/plain; charset=utf-8', title, data: btoa(String.fromCharCode(...bytes)) } }],
  };
}

$('w-write-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    if (!current) throw new Error('choose a patient first');
    const resource = resourceFromForm();
    say('Checking it against FHIR R4…', true);
    await fhir(`${resource.resourceType}/$validate`, { method: 'POST', body: JSON.stringify(resource) });
    say('Writing it to the chart; it is anchored on the chain…', true);
    const saved = await fhir(resource.resourceType, { method: 'POST', body: JSON.stringify(resource) });
    say(`Saved: ${describe(saved).title} (${saved.resourceType}/${saved.id}, version ${(saved.meta || {}).versionId || 1}).`);
  } catch (error) { fail(error); }
});

