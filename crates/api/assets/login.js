// The node's login and consent page (SMART App Launch). The person proves who they are with
// a passkey, or with their own key signed here by the Rust client library in wasm; then they
// approve some or all of the scopes, and the node sends the browser back to the app.
import { loadClient } from '/auth/assets/ehrchain-client.js';
import { b64u, unb64u, post } from '/auth/assets/enrol.js';

const config = JSON.parse(document.getElementById('request').textContent);
const $ = (id) => document.getElementById(id);
const say = (text, busy = false) => {
  $('status').textContent = text;
  document.body.setAttribute('aria-busy', busy ? 'true' : 'false');
};
let keyText = null;
let via = null;

function showConsent(who) {
  $('login').hidden = true;
  $('consent').hidden = false;
  const whom = who.patient
    ? (who.role === 'patient' ? `your own record (patient ${who.patient})` : `the record of patient ${who.patient}, whom you are guardian of`)
    : 'the records your role lets you see, with the patients\' consent';
  $('who').textContent = `You are logged in as a ${who.role} (identity ${who.identity.slice(0, 12)}…). ` +
    `${config.app.name} would see ${whom}.`;
  if (!who.scopes_fit) {
    $('fit').hidden = false;
    $('fit').textContent = 'Some requested scopes need a patient context, and there is no patient you can pick: untick them.';
  }
  // A clinician's app asked for a patient in context: pick one (the chain still decides reads).
  const picks = who.patients || [];
  $('pick').hidden = picks.length === 0;
  const options = $('patients');
  options.replaceChildren();
  picks.forEach((p, i) => {
    const item = document.createElement('li');
    const radio = document.createElement('input');
    radio.type = 'radio';
    radio.name = 'patient';
    radio.id = `patient-${i}`;
    radio.value = p.id;
    radio.checked = i === 0;
    const label = document.createElement('label');
    label.htmlFor = radio.id;
    label.textContent = `Patient ${p.id} (${p.why})`;
    item.append(radio, label);
    options.append(item);
  });
  const list = $('scopes');
  list.replaceChildren();
  config.scopes.forEach((s, i) => {
    const item = document.createElement('li');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = true;
    box.id = `scope-${i}`;
    box.value = s.scope;
    const label = document.createElement('label');
    label.htmlFor = box.id;
    label.textContent = `${s.words} `;
    const code = document.createElement('code');
    code.textContent = s.scope;
    label.append(code);
    item.append(box, label);
    list.append(item);
  });
  $('approve').focus();
}

async function fail(error) {
  say(`That did not work: ${error.message}`);
}

$('passkey').addEventListener('click', async () => {
  try {
    say('Waiting for your passkey…', true);
    const credential = await navigator.credentials.get({
      publicKey: {
        challenge: unb64u(config.challenge),
        rpId: config.rp_id,
        userVerification: 'required',
        timeout: 120000,
      },
    });
    const who = await post('/auth/authorize/passkey', {
      request: config.request,
      id: b64u(credential.rawId),
      client_data_json: b64u(credential.response.clientDataJSON),
      authenticator_data: b64u(credential.response.authenticatorData),
      signature: b64u(credential.response.signature),
    });
    via = 'passkey';
    say('');
    showConsent(who);
  } catch (error) { fail(error); }
});

let client = null;
$('keyfile-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const file = $('keyfile').files[0];
    if (!file) throw new Error('choose your key file first');
    if (!config.wasm) throw new Error('this node does not serve the client library; use a passkey');
    say('Reading your key…', true);
    client = client || await loadClient('/auth/assets/ehrchain_client.wasm');
    const text = await file.text();
    // Proof that this page holds the key, before the node says whose it is.
    const proof = client.signAppLogin(text, {
      token_url: config.token_url,
      challenge: `${config.challenge}.who`,
      client_id: config.app.client_id,
      scope: '',
      now_s: Math.floor(Date.now() / 1000),
    });
    const who = await post('/auth/authorize/who', { request: config.request, proof });
    keyText = text;
    via = 'key';
    say('');
    showConsent(who);
  } catch (error) { fail(error); }
});

$('approve').addEventListener('click', async () => {
  try {
    const scope = [...document.querySelectorAll('#scopes input:checked')].map((b) => b.value).join(' ');
    const body = { request: config.request, scope };
    const picked = document.querySelector('#patients input:checked');
    if (picked && !$('pick').hidden) body.patient = picked.value;
    if (via === 'key') {
      body.assertion = client.signAppLogin(keyText, {
        token_url: config.token_url,
        challenge: config.challenge,
        client_id: config.app.client_id,
        scope,
        now_s: Math.floor(Date.now() / 1000),
      });
    }
    say('Opening your session on the chain…', true);
    $('approve').disabled = true;
    const answer = await post('/auth/authorize/approve', body);
    keyText = null;
    location.assign(answer.redirect);
  } catch (error) { $('approve').disabled = false; fail(error); }
});

$('deny').addEventListener('click', async () => {
  try {
    const answer = await post('/auth/authorize/deny', { request: config.request });
    location.assign(answer.redirect);
  } catch (error) { fail(error); }
});
