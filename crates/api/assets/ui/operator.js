// The operator page of a member institution's node: its health (height, peers, mempool,
// access-log lag, disk and the metrics behind them), and the institution's clinicians, with
// enrolment (a key this node keeps and a one-time code for the clinician's passkey) and
// removal (on chain, which ends their sessions; then their keys here are deleted).
import { $, el, say, fail, call, tabs, when } from '/ui/common.js';

const select = tabs($('tabs-operator'), { 'o-health': showHealth, 'o-clinicians': showClinicians });

export async function show(me) {
  $('who').textContent = `Institution ${me.identity.slice(0, 8)}… (operator)`;
  $('tabs-operator').hidden = false;
  select('o-health');
}

// OpenMetrics text: {name: value} (labelled samples summed), and the peers the p2p layer has
// spawned a connection actor for (the `peer` label of `network_spawner_*`).
function parseMetrics(text) {
  const values = {};
  const peers = new Set();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const peer = /peer="([0-9a-f]+)"/.exec(match[2] || '');
    if (peer && match[1].startsWith('network_spawner_')) peers.add(peer[1]);
    const value = Number(match[3]);
    if (Number.isFinite(value)) values[match[1]] = (values[match[1]] || 0) + value;
  }
  return { values, peers };
}
const find = (values, pattern) => Object.entries(values).filter(([name]) => pattern.test(name));

async function showHealth() {
  say('Reading the node\'s health…', true);
  const status = await call('/chain/status');
  const response = await fetch('/metrics');
  const { values: metrics, peers } = parseMetrics(await response.text());
  const facts = [
    ['Height', `${status.height} (last block ${when(status.timestamp_ms)})`],
    ['Epoch and validators', `${status.epoch}: ${status.validators.map((v) => v.name).join(', ')}`],
    ['Peers', `${peers.size} validators this node has exchanged messages with, of ${status.validators.length - 1} others`],
    ['Mempool', `${status.mempool} transactions waiting`],
    ['Access log not yet on chain', status.access_log_unrecorded === null || status.access_log_unrecorded === undefined
      ? 'this node logs no reads' : `${status.access_log_unrecorded} reads`],
    ['Record blobs missing', String(status.blobs_missing)],
    ['Reads recorded on chain', String(status.access_events ?? '')],
    ['Disk written since start', `${((metrics.runtime_storage_write_bytes_total || 0) / 1048576).toFixed(1)} MiB in ${metrics.runtime_storage_writes_total || 0} writes (${metrics.runtime_storage_syncs_total || 0} syncs)`],
    ['Blobs stored', String(metrics.ehrchain_storage_stored_total ?? 'not reported')],
  ];
  const list = el('dl');
  for (const [k, v] of facts) list.append(el('dt', k), el('dd', String(v)));
  $('o-health-facts').replaceChildren(list);
  const interesting = find(metrics, /^(ehrchain_|runtime_storage|runtime_.*connections|validator_epochs_consensus_voter_finalization_latency)/).sort();
  $('o-metric-rows').replaceChildren(...interesting.slice(0, 200).map(([name, value]) => {
    const row = el('tr');
    row.append(el('td', name), el('td', String(value)));
    return row;
  }));
  say('');
}

async function showClinicians() {
  say('Loading your clinicians…', true);
  const { clinicians } = await call('/ui/clinicians');
  $('o-clinician-rows').replaceChildren(...clinicians.map((c) => {
    const row = el('tr');
    row.append(el('td', c.id), el('td', c.custodial ? 'this node keeps their key (passkey login)' : 'they hold their own key'));
    const cell = el('td');
    const remove = el('button', 'Remove', { type: 'button', class: 'secondary', 'aria-label': `Remove clinician ${c.id.slice(0, 8)}` });
    remove.addEventListener('click', async () => {
      if (!window.confirm(`Remove clinician ${c.id.slice(0, 8)}…? Their sessions end at once and they can no longer open any record.`)) return;
      try {
        say('Removing on the chain…', true);
        const answer = await call(`/ui/clinicians/${c.id}/remove`, { method: 'POST' });
        await showClinicians();
        say(`Removed at block ${answer.height}: their sessions are ended and this node deleted their keys.`);
      } catch (error) { fail(error); }
    });
    cell.append(remove);
    row.append(cell);
    return row;
  }));
  say(clinicians.length ? '' : 'No clinician is enrolled at your institution yet.');
}

$('o-enrol').addEventListener('click', async () => {
  try {
    say('Enrolling a clinician on the chain…', true);
    const answer = await call('/ui/clinicians', { method: 'POST' });
    $('o-enrolled').hidden = false;
    $('o-enrolled-id').textContent = answer.id;
    $('o-enrolled-code').textContent = answer.code;
    $('o-enrolled-url').textContent = answer.enrol_url;
    $('o-enrolled-days').textContent = String(answer.expires_days);
    await showClinicians();
    say('Clinician enrolled. Hand them the code: it is shown only once.');
  } catch (error) { fail(error); }
});
