// The auditor console: supervision findings (filter by kind, institution and time), the
// whole trail without clinical content, governance proposals with their votes, and a block
// explorer whose every finalization certificate is checked here, in wasm, against the
// validator set the genesis starts from. Nothing here is decrypted: auditors see who, when,
// what kind and why, never what a record says.
import {
  $, el, say, fail, call, loadDirectory, keyName, institutionName, tabs, download, when, wasmClient, trustedGenesis,
} from '/ui/common.js';

let findings = [];
let trail = [];
let directory = null;
let myIdentity = null;
const select = tabs($('tabs-auditor'), {
  'a-findings': showFindings, 'a-trail': showTrail, 'a-governance': showGovernance, 'a-blocks': showBlocks,
});

export async function show(me) {
  directory = await loadDirectory();
  myIdentity = me.identity;
  $('who').textContent = `Auditor ${me.identity.slice(0, 8)}…`;
  $('tabs-auditor').hidden = false;
  select('a-findings');
}

// The institution an actor belongs to: a clinician's, or the member itself.
function institutionOf(actor) {
  const clinician = directory.clinicians.find((c) => c.id === actor);
  if (clinician) return clinician.institution;
  return directory.institutions.some((i) => i.id === actor) ? actor : '';
}

// Every page of a trail listing (`after` is a height: a full page restarts at its last
// height, and entries already seen are skipped).
async function allPages(path, field, max = 20000) {
  const seen = new Set();
  const out = [];
  let after = null;
  for (let round = 0; round < 100 && out.length < max; round += 1) {
    const page = (await call(`${path}?limit=1000${after === null ? '' : `&after=${after}`}`))[field];
    let fresh = 0;
    for (const item of page) {
      const key = `${item.height}.${item.index}.${item.entry ?? item.seq ?? 0}`;
      if (!seen.has(key)) { seen.add(key); out.push(item); fresh += 1; }
    }
    if (page.length < 1000 || !fresh) break;
    after = page[page.length - 1].height - 1;
  }
  return out;
}

// ---- findings --------------------------------------------------------------------------
const KINDS = {
  'break-glass': 'Break-glass', 'denied-access': 'Refused access', 'read-volume': 'Unusual read volume',
  'after-revocation': 'Read after revocation', 'key-recovery': 'Key recovery', 'late-log': 'Late access log',
};
async function showFindings() {
  say('Loading the findings from the chain…', true);
  findings = (await allPages('/access/findings', 'findings')).reverse();
  const kinds = $('a-find-kind');
  if (kinds.options.length <= 1) kinds.append(...Object.entries(KINDS).map(([k, v]) => el('option', v, { value: k })));
  const places = $('a-find-institution');
  if (places.options.length <= 1) places.append(...directory.institutions.map((i) => el('option', i.name, { value: i.id })));
  drawFindings();
  say('');
}

function shownFindings() {
  const kind = $('a-find-kind').value;
  const institution = $('a-find-institution').value;
  const from = $('a-find-from').value;
  const to = $('a-find-to').value;
  return findings.filter((f) => (!kind || f.kind === kind)
    && (!institution || institutionOf(f.actor) === institution)
    && (!from || when(f.time_ms).slice(0, 10) >= from) && (!to || when(f.time_ms).slice(0, 10) <= to));
}

function drawFindings() {
  const reasons = { 1: 'emergency treatment; the patient cannot consent', 2: 'life-threatening condition', 3: 'urgent continuity of care', 4: 'other' };
  const shown = shownFindings();
  $('a-find-count').textContent = `${shown.length} of ${findings.length} findings`;
  $('a-find-rows').replaceChildren(...shown.map((f) => {
    const row = el('tr');
    if (f.kind === 'break-glass') row.className = 'break-glass';
    const detail = f.kind === 'break-glass' ? `reason: ${reasons[f.detail.reason] || f.detail.reason}`
      : Object.entries(f.detail).map(([k, v]) => `${k.replace(/_/g, ' ')}: ${v}`).join(', ');
    const institution = institutionOf(f.actor);
    row.append(el('td', when(f.time_ms)), el('td', KINDS[f.kind] || f.kind), el('td', keyName(f.actor)),
      el('td', institution ? institutionName(institution) : ''), el('td', f.patient ? `${f.patient.slice(0, 8)}…` : ''),
      el('td', detail), el('td', `block ${f.height}`), reviewCell(f));
    return row;
  }));
}

// A finding's review: the verdict once made (on chain, once), else two buttons.
const VERDICTS = { justified: 'Justified', 'not-justified': 'Not justified' };
function reviewCell(f) {
  const cell = el('td');
  const review = f.review || { state: 'pending' };
  if (review.state !== 'pending') {
    cell.textContent = `${VERDICTS[review.state] || review.state} (${keyName(review.auditor)}, ${when(review.time_ms)})`;
    return cell;
  }
  for (const [verdict, label] of Object.entries(VERDICTS)) {
    const button = el('button', label, { type: 'button', class: 'secondary', 'aria-label': `${label}: review the finding of block ${f.height}` });
    button.addEventListener('click', () => submitReview(f, verdict).catch(fail));
    cell.append(button, ' ');
  }
  return cell;
}
async function submitReview(f, verdict) {
  say('Recording the review on the chain…', true);
  const done = await call(`/ui/findings/${f.height}/${f.index}/${f.seq}/review`, { method: 'POST', body: JSON.stringify({ verdict }) });
  f.review = { state: done.verdict, auditor: myIdentity, time_ms: done.time_ms };
  drawFindings();
  say(`Reviewed: ${VERDICTS[done.verdict]}. The patient sees it in their access history.`);
}
$('a-find-filter').addEventListener('input', drawFindings);
$('a-find-export').addEventListener('click', () => download('findings.json', 'application/json', JSON.stringify(shownFindings(), null, 2)));

// ---- the trail -------------------------------------------------------------------------
async function showTrail() {
  say('Loading the trail from the chain…', true);
  trail = (await allPages('/access/events', 'events')).reverse();
  drawTrail();
  say('');
}
function shownTrail() {
  const outcome = $('a-trail-outcome').value;
  const patient = $('a-trail-patient').value.trim().toLowerCase();
  return trail.filter((e) => (!outcome || e.outcome === outcome) && (!patient || e.patient.startsWith(patient)));
}
function drawTrail() {
  const shown = shownTrail();
  $('a-trail-count').textContent = `${shown.length} of ${trail.length} entries`;
  $('a-trail-rows').replaceChildren(...shown.slice(0, 1000).map((e) => {
    const row = el('tr');
    const glass = e.basis && String(e.basis.kind).startsWith('break-glass');
    if (glass) row.className = 'break-glass';
    row.append(el('td', when(e.time_ms)), el('td', keyName(e.actor)), el('td', e.app || 'direct'),
      el('td', `${e.patient.slice(0, 8)}…`), el('td', e.record ? `${e.resource_type ?? ''} ${e.record.slice(0, 8)}…` : (glass ? 'break-glass opened' : '')),
      el('td', e.purpose), el('td', e.outcome === 'allowed' ? `allowed (${e.basis.kind})` : `refused (${e.reason})`,
        e.outcome === 'allowed' ? {} : { class: 'denied' }));
    return row;
  }));
}
$('a-trail-filter').addEventListener('input', drawTrail);
$('a-trail-export').addEventListener('click', () => download('trail.json', 'application/json', JSON.stringify(shownTrail(), null, 2)));

// ---- governance ------------------------------------------------------------------------
async function showGovernance() {
  say('Loading governance from the chain…', true);
  const answer = await call('/governance/proposals');
  $('a-members').textContent = `Members: ${answer.members.map(institutionName).join(', ')}`;
  $('a-proposal-rows').replaceChildren(...answer.proposals.map((p) => {
    const row = el('tr');
    const target = p.action.key ? keyName(p.action.key) : '';
    row.append(el('td', `${p.id.slice(0, 8)}…`), el('td', `${p.action.kind.replace(/-/g, ' ')} ${target}`),
      el('td', keyName(p.proposer)),
      el('td', `${p.yes.length} yes (${p.yes.map(keyName).join(', ') || 'none'}), ${p.no.length} no; ${p.yes_needed} of ${p.electorate} needed`),
      el('td', p.status + (p.effective_height ? `, effective at block ${p.effective_height}` : '')));
    return row;
  }));
  if (!answer.proposals.length) $('a-proposal-rows').replaceChildren(el('tr', null));
  // Each epoch whose validator set differs from the one before.
  const sets = [];
  for (const set of answer.validator_sets) {
    const last = sets[sets.length - 1];
    if (!last || last.validators.join() !== set.validators.join()) sets.push(set);
  }
  $('a-epoch-rows').replaceChildren(...sets.reverse().map((s) => {
    const row = el('tr');
    row.append(el('td', `from epoch ${s.epoch} (block ${s.first_height})`), el('td', s.validators.map(keyName).join(', ')));
    return row;
  }));
  say(answer.proposals.length ? '' : 'No governance proposal has been made yet.');
}

// ---- block explorer --------------------------------------------------------------------
const BLOCKS_SHOWN = 20;
async function showBlocks(top) {
  say('Loading the newest blocks…', true);
  const status = await call('/chain/status');
  const start = Math.min(Number.isInteger(top) ? top : status.height, status.height);
  $('a-chain-status').textContent = `Height ${status.height}, epoch ${status.epoch}, ${status.transactions} transactions in all; validators now: ${status.validators.map((v) => v.name).join(', ')}.`;
  const heights = [];
  for (let h = start; h >= 1 && heights.length < BLOCKS_SHOWN; h -= 1) heights.push(h);
  const blocks = await Promise.all(heights.map((h) => call(`/chain/blocks/${h}`)));
  $('a-block-rows').replaceChildren(...blocks.map(blockRow));
  $('a-older').onclick = () => showBlocks(start - BLOCKS_SHOWN).catch(fail);
  $('a-older').hidden = start - BLOCKS_SHOWN < 1;
  say('');
}

function blockRow(block) {
  const row = el('tr');
  const kinds = {};
  for (const tx of block.transactions) {
    const kind = (tx.payload || {}).kind || 'hidden';
    kinds[kind] = (kinds[kind] || 0) + 1;
  }
  const summary = Object.entries(kinds).map(([k, n]) => `${n} ${k.replace(/_/g, ' ')}`).join(', ') || 'empty';
  const check = el('td', null, { class: 'proof' });
  const button = el('button', 'Check certificate', { type: 'button', class: 'secondary', 'aria-label': `Check certificate of block ${block.height}` });
  button.addEventListener('click', () => checkBlock(block, check).catch((error) => {
    check.textContent = `✘ Not verified: ${error.message}`;
    check.className = 'proof denied';
  }));
  const txs = el('details');
  txs.append(el('summary', summary));
  const list = el('ul');
  for (const tx of block.transactions.slice(0, 200)) {
    list.append(el('li', `${tx.hash.slice(0, 12)}… ${(tx.payload || {}).kind || ''}${tx.signer ? ` by ${keyName(tx.signer)}` : ''}`));
  }
  txs.append(list);
  const cell = el('td');
  cell.append(txs);
  row.append(el('td', String(block.height)), el('td', when(block.timestamp_ms)), el('td', `${block.hash.slice(0, 16)}…`),
    el('td', keyName(block.proposer)), cell);
  const action = el('td');
  action.append(button);
  row.append(action, check);
  return row;
}

async function checkBlock(block, where) {
  where.textContent = 'Checking…';
  const proof = await call(`/chain/blocks/${block.height}/proof`);
  const verified = (await wasmClient()).verifyBlock(await trustedGenesis(), JSON.stringify(proof));
  if (verified.block !== block.hash) throw new Error('the certificate is for another block than the one shown');
  const via = verified.finalized_height === verified.height ? '' : ` (through block ${verified.finalized_height}'s certificate)`;
  where.textContent = `✔ Finalized by more than two thirds of the ${verified.validators} validators${via}: checked in this browser.`;
  where.className = 'proof checked';
}
