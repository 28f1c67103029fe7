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
}
