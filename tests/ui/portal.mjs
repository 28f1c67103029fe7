// The patient portal every node serves at `/`, in headless Chromium against `ehrchain dev`:
// the patient logs in through the node's own SMART login (their key file, signed in wasm),
// reads the record as a timeline (each version's proof checked in wasm), grants the clinician
// of another institution access to Observations, and sees that clinician's read on the trail;
// then revokes, and the clinician's next attempt appears as refused. Then the mode (custodial),
// the download of the whole record, phone width, a guardian appointed with a key made in the
// browser who logs in with it and sees the record until the patient removes them, a patient who holds their own key opening
// their record in the browser (the node served ciphertext only, and logged each read), and
// erasure. Every page is checked by
// axe-core. Screenshots of each step go to ARTEFACTS_DIR.
//
// Usage: node portal.mjs DEV_DIR ARTEFACTS_DIR (EHRCHAIN_BIN names the CLI).
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { launch, check, accessible, logInWithKey } from '../browser.mjs';

const [home, artefacts] = process.argv.slice(2);
const identities = JSON.parse(fs.readFileSync(path.join(home, 'identities.json'), 'utf8'));
const patient = identities.find((i) => i.role === 'patient');
const home0 = patient.api.replace('https://127.0.0.1', 'https://localhost');
const clinician = identities.find((i) => i.role === 'clinician' && i.api !== patient.api);
const clinicianKey = path.join(home, 'identities', `clinician-${identities.filter((i) => i.role === 'clinician').indexOf(clinician) + 1}.key`);
const patientKey = path.join(home, 'identities', 'patient-1.key');

// The clinician, from their own node, as their charting software would.
const token = execFileSync(process.env.EHRCHAIN_BIN, ['auth', 'token', '--api', clinician.api, '--key', clinicianKey]).toString().trim();
async function clinicianReads() {
  const response = await fetch(`${clinician.api}/fhir/Observation?patient=${patient.patient}&_count=5`, {
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/fhir+json' },
  });
  return response.status;
}
async function until(what, check, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const { browser, shooter, close } = await launch(home, artefacts);
try {
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.on('console', (message) => console.log(`page: ${message.text()}`));
  page.on('response', (r) => { if (r.status() >= 400) console.log(`page: ${r.status()} ${r.url().split('?')[0]}`); });
  const shot = shooter(page);

  // Log in through the node's own SMART login, with the key file signed in wasm.
  const started = Date.now();
  await page.goto(`${home0}/`);
  const firstLoad = Date.now() - started;
  await shot('portal-welcome');
  await accessible(page, 'the welcome page');
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
  await page.waitForURL(/\/auth\/authorize/, { timeout: 30000 });
  await page.locator('#keyfile').setInputFiles(patientKey);
  await page.getByRole('button', { name: 'Log in with the key file' }).click();
  await page.locator('#consent').waitFor({ state: 'visible', timeout: 30000 });
  await shot('portal-consent');
  await accessible(page, 'the login and consent page');
  await page.getByRole('button', { name: 'Approve' }).click();
  await page.waitForURL(`${home0}/`, { timeout: 60000 });

  // The record, as a person reads it.
  await page.locator('#timeline li').first().waitFor({ timeout: 60000 });
  const count = await page.locator('#timeline li').count();
  check(count > 10, 'the record shows as a timeline', count);
  const observation = await page.locator('#timeline li', { hasText: 'Observation ·' }).first().textContent();
  check(/Value/.test(observation), 'an observation shows its value, not JSON', observation.slice(0, 200));
  // Its integrity: the version's inclusion proof checked in the browser, in wasm.
  const first = page.locator('#timeline li').first();
  await first.getByRole('button', { name: /on the chain/ }).click();
  await first.locator('.proof.checked, .proof.denied').waitFor({ timeout: 60000 });
  const proof = await first.locator('.proof').textContent();
  check(proof.includes('finalized') && proof.includes('checked in this browser'), 'a record\'s proof is checked in the browser', proof);
  await page.locator('#record-type').selectOption('Observation');
  const only = await page.locator('#timeline li .meta').allTextContents();
  check(only.length > 0 && only.every((m) => m.startsWith('Observation')), 'the timeline filters by type', only.length);
  await shot('portal-record');
  await accessible(page, 'the record');
  const timings = await page.evaluate(() => window.__timings);
  console.log(`measured: first load ${firstLoad} ms, record ${Math.round(timings.record_ms)} ms, timeline of ${timings.timeline_items} rendered in ${Math.round(timings.timeline_render_ms)} ms`);

  // By keyboard alone: the tabs follow the arrow keys, and Tab moves on into the chosen
  // panel with a visible focus ring.
  await page.getByRole('tab', { name: 'My record' }).focus();
  await page.keyboard.press('ArrowRight');
  const moved = await page.evaluate(() => [document.activeElement.textContent.trim(), document.activeElement.getAttribute('aria-selected'), !document.getElementById('grants').hidden]);
  check(moved[0] === 'Who can see it' && moved[1] === 'true' && moved[2], 'the tabs follow the arrow keys', moved);
  await page.keyboard.press('ArrowLeft');
  await page.keyboard.press('Tab');
  const into = await page.evaluate(() => {
    const at = document.activeElement;
    return [at.closest('[role="tabpanel"]')?.id, at.tagName, getComputedStyle(at).outlineStyle];
  });
  check(into[0] === 'record' && into[2] !== 'none', 'Tab moves into the chosen panel, with a visible focus', into);

  // Grant the other institution's clinician access to Observations.
  check(await clinicianReads() === 403, 'before any grant the clinician is refused', null);
  await page.getByRole('tab', { name: 'Who can see it' }).click();
  await page.locator('#grantee option').first().waitFor({ state: 'attached', timeout: 30000 });
  await page.locator('#grantee').selectOption(`Practitioner/${clinician.id}`);
  await page.getByLabel('Observation', { exact: true }).check();
  await page.getByLabel('For what purpose').selectOption('TREAT');
  await page.getByRole('button', { name: 'Give access' }).click();
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Access given'), null, { timeout: 60000 });
  await shot('portal-granted');
  await accessible(page, 'who can see it');
  // The data keys reach the clinician's node within seconds (503 until then).
  await until('the clinician reading under the grant', async () => (await clinicianReads()) === 200);
  check(true, 'the clinician reads under the grant', null);

  // The patient sees the read on the trail (once the clinician's node has logged it).
  const who = `Clinician ${clinician.id.slice(0, 8)}`;
  const historyRow = async (outcome) => {
    await page.getByRole('tab', { name: 'Who can see it' }).click();
    await page.getByRole('tab', { name: 'Who looked' }).click();
    await page.locator('#history-rows tr').first().waitFor({ timeout: 30000 });
    const rows = await page.locator('#history-rows tr').allTextContents();
    return rows.some((r) => r.includes(who) && r.includes(outcome));
  };
  await until('the read on the trail', () => historyRow('allowed'), 90);
  await shot('portal-history-read');
  await accessible(page, 'who looked');
  check(true, 'the patient sees the clinician\'s read in the history', null);

  // Revoke; the clinician's next attempt is refused and appears as refused.
  await page.getByRole('tab', { name: 'Who can see it' }).click();
  await page.getByRole('button', { name: `Revoke access of ${who}` }).first().click();
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Revoked'), null, { timeout: 60000 });
  await shot('portal-revoked');
  await until('the clinician refused after revocation', async () => (await clinicianReads()) === 403, 30);
  await until('the refusal on the trail', () => historyRow('refused'), 90);
  await shot('portal-history-refused');
  check(true, 'the refused attempt after revocation appears in the history', null);

  // The mode is said: this patient's home node keeps their key.
  const header = await page.locator('#who').textContent();
  check(header.includes('keeps your key'), 'the page says the patient is custodial', header);
  // The whole record downloads as a FHIR Bundle.
  await page.getByRole('tab', { name: 'My record' }).click();
  await page.locator('#timeline li').first().waitFor({ timeout: 60000 });
  const [bundleFile] = await Promise.all([page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download my whole record (FHIR Bundle)' }).click()]);
  const bundle = JSON.parse(fs.readFileSync(await bundleFile.path(), 'utf8'));
  check(bundle.resourceType === 'Bundle' && bundle.entry.length >= count,
    'the whole record downloads as a FHIR Bundle', bundle.entry.length);

  // At phone width the page still works in one column.
  await page.setViewportSize({ width: 390, height: 800 });
  await shot('portal-phone');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, 'no horizontal scrolling at phone width', overflow);
  // A guardian: the patient appoints one with a key made in the browser and hands over the
  // key file; the guardian logs in with it and sees the patient's record.
  await page.setViewportSize({ width: 1100, height: 900 });
  await page.getByRole('tab', { name: 'Who can see it' }).click();
  await page.getByRole('button', { name: /Appoint a guardian/ }).click();
  await page.waitForFunction(() => /appointed/.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  const [guardianFile] = await Promise.all([page.waitForEvent('download'), page.locator('#guardian-file').click()]);
  const guardianKey = path.join(artefacts, 'guardian.key');
  await guardianFile.saveAs(guardianKey);
  check((await page.locator('#guardian-list li').allTextContents()).some((t) => t.startsWith('Guardian ')),
    'the appointed guardian is listed', null);
  await shot('portal-guardian-appointed');
  await accessible(page, 'the guardians');
  const guardianPage = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  await logInWithKey(guardianPage, home0, guardianKey, { name: 'Log in', exact: true });
  await guardianPage.locator('#timeline li').first().waitFor({ timeout: 60000 });
  const guardianHeader = await guardianPage.locator('#who').textContent();
  check(guardianHeader.startsWith(`Guardian of patient ${patient.patient}`) && await guardianPage.locator('#timeline li').count() >= count,
    'the guardian logs in with the key file and sees the patient\'s record', guardianHeader);
  await shooter(guardianPage)('portal-guardian-record');
  // The patient removes the guardian: their key stops working, and their page no longer
  // shows the record.
  await page.getByRole('button', { name: /^Remove guardian / }).click();
  await page.waitForFunction(() => /removed/.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  check((await page.locator('#guardian-list').textContent()).includes('No guardian'), 'the removed guardian is no longer listed', null);
  await shot('portal-guardian-removed');
  await guardianPage.reload();
  await guardianPage.waitForFunction(() => /did not work|ended|log in/i.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  const afterRemoval = await guardianPage.locator('#status').textContent();
  check(await guardianPage.locator('#timeline li').count() === 0, 'the removed guardian no longer sees the record', afterRemoval);
  await shooter(guardianPage)('portal-guardian-refused');
  fs.rmSync(guardianKey);
  await page.getByRole('tab', { name: 'My record' }).click();
  await page.locator('#timeline li').first().waitFor({ timeout: 60000 });

  // A patient who holds their own key: the node sends their record encrypted, the page opens
  // it in wasm with the key file they choose (never sent), and the node's access log names
  // each read. Every response the browser got is kept, to show that none carried plaintext.
  const ownPatient = identities.find((i) => i.role === 'patient' && i.custodial === false);
  const ownKeyFile = path.join(home, 'identities', `patient-${identities.filter((i) => i.role === 'patient').indexOf(ownPatient) + 1}.key`);
  const ownHome = ownPatient.api.replace('https://127.0.0.1', 'https://localhost');
  const ownPage = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  const served = [];
  const sent = [];
  ownPage.on('response', (r) => served.push(r.body().then((b) => [r.url(), b.toString('latin1')], () => [r.url(), ''])));
  ownPage.on('request', (r) => sent.push(r.postData() || ''));
  await logInWithKey(ownPage, ownHome, ownKeyFile, { name: 'Log in', exact: true });
  await ownPage.locator('#own-key-file').waitFor({ state: 'visible', timeout: 60000 });
  const ownHeader = await ownPage.locator('#who').textContent();
  check(ownHeader.includes('you hold your own key'), 'the page says the patient holds their own key', ownHeader);
  await shooter(ownPage)('portal-own-key-asked');
  await accessible(ownPage, 'the own-key record page');
  await ownPage.locator('#own-key-file').setInputFiles(ownKeyFile);
  await ownPage.waitForFunction(() => /opened in this browser with your key/.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  const opened = await ownPage.locator('#timeline li').count();
  const raw = (await ownPage.locator('#timeline pre').allTextContents()).map((t) => JSON.parse(t));
  check(opened >= 5 && raw.some((r) => r.resourceType === 'Patient'), 'the own-key patient\'s record opens in the browser', opened);
  await shooter(ownPage)('portal-own-key-opened');
  // What the page shows came out of wasm: the strings only the plaintext holds (names, codes,
  // values, dates) appear in no response the node sent, and the key file in no request.
  const secrets = [...new Set(raw.flatMap((r) => [
    ...(r.name || []).map((n) => n.family),
    (r.code || {}).text, ...(((r.code || {}).coding) || []).map((c) => c.display),
    r.birthDate, r.effectiveDateTime,
  ]).filter((v) => typeof v === 'string' && v.length >= 6))];
  const bodies = await Promise.all(served);
  check(secrets.length >= 3, 'the opened record has strings to look for', secrets);
  check(bodies.some(([url]) => url.includes('/ui/sealed')) && !bodies.some(([url]) => url.includes('$everything')),
    'the record came as /ui/sealed ciphertext, not through $everything', bodies.map(([u]) => u.split('?')[0]));
  const leaks = secrets.filter((secret) => bodies.some(([, body]) => body.includes(secret)));
  check(leaks.length === 0, 'the node served ciphertext only: no plaintext in any response', leaks);
  const keyText = fs.readFileSync(ownKeyFile, 'utf8').trim();
  check(!sent.some((body) => body.includes(keyText)), 'the key file is never sent', null);
  // The node's access log names each of these reads, as the chain's trail shows the auditor.
  const auditorToken = execFileSync(process.env.EHRCHAIN_BIN, ['auth', 'token', '--api', ownPatient.api,
    '--key', path.join(home, 'auditor.key')]).toString().trim();
  const ids = raw.map((r) => r.id);
  const logged = await until('the own-key reads on the trail', async () => {
    const trail = await (await fetch(`${ownPatient.api}/patients/${ownPatient.patient}/access?limit=500`, {
      headers: { Authorization: `Bearer ${auditorToken}` } })).json();
    const reads = (trail.events || []).filter((e) => e.actor === ownPatient.id && e.outcome === 'allowed' && ids.includes(e.record));
    return new Set(reads.map((e) => e.record)).size === ids.length ? reads : null;
  }, 90);
  check(logged.every((e) => e.purpose === 'PATRQT'), 'the access log names every read, by the patient, for their own request', logged.length);

  // Erasure, last: the page says exactly what happens, asks for the patient id, and then
  // the record is gone on every node while the trail stays.
  await page.setViewportSize({ width: 1100, height: 900 });
  await page.locator('#erasure summary').click();
  await page.getByLabel(/To confirm, type your patient id/).fill('not my id');
  await page.getByRole('button', { name: 'Erase my record' }).click();
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('type the patient id'), null, { timeout: 30000 });
  await page.getByLabel(/To confirm, type your patient id/).fill(patient.patient);
  await page.getByRole('button', { name: 'Erase my record' }).click();
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Your record is erased'), null, { timeout: 60000 });
  await shot('portal-erased');
  const gone = await fetch(`${clinician.api}/fhir/Patient/${patient.patient}/$everything`, {
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/fhir+json' },
  });
  check(gone.status === 410, 'after erasure the record is gone (410)', gone.status);
  console.log('The patient portal in Chromium: all checks passed');
} catch (error) {
  // What the person saw when it failed, for the report.
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    console.log(`page status: ${await page.locator('#status').textContent().catch(() => '?')}`);
    await page.screenshot({ path: path.join(artefacts, 'failure.png'), fullPage: true }).catch(() => {});
  }
  throw error;
} finally {
  await close();
}
