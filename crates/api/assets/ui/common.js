// What every page of the node's web UI shares: the session's token, FHIR and JSON calls that
// say errors in plain words, the busy mark, tabs, names from the directory, and the Rust
// client in wasm (proof and certificate checks) with the genesis this browser trusts.
export const $ = (id) => document.getElementById(id);
export const el = (tag, text, attrs = {}) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  return node;
};
export const session = { token: null, me: null, onEnded: () => {} };

// Anything slower than half a second shows the busy mark; errors are said in plain words.
let busyTimer = null;
export function say(text, busy = false) {
  clearTimeout(busyTimer);
  $('status').textContent = text;
  if (busy) busyTimer = setTimeout(() => document.body.setAttribute('aria-busy', 'true'), 500);
  else document.body.setAttribute('aria-busy', 'false');
}
export const fail = (error) => say(`That did not work: ${error.message}`);

const plain = (outcome) => (outcome.issue || [])
  .map((i) => i.diagnostics || (i.details || {}).text).filter(Boolean).join('; ');

export async function call(path, init = {}) {
  const headers = { Accept: 'application/fhir+json', Authorization: `Bearer ${session.token.access_token}` };
  if (init.body) headers['Content-Type'] = path.startsWith('/fhir/') ? 'application/fhir+json' : 'application/json';
  const response = await fetch(path, { ...init, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem('ehrchain-token');
    session.onEnded();
    throw new Error('your session has ended; log in again');
  }
  if (!response.ok) {
    const why = plain(body) || body.error_description || (typeof body.error === 'string' ? body.error : '');
    const error = new Error(why || `the node answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}
export const fhir = (path, init) => call(`/fhir/${path}`, init);

// Every page of a search, up to `max` entries.
export async function everyEntry(path, max = 1000) {
  const entries = [];
  let next = path;
  while (next && entries.length < max) {
    const bundle = await fhir(next);
    entries.push(...(bundle.entry || []).filter((e) => e.resource && e.resource.resourceType !== 'OperationOutcome'));
    const link = (bundle.link || []).find((l) => l.relation === 'next');
    next = link ? link.url.slice(link.url.indexOf('/fhir/') + 6) : null;
  }
  return entries;
}

// ---- who is who ------------------------------------------------------------------------
let directory = null;
export async function loadDirectory() {
  directory = directory || await call('/ui/directory');
  return directory;
}
export function institutionName(key) {
  const institutions = (directory || {}).institutions || [];
  return (institutions.find((i) => i.id === key) || {}).name || `member ${String(key).slice(0, 8)}…`;
}
export function nameOf(reference) {
  const [kind, id] = String(reference || '').split('/');
  if (!id) return reference || 'unknown';
  const token = session.token || {};
  if (token.patient && kind === 'Patient' && id === token.patient) return 'you';
  if (kind === 'Organization') return institutionName(id);
  const clinician = ((directory || {}).clinicians || []).find((c) => c.id === id);
  if (clinician) return `Clinician ${id.slice(0, 8)}… at ${institutionName(clinician.institution)}`;
  return `${kind} ${id.slice(0, 8)}…`;
}
// A key (hex) by name where the directory has one.
export function keyName(key) {
  if (((directory || {}).institutions || []).some((i) => i.id === key)) return institutionName(key);
  return nameOf(`Practitioner/${key}`).replace(/^Practitioner /, 'Identity ');
}

// ---- tabs ------------------------------------------------------------------------------
// A tablist whose tabs control panels by id; `views[panel]()` fills a panel when chosen.
export function tabs(list, views) {
  const all = () => [...list.querySelectorAll('[role="tab"]')];
  const select = (name) => {
    for (const tab of all()) {
      const on = tab.getAttribute('aria-controls') === name;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      $(tab.getAttribute('aria-controls')).hidden = !on;
    }
    Promise.resolve().then(() => views[name]()).catch(fail);
  };
  list.addEventListener('click', (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) select(tab.getAttribute('aria-controls'));
  });
  list.addEventListener('keydown', (event) => {
    const at = all().indexOf(document.activeElement);
    if (at < 0 || !['ArrowLeft', 'ArrowRight'].includes(event.key)) return;
    const next = all()[(at + (event.key === 'ArrowRight' ? 1 : all().length - 1)) % all().length];
    next.focus();
    select(next.getAttribute('aria-controls'));
  });
  return select;
}

export function download(name, type, text) {
  const link = el('a', null, { download: name });
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.click();
  URL.revokeObjectURL(link.href);
}

export const when = (ms) => (ms ? new Date(Number(ms)).toISOString().replace('T', ' ').slice(0, 19) : '');

// ---- the Rust client in wasm, and the genesis it checks against ------------------------
let client = null;
export async function wasmClient() {
  if (!client) {
    const { loadClient } = await import('/auth/assets/ehrchain-client.js');
    client = await loadClient('/auth/assets/ehrchain_client.wasm');
  }
  return client;
}

// The genesis this node runs, trusted on first use: the browser keeps its hash and refuses
// another one later (compare it with the consortium's own copy).
let genesisText = null;
export async function trustedGenesis() {
  if (genesisText) return genesisText;
  const text = await (await fetch('/ui/genesis')).text();
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))),
    (b) => b.toString(16).padStart(2, '0')).join('');
  const known = localStorage.getItem('ehrchain-genesis-sha256');
  if (known && known !== digest) {
    throw new Error('this node now shows another genesis than the one this browser first saw: ask your institution');
  }
  localStorage.setItem('ehrchain-genesis-sha256', digest);
  genesisText = text;
  return text;
}
