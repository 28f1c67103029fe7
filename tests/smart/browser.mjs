// SMART App Launch in a real browser: the npm `fhirclient` library in headless Chromium
// (Debian chromium, driven by playwright-core) against `ehrchain dev`. The dev network's CA
// is trusted in a throw-away NSS database, and passkeys come from Chromium's virtual
// authenticator (the DevTools WebAuthn domain).
//
// 1. The custodial patient enrols a passkey with the code `ehrchain dev` wrote.
// 2. Patient launch: the demo app redirects to the node's page, the patient logs in with the
//    passkey, approves, and the app reads Patient/$everything, is refused a create (scopes),
//    refreshes, revokes, and is refused after revocation.
// 3. Provider launch: the clinician logs in with their key file, signed in wasm by the
//    project's Rust client library; the same checks.
// 4. The other custodial patient makes a key of their own in the browser with an enrolment
//    code from their home node (node-1): the identity moves to it on chain, the node deletes
//    its custodial key, the page hands over the key file, and the patient logs in with it
//    through node-1 (every node knows the app) and reads their record.
//
// Usage: node browser.mjs DEV_DIR ARTEFACTS_DIR. Screenshots of each step go to ARTEFACTS_DIR.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { serve } from './serve.mjs';
import { launch as launchChromium, check } from '../browser.mjs';

const [home, artefacts] = process.argv.slice(2);
const demo = JSON.parse(fs.readFileSync(path.join(home, 'passkey-enrolment.json'), 'utf8'));
const identities = JSON.parse(fs.readFileSync(path.join(home, 'identities.json'), 'utf8'));
const patient = identities.find((i) => i.id === demo.identity);
const clinician = identities.find((i) => i.role === 'clinician' && i.api === patient.api);
const clinicianKey = path.join(home, 'identities', 'clinician-1.key');

const server = await serve(8765);
const { browser, profile, shooter, close } = await launchChromium(home, artefacts);
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (message) => console.log(`page: ${message.text()}`));
  const shot = shooter(page);
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  // 1. Enrol a passkey with the one-time code.
  await page.goto(demo.enrol_url);
  await shot('enrol');
  await page.getByLabel('Enrolment code').fill(demo.code);
  await page.getByRole('button', { name: 'Enrol this device' }).click();
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('enrolled'),
    null, { timeout: 30000 });
  await shot('enrolled');
  check(true, 'a passkey was enrolled with the code');

  const launch = async (kind, logIn, fhir = demo.fhir) => {
    const app = `http://127.0.0.1:8765/?iss=${encodeURIComponent(fhir)}&patient=${patient.patient}`;
    await page.goto(app);
    await page.getByRole('button', { name: kind === 'patient' ? 'Patient launch' : 'Provider launch' }).click();
    await page.waitForURL(/\/auth\/authorize/, { timeout: 30000 });
    await shot(`${kind}-login`);
    await logIn();
    await page.locator('#consent').waitFor({ state: 'visible', timeout: 30000 });
    await shot(`${kind}-consent`);
    const words = await page.locator('#scopes li').allTextContents();
    check(words.length >= 4 && words.some((w) => w.includes('read')), `${kind}: the consent screen lists the scopes in words`, words);
    await page.getByRole('button', { name: 'Approve' }).click();
    await page.waitForFunction(() => window.__result, null, { timeout: 90000 });
    await shot(`${kind}-app`);
    return page.evaluate(() => window.__result);
  };

  // 2. Patient launch, with the passkey.
  const mine = await launch('patient', () => page.getByRole('button', { name: 'Log in with a passkey' }).click());
  check(!mine.error, 'patient launch: no error', mine);
  check(mine.patient === patient.patient, 'patient launch: the token names the patient', mine);
  check(mine.fhirUser.endsWith(`/Patient/${patient.patient}`), 'patient launch: fhirUser', mine);
  check(mine.everything > 1, 'patient launch: Patient/$everything read', mine);
  check(mine.create === 403, 'patient launch: a create beyond the scopes is refused', mine);
  check(mine.refreshed && mine.afterRefresh === 200, 'patient launch: the refreshed token reads', mine);
  check(mine.revoked === 200 && mine.afterRevoke === 401, 'patient launch: refused after revocation', mine);

  // 3. Provider launch, with the clinician's key file signed in wasm.
  const theirs = await launch('provider', async () => {
    await page.locator('#keyfile').setInputFiles(clinicianKey);
    await page.getByRole('button', { name: 'Log in with the key file' }).click();
  });
  check(!theirs.error, 'provider launch: no error', theirs);
  check(theirs.patient === null && theirs.fhirUser.includes(`/Practitioner/${clinician.id}`), 'provider launch: a practitioner, no patient context', theirs);
  check(theirs.create === 403, 'provider launch: a create beyond the scopes is refused', theirs);
  check(theirs.refreshed && theirs.revoked === 200 && theirs.afterRevoke === 401, 'provider launch: refresh, then refused after revocation', theirs);
  // 4. A key made in the browser, registered with an enrolment code from node-1.
  const second = identities.find((i) => i.role === 'patient' && i.id !== patient.id);
  const secondNode = second.api.replace('https://127.0.0.1', 'https://localhost');
  const code = execFileSync(process.env.EHRCHAIN_BIN, ['passkey', 'enrolment-code',
    '--config', path.join(home, 'node-1', 'config.toml'), '--identity', second.id]).toString().trim();
  await page.goto(`${secondNode}/auth/enrol`);
  await page.getByLabel('Enrolment code').fill(code);
  await page.getByRole('button', { name: 'Make my own key in this browser instead' }).click();
  await page.locator('#saved').waitFor({ state: 'visible', timeout: 60000 });
  await shot('own-key-made');
  const custodial = path.join(home, 'node-1', 'data', 'custody', `${second.patient}.key`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#download').click()]);
  const ownKey = path.join(profile, 'own.key');
  await download.saveAs(ownKey);
  const ownText = fs.readFileSync(ownKey, 'utf8').trim();
  check(/^[0-9a-f]{64}$/.test(ownText), 'own key: the page hands over a key file', ownText.length);
  check(!fs.existsSync(custodial), 'own key: the home node deleted its custodial key', custodial);
  const own = await launch('patient', async () => {
    await page.locator('#keyfile').setInputFiles(ownKey);
    await page.getByRole('button', { name: 'Log in with the key file' }).click();
  }, `${secondNode}/fhir`);
  check(!own.error && own.patient === second.patient, 'own key: the patient logs in with the key made in the browser', own);
  check(own.everything >= 1 && own.revoked === 200 && own.afterRevoke === 401, 'own key: reads, then refused after revocation', own);
  console.log('SMART App Launch in Chromium: all checks passed');
} finally {
  await close();
  server.close();
}
