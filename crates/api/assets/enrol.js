// Passkey enrolment with a one-time code (and the helpers the login page shares).
export const b64u = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
export const unb64u = (text) => {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
};
export async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.error_description || answer.error || `HTTP ${response.status}`);
  }
  return answer;
}

const form = document.getElementById('enrol-form');
if (form) {
  const say = (text) => { document.getElementById('status').textContent = text; };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      say('Checking your code…');
      const code = document.getElementById('code').value.trim();
      const options = await post('/auth/enrol/options', { code });
      const publicKey = options.publicKey;
      publicKey.challenge = unb64u(publicKey.challenge);
      publicKey.user.id = unb64u(publicKey.user.id);
      say('Waiting for your passkey…');
      const credential = await navigator.credentials.create({ publicKey });
      await post('/auth/enrol/finish', {
        enrolment: options.enrolment,
        id: b64u(credential.rawId),
        client_data_json: b64u(credential.response.clientDataJSON),
        authenticator_data: b64u(credential.response.getAuthenticatorData()),
        public_key: b64u(credential.response.getPublicKey()),
        public_key_algorithm: credential.response.getPublicKeyAlgorithm(),
      });
      say('Your passkey is enrolled. You can now log in with it from any app.');
    } catch (error) {
      say(`That did not work: ${error.message}`);
    }
  });

  // A key of the person's own: 32 random bytes from WebCrypto, its public keys and the proof
  // of holding it from the project's Rust client in wasm; the node moves the identity to it.
  document.getElementById('own-key').addEventListener('click', async () => {
    try {
      const code = document.getElementById('code').value.trim();
      if (!code) throw new Error('type your enrolment code first');
      say('Checking your code…');
      const options = await post('/auth/enrol/options', { code });
      if (!options.wasm) throw new Error('this node does not serve the client library; enrol a passkey');
      const { loadClient } = await import('/auth/assets/ehrchain-client.js');
      const client = await loadClient('/auth/assets/ehrchain_client.wasm');
      const seed = crypto.getRandomValues(new Uint8Array(32));
      const keyText = Array.from(seed, (b) => b.toString(16).padStart(2, '0')).join('');
      seed.fill(0);
      const keys = client.describeKey(keyText);
      const proof = client.signAppLogin(keyText, {
        token_url: options.token_url,
        challenge: `${options.publicKey.challenge}.key`,
        client_id: 'ehrchain-enrol',
        scope: `encryption_key:${keys.encryption_key}`,
        now_s: Math.floor(Date.now() / 1000),
      });
      say('Moving your identity to your new key on the chain…');
      const moved = await post('/auth/enrol/key', {
        enrolment: options.enrolment, encryption_key: keys.encryption_key, proof,
      });
      const link = document.getElementById('download');
      link.href = URL.createObjectURL(new Blob([`${keyText}\n`], { type: 'application/octet-stream' }));
      link.download = `ehrchain-${moved.identity.slice(0, 12)}.key`;
      document.getElementById('saved').hidden = false;
      link.focus();
      say(`Your identity is now your own key (${moved.identity.slice(0, 12)}…). Save the file, then log in with it from any app.`);
    } catch (error) {
      say(`That did not work: ${error.message}`);
    }
  });
}
