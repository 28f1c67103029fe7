// The patient portal: the record as a timeline, the grants with a form to give and a button to
// revoke, and the access history from the chain's trail. Everything is FHIR with the token
// from the node's SMART login; the chain decides each read, and the page only shows it.
import { logIn, finishLogIn, currentToken, logOut, PATIENT_SCOPE, STAFF_SCOPE } from '/ui/auth.js';
import { describe, dateOf, day } from '/ui/render.js';
import {
  $, el, session, say, fail, call, fhir, everyEntry, loadDirectory, nameOf, tabs, download,
  wasmClient, trustedGenesis,
} from '/ui/common.js';

let token = null;
let records = [];
let events = [];
// A patient who holds their own key: its text, in this page's memory only, once chosen.
let ownKey = null;
const select = tabs($('tabs'), { record: showRecord, grants: showGrants, history: showHistory });

// ---- the record ------------------------------------------------------------------------
async function showRecord() {
  const selfHeld = session.me.role === 'patient' && !session.me.custodial;
  $('own-key').hidden = !selfHeld;
  if (selfHeld && !ownKey) {
    records = [];
    drawTimeline();
    return say('Choose your key file to open your record.');
  }
  say('Loading your record…', true);
  const started = performance.now();
  records = selfHeld ? await openSealed()
    : (await everyEntry(`Patient/${token.patient}/$everything?_count=100`, 10000)).map((e) => e.resource);
  $('erasure').hidden = records.length === 0;
  const types = [...new Set(records.map((r) => r.resourceType))].sort();
  const chooser = $('record-type');
  const chosen = chooser.value;
  chooser.replaceChildren(el('option', 'All types', { value: '' }), ...types.map((t) => el('option', t, { value: t })));
  chooser.value = types.includes(chosen) ? chosen : '';
  drawTimeline();
  window.__timings = { ...(window.__timings || {}), record_ms: performance.now() - started };
  say('');
}

// The whole record as ciphertext, page by page (GET /ui/sealed), opened here with the key the
// patient chose: the Rust client in wasm checks each envelope against its hash and opens it.
async function openSealed() {
  const client = await wasmClient();
  const opened = [];
  const failed = [];
  for (let offset = 0; ; ) {
    const page = await call(`/ui/sealed?offset=${offset}&count=100`);
    const { resources, failed: refused } = client.openSealed(ownKey, JSON.stringify(page));
    opened.push(...resources);
    failed.push(...refused);
    offset += page.entries.length;
    if (!page.entries.length || offset >= page.total) break;
  }
  $('record-count').dataset.opened = 'browser';
  if (failed.length) say(`${failed.length} records did not open with this key (${[...new Set(failed.map((f) => f.reason))].join('; ')}).`);
  return opened;
}

$('own-key-file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    const text = await file.text();
    const client = await wasmClient();
    if (client.identityOfKey(text) !== session.me.identity) throw new Error('this key file is not yours: it is another identity\'s');
    ownKey = text;
    await showRecord();
    say(`${records.length} records opened in this browser with your key; the node sent them encrypted.`);
  } catch (error) { fail(error); }
});

function drawTimeline() {
  const started = performance.now();
  const type = $('record-type').value;
  const from = $('record-from').value;
  const to = $('record-to').value;
  const shown = records
    .filter((r) => !type || r.resourceType === type)
    .filter((r) => { const d = day(dateOf(r)); return (!from || d >= from) && (!to || d <= to); })
    .sort((a, b) => String(dateOf(b)).localeCompare(String(dateOf(a))));
  $('record-count').textContent = `${shown.length} of ${records.length} records${ownKey ? ', opened in this browser with your key' : ''}`;
  const items = shown.map((r) => {
    const { title, facts } = describe(r);
    const item = el('li');
    const article = el('article');
    article.append(el('h3', title));
    const version = (r.meta || {}).versionId;
    article.append(el('p', `${r.resourceType} · ${day(dateOf(r)) || 'no date'}${version ? ` · version ${version}` : ''}`, { class: 'meta' }));
    if (facts.length) {
      const list = el('dl');
      for (const [label, value] of facts) list.append(el('dt', label), el('dd', value));
      article.append(list);
    }
    const proof = el('p', null, { class: 'proof' });
    const verify = el('button', 'Check on the chain', { type: 'button', class: 'secondary', 'aria-label': `Check on the chain: ${title}` });
    verify.addEventListener('click', () => checkOnChain(r, proof).catch((error) => {
      proof.textContent = `Not checked: ${error.message}`;
      proof.className = 'proof denied';
    }));
    article.append(verify, proof);
    const raw = el('details');
    raw.append(el('summary', 'The record as stored (FHIR JSON)'), el('pre', JSON.stringify(r, null, 2)));
    article.append(raw);
    item.append(article);
    return item;
  });
  $('timeline').replaceChildren(...items);
  window.__timings = { ...(window.__timings || {}), timeline_render_ms: performance.now() - started, timeline_items: items.length };
}
$('record-filter').addEventListener('input', drawTimeline);

// ---- download and erasure --------------------------------------------------------------
$('download-bundle').addEventListener('click', () => download('my-record.json', 'application/fhir+json',
  JSON.stringify({ resourceType: 'Bundle', type: 'collection', entry: records.map((resource) => ({ resource })) }, null, 2)));
$('download-ndjson').addEventListener('click', () => download('my-record.ndjson', 'application/fhir+ndjson',
  records.map((r) => JSON.stringify(r)).join('\n') + '\n'));

$('erase-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    say('Asking every node to erase your record…', true);
    const answer = await call('/ui/erase', { method: 'POST', body: JSON.stringify({ confirm: $('erase-confirm').value }) });
    records = [];
    $('timeline').replaceChildren();
    $('record-count').textContent = '';
    say(`Your record is erased (block ${answer.height}): its content and keys are deleted on every node. The trail of who opened it stays.`);
  } catch (error) { fail(error); }
});

// ---- integrity: the version's inclusion proof, checked here in wasm --------------------
async function checkOnChain(resource, where) {
  where.textContent = 'Checking its proof…';
  const version = (resource.meta || {}).versionId || '1';
  const provenance = await fhir(`Provenance/${resource.id}-${version}`);
  const genesis = await trustedGenesis();
  const verified = (await wasmClient()).verifyProof(genesis, JSON.stringify(provenance));
  const author = nameOf(((provenance.agent || [])[0]?.who || {}).reference);
  where.textContent = `✔ Version ${version} by ${author}, ${day(provenance.recorded)}: anchored in block ${verified.height} and finalized by the consortium's validators (proof checked in this browser).`;
  where.className = 'proof checked';
}

// ---- grants ----------------------------------------------------------------------------
const PURPOSES = { TREAT: 'treatment', ETREAT: 'emergency treatment', HRESCH: 'research', HPAYMT: 'payment', HOPERAT: 'operations', PATRQT: 'your own request' };
const GRANTABLE = ['Observation', 'Condition', 'MedicationRequest', 'AllergyIntolerance', 'Immunization', 'Procedure', 'Encounter', 'DiagnosticReport', 'DocumentReference', 'CarePlan'];

async function showGrants() {
  say('Loading who can see your record…', true);
  const people = await loadDirectory();
  const grantee = $('grantee');
  if (!grantee.options.length) {
    const institutions = people.institutions.map((i) => el('option', i.name, { value: `Organization/${i.id}` }));
    const clinicians = people.clinicians.map((c) => el('option', nameOf(`Practitioner/${c.id}`), { value: `Practitioner/${c.id}` }));
    const group = (label, options) => { const g = el('optgroup', null, { label }); g.append(...options); return g; };
    grantee.append(group('Clinicians', clinicians), group('Institutions', institutions));
    $('grant-types').replaceChildren(...GRANTABLE.map((t) => {
      const label = el('label');
      const box = el('input', null, { type: 'checkbox', value: t });
      label.append(box, ` ${t}`);
      return label;
    }));
    const inAYear = new Date(Date.now() + 365 * 24 * 3600 * 1000);
    $('until').value = inAYear.toISOString().slice(0, 10);
  }
  const grants = (await everyEntry(`Consent?patient=${token.patient}`)).map((e) => e.resource);
  $('grant-rows').replaceChildren(...grants.map((consent) => {
    const provision = consent.provision || {};
    const whom = ((provision.actor || [])[0] || {}).reference || {};
    const row = el('tr');
    const classes = (provision.class || []).map((c) => c.code).join(', ') || 'all records';
    const purposes = (provision.purpose || []).map((p) => PURPOSES[p.code] || p.code).join(', ') || 'any purpose';
    row.append(el('td', nameOf(whom.reference)), el('td', classes), el('td', purposes),
      el('td', day((provision.period || {}).end)), el('td', consent.status));
    const cell = el('td');
    if (consent.status === 'active') {
      const button = el('button', 'Revoke', { type: 'button', class: 'secondary', 'aria-label': `Revoke access of ${nameOf(whom.reference)}` });
      button.addEventListener('click', () => revoke(consent.id, nameOf(whom.reference)).catch(fail));
      cell.append(button);
    }
    row.append(cell);
    return row;
  }));
  drawGuardians();
  say(grants.length ? '' : 'You have given no one access yet.');
}

$('grant-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const whom = $('grantee').value;
    const types = [...document.querySelectorAll('#grant-types input:checked')].map((b) => b.value);
    const purpose = $('purpose').value;
    const until = $('until').value;
    if (!until || until <= new Date().toISOString().slice(0, 10)) throw new Error('choose an end date in the future');
    const provision = {
      type: 'permit',
      period: { start: new Date().toISOString(), end: `${until}T23:59:59Z` },
      actor: [{
        role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] },
        reference: { reference: whom },
      }],
      action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
    };
    if (purpose) provision.purpose = [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: purpose }];
    if (types.length) provision.class = types.map((t) => ({ system: 'http://hl7.org/fhir/resource-types', code: t }));
    say('Recording the access on the chain…', true);
    await fhir('Consent', {
      method: 'POST',
      body: JSON.stringify({
        resourceType: 'Consent', status: 'active',
        scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
        category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
        patient: { reference: `Patient/${token.patient}` },
        provision,
      }),
    });
    await showGrants();
    say(`Access given to ${nameOf(whom)}: ${types.join(', ') || 'all records'}, until ${until}.`);
  } catch (error) { fail(error); }
});

// ---- guardians -------------------------------------------------------------------------
function drawGuardians() {
  const guardians = (session.me || {}).guardians || [];
  const patient = (session.me || {}).role === 'patient';
  $('guardian-list').replaceChildren(...(guardians.length ? guardians.map((g) => {
    const item = el('li', `Guardian ${g.slice(0, 12)}… `);
    if (patient) {
      const remove = el('button', 'Remove', { type: 'button', class: 'secondary', 'aria-label': `Remove guardian ${g.slice(0, 12)}` });
      remove.addEventListener('click', () => removeGuardian(g).catch(fail));
      item.append(remove);
    }
    return item;
  }) : [el('li', 'No guardian.')]));
  // Only the patient appoints; a guardian sees who the guardians are.
  $('guardian-make').hidden = (session.me || {}).role !== 'patient';
}
$('guardian-make').addEventListener('click', async () => {
  try {
    // The guardian's key: 32 bytes from WebCrypto; its public keys from the Rust client in
    // wasm. The seed leaves this page only as the file the patient hands over.
    const seed = crypto.getRandomValues(new Uint8Array(32));
    const keyText = Array.from(seed, (b) => b.toString(16).padStart(2, '0')).join('');
    seed.fill(0);
    const keys = (await wasmClient()).describeKey(keyText);
    say('Appointing your guardian on the chain…', true);
    await call('/ui/guardians', { method: 'POST', body: JSON.stringify({ identity: keys.identity, encryption_key: keys.encryption_key }) });
    session.me = await call('/ui/me');
    drawGuardians();
    const link = $('guardian-file');
    link.href = URL.createObjectURL(new Blob([`${keyText}\n`], { type: 'application/octet-stream' }));
    link.download = `ehrchain-guardian-${keys.identity.slice(0, 12)}.key`;
    $('guardian-made').hidden = false;
    say(`Guardian ${keys.identity.slice(0, 12)}… appointed. Hand them the key file.`);
  } catch (error) { fail(error); }
});

async function removeGuardian(guardian) {
  say('Removing your guardian on the chain…', true);
  await call(`/ui/guardians/${guardian}/remove`, { method: 'POST' });
  session.me = await call('/ui/me');
  drawGuardians();
  $('guardian-made').hidden = true;
  say(`Guardian ${guardian.slice(0, 12)}… removed: their key no longer works, and their sessions are ended.`);
}

async function revoke(id, whom) {
  say('Revoking on the chain…', true);
  const consent = await fhir(`Consent/${id}`);
  consent.status = 'inactive';
  await fhir(`Consent/${id}`, { method: 'PUT', body: JSON.stringify(consent) });
  await showGrants();
  say(`Revoked: ${whom} can no longer open your records. Any later attempt appears under "Who looked" as refused.`);
}

// ---- access history --------------------------------------------------------------------
async function showHistory() {
  say('Loading the access history from the chain…', true);
  await loadDirectory();
  events = (await everyEntry(`AuditEvent?patient=${token.patient}&_count=100`, 500)).map((e) => e.resource);
  drawHistory();
  say('');
}

const isBreakGlass = (e) => (e.purposeOfEvent || []).some((p) => (p.coding || []).some((c) => c.code === 'ETREAT'))
  || (e.subtype || []).some((s) => s.code === 'ETREAT');

function shownEvents() {
  const outcome = $('history-outcome').value;
  const glass = $('history-glass').checked;
  return events.filter((e) => (!outcome || e.outcome === outcome) && (!glass || isBreakGlass(e)));
}

const REVIEWS = { pending: 'awaiting an auditor\'s review', justified: 'reviewed: justified', 'not-justified': 'reviewed: not justified' };

function drawHistory() {
  $('history-rows').replaceChildren(...shownEvents().map((e) => {
    const row = el('tr');
    const glass = isBreakGlass(e);
    if (glass) row.className = 'break-glass';
    const reader = (e.agent || [])[0] || {};
    const app = (e.agent || []).find((a) => ((a.type || {}).coding || [])[0]?.code === '110150');
    const what = ((e.entity || [])[1] || {}).what;
    const purpose = ((e.purposeOfEvent || [])[0]?.coding || [])[0]?.code;
    row.append(el('td', String(e.recorded || '').replace('T', ' ').slice(0, 19)),
      el('td', nameOf((reader.who || {}).reference)),
      el('td', app ? app.who.display : 'direct'),
      el('td', what ? what.reference.split('/')[0] : (glass ? 'break-glass opened' : '')));
    const why = el('td', PURPOSES[purpose] || purpose || '');
    if (glass) why.prepend(el('span', '⚠ Emergency access: ', { class: 'flag' }));
    const review = (e.extension || []).find((x) => x.url.endsWith('/break-glass-review'));
    if (review) why.append(el('span', ` · ${REVIEWS[review.valueCode] || review.valueCode}`, { class: 'review' }));
    row.append(why);
    row.append(el('td', e.outcome === '0' ? 'allowed' : `refused (${String(e.outcomeDesc || '').replace('denied: ', '')})`,
      e.outcome === '0' ? {} : { class: 'denied' }));
    return row;
  }));
}
$('history-filter').addEventListener('input', drawHistory);
$('history-export').addEventListener('click', () => {
  const bundle = { resourceType: 'Bundle', type: 'collection', entry: shownEvents().map((resource) => ({ resource })) };
  download('access-history.json', 'application/fhir+json', JSON.stringify(bundle, null, 2));
});

// ---- log in and out, and which page a login gets -------------------------------------
const PANELS = ['record', 'grants', 'history', 'w-patients', 'w-chart', 'w-write', 'a-findings', 'a-trail',
  'a-governance', 'a-blocks', 'o-health', 'o-clinicians'];
const TABLISTS = ['tabs', 'tabs-clinician', 'tabs-auditor', 'tabs-operator'];
function showLoggedOut() {
  $('welcome').hidden = false;
  $('log-out').hidden = true;
  $('who').textContent = '';
  for (const id of [...TABLISTS, ...PANELS]) $(id).hidden = true;
}
session.onEnded = showLoggedOut;

function showPatient(me) {
  $('tabs').hidden = false;
  const who = me.role === 'guardian' ? `Guardian of patient ${token.patient}` : `Patient ${token.patient}`;
  $('who').textContent = `${who} · ${me.custodial
    ? 'your home institution keeps your key for you'
    : 'you hold your own key: this node keeps none of yours'}`;
  $('erase-id').textContent = token.patient;
  select('record');
}

async function showLoggedIn() {
  $('welcome').hidden = true;
  $('log-out').hidden = false;
  say('Opening your session…', true);
  const me = await call('/ui/me');
  session.me = me;
  say('');
  if (token.patient && (me.role === 'patient' || me.role === 'guardian')) return showPatient(me);
  const pages = { clinician: '/ui/workspace.js', auditor: '/ui/console.js', institution: '/ui/operator.js' };
  if (!pages[me.role]) {
    showLoggedOut();
    return say('This login has no page here: patients log in as patients, staff at work.');
  }
  const { show } = await import(pages[me.role]);
  return show(me);
}

$('log-in').addEventListener('click', () => logIn(PATIENT_SCOPE).catch(fail));
$('log-in-work').addEventListener('click', () => logIn(STAFF_SCOPE).catch(fail));
$('log-out').addEventListener('click', async () => {
  await logOut();
  token = null;
  ownKey = null;
  showLoggedOut();
  say('You are logged out; your session is ended on the chain.');
});

(async () => {
  try {
    token = (await finishLogIn()) || currentToken();
  } catch (error) {
    fail(error);
  }
  session.token = token;
  if (!token) return showLoggedOut();
  return showLoggedIn().catch((error) => { showLoggedOut(); fail(error); });
})();
