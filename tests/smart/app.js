// The demo SMART app: a standalone launch with fhirclient (PKCE required), then what an app
// does with its token: read, be refused beyond its scopes, refresh, revoke.
const $ = (id) => document.getElementById(id);
const show = (result) => {
  $('out').textContent = JSON.stringify(result, null, 2);
  window.__result = result;
};
const SCOPES = {
  patient: 'launch/patient openid fhirUser offline_access patient/*.rs',
  provider: 'openid fhirUser offline_access user/*.rs',
};
const params = new URLSearchParams(location.search);
$('iss').value = params.get('iss') || localStorage.getItem('iss') || '';
$('patient').value = params.get('patient') || localStorage.getItem('patient') || '';

function launch(kind) {
  localStorage.setItem('kind', kind);
  localStorage.setItem('iss', $('iss').value);
  localStorage.setItem('patient', $('patient').value);
  FHIR.oauth2.authorize({
    clientId: 'ehrchain-demo',
    scope: SCOPES[kind],
    redirectUri: `${location.origin}/`,
    iss: $('iss').value,
    pkceMode: 'required',
  });
}
$('patient-launch').addEventListener('click', () => launch('patient'));
$('provider-launch').addEventListener('click', () => launch('provider'));

async function status(client, request) {
  try {
    await client.request(request);
    return 200;
  } catch (error) {
    return error.status || error.statusCode || String(error.message);
  }
}

async function journey(client) {
  const kind = localStorage.getItem('kind');
  const token = client.state.tokenResponse;
  const result = { kind, patient: client.patient.id || null, fhirUser: token.fhirUser, scope: token.scope };
  if (kind === 'patient') {
    const everything = await client.request(`Patient/${client.patient.id}/$everything`);
    result.everything = (everything.entry || []).length;
  } else {
    const read = await client.request(`Observation?patient=${localStorage.getItem('patient')}`)
      .then((b) => (b.entry || []).length).catch((e) => `refused ${e.status}`);
    result.observations = read;
  }
  // Beyond its scopes: the app asked for reads only.
  try {
    await client.create({ resourceType: 'Observation', status: 'final', code: { text: 'x' },
      subject: { reference: `Patient/${client.patient.id || localStorage.getItem('patient')}` } });
    result.create = 'allowed';
  } catch (error) {
    result.create = error.status;
  }
  const before = client.state.tokenResponse.access_token;
  await client.refresh();
  result.refreshed = client.state.tokenResponse.access_token !== before;
  result.afterRefresh = await status(client, `Patient/${client.patient.id || localStorage.getItem('patient')}`);
  // Revoke at the revocation endpoint; the next request is refused.
  const configuration = await fetch(`${client.state.serverUrl}/.well-known/smart-configuration`).then((r) => r.json());
  const revoked = await fetch(configuration.revocation_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: client.state.tokenResponse.access_token, client_id: 'ehrchain-demo' }),
  });
  result.revoked = revoked.status;
  result.afterRevoke = await status(client, `Patient/${client.patient.id || localStorage.getItem('patient')}`);
  return result;
}

if (params.has('code') || params.has('error')) {
  FHIR.oauth2.ready().then(journey).then(show).catch((error) => show({ error: error.message }));
}
