// Log in through this node's SMART App Launch (authorization code with PKCE S256), as the
// node's own web UI (client_id ehrchain-portal). Randomness and SHA-256 come from WebCrypto;
// the token lives in this tab's sessionStorage only, and logging out revokes it on chain.
export const CLIENT_ID = 'ehrchain-portal';
// A patient's (or guardian's) login: their own compartment, and their consents.
export const PATIENT_SCOPE = 'openid fhirUser launch/patient patient/*.rs patient/Consent.cru';
// A login at work (clinician, auditor, institution): what the chain lets the identity do.
export const STAFF_SCOPE = 'openid fhirUser user/*.cruds';

const b64u = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = (n) => b64u(crypto.getRandomValues(new Uint8Array(n)));
const redirectUri = () => `${location.origin}/`;

async function configuration() {
  const response = await fetch('/fhir/.well-known/smart-configuration');
  if (!response.ok) throw new Error('this node does not answer its SMART configuration');
  return response.json();
}

export async function logIn(scope) {
  const conf = await configuration();
  const verifier = random(32);
  const challenge = b64u(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const state = random(16);
  sessionStorage.setItem('ehrchain-login', JSON.stringify({ verifier, state }));
  const url = new URL(conf.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code', client_id: CLIENT_ID, redirect_uri: redirectUri(), scope,
    state, aud: `${location.origin}/fhir`, code_challenge: challenge, code_challenge_method: 'S256',
  });
  location.assign(url.toString());
}

// Back from the authorization page: exchange the code (once), or say why there is none.
export async function finishLogIn() {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return null;
  history.replaceState(null, '', '/');
  const saved = JSON.parse(sessionStorage.getItem('ehrchain-login') || 'null');
  sessionStorage.removeItem('ehrchain-login');
  if (params.has('error')) throw new Error(params.get('error_description') || params.get('error'));
  if (!saved || saved.state !== params.get('state')) throw new Error('this login was not started here; start again');
  // This page is the node's own: its token endpoint is at this origin too (the discovery
  // document names the node's public address, which the page's CSP does not connect to).
  const response = await fetch('/auth/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: params.get('code'), redirect_uri: redirectUri(),
      code_verifier: saved.verifier, client_id: CLIENT_ID,
    }),
  });
  const token = await response.json();
  if (!response.ok) throw new Error(token.error_description || token.error || `login failed (${response.status})`);
  sessionStorage.setItem('ehrchain-token', JSON.stringify(token));
  return token;
}

export function currentToken() {
  return JSON.parse(sessionStorage.getItem('ehrchain-token') || 'null');
}

export async function logOut() {
  const token = currentToken();
  sessionStorage.removeItem('ehrchain-token');
  if (!token) return;
  await fetch('/auth/revoke', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: token.access_token, client_id: CLIENT_ID }),
  }).catch(() => {});
}
