// The staff pages every node serves at `/`, in headless Chromium against `ehrchain dev`,
// each login through the node's own SMART login with the person's key file ("Log in at work"):
// - a clinician finds their patient by name, charts them (by category, with a trend plot),
//   writes an observation through the form (checked by $validate first), is refused another
//   institution's patient in the contract's words, breaks the glass with a reason and sees its
//   time box run and the chart open (keys released by the patient's home node); that patient
//   then sees the emergency access flagged in their portal;
// - the auditor finds the break-glass finding, filters the findings, reads the trail and
//   governance, and checks a block's finalization certificate in wasm in the explorer;
// - the operator of an institution reads the node's health, enrols a clinician (a one-time
//   passkey code) and removes them.
// Every page is checked by axe-core. Screenshots of each step go to ARTEFACTS_DIR.
//
// Usage: node staff.mjs DEV_DIR ARTEFACTS_DIR
import fs from 'node:fs';
import path from 'node:path';
import { launch, check, accessible, logInWithKey } from '../browser.mjs';

const [home, artefacts] = process.argv.slice(2);
const identities = JSON.parse(fs.readFileSync(path.join(home, 'identities.json'), 'utf8'));
const localhost = (api) => api.replace('https://127.0.0.1', 'https://localhost');
const clinicians = identities.filter((i) => i.role === 'clinician');
const patients = identities.filter((i) => i.role === 'patient');
// The clinician at the second institution; their own patient, and the first institution's.
const clinician = clinicians[1];
const own = patients.find((p) => p.api === clinician.api);
const other = patients.find((p) => p.api !== clinician.api);
const keyOf = (name) => path.join(home, 'identities', name);

const { browser, shooter, close } = await launch(home, artefacts);
const pages = [];
async function logIn(api, keyFile, work = true) {
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  pages.push(page);
  page.on('console', (message) => console.log(`page: ${message.text()}`));
  page.on('response', (r) => { if (r.status() >= 400) console.log(`page: ${r.status()} ${r.url().split('?')[0]}`); });
  await logInWithKey(page, localhost(api), keyFile, work ? { name: 'Log in at work' } : { name: 'Log in', exact: true });
  return page;
}
const statusIs = (page, pattern, timeout = 60000) => page.waitForFunction(
  (source) => new RegExp(source).test(document.getElementById('status').textContent), pattern.source, { timeout });

try {
  // ---- the clinician ------------------------------------------------------------------
  const work = await logIn(clinician.api, keyOf(`clinician-${clinicians.indexOf(clinician) + 1}.key`));
  const shot = shooter(work);
  await work.locator('#w-patient-rows tr').first().waitFor({ timeout: 60000 });
  const ownRow = await work.locator('#w-patient-rows tr').first().textContent();
  const ownName = ownRow.split(/\d{4}-\d{2}-\d{2}/)[0].trim();
  check(ownRow.includes('registered at your institution'), 'the clinician\'s patient list says why each patient is there', ownRow);
  await work.getByLabel('Find by name or identifier').fill(ownName.split(' ')[0]);
  check(await work.locator('#w-patient-rows tr').count() === 1, 'a patient is found by name', ownName);
  await work.getByLabel('Find by name or identifier').fill('no such person at all');
  check(await work.locator('#w-patient-rows tr').count() === 0, 'a name that matches no one finds no one', null);
  await work.getByLabel('Find by name or identifier').fill('');
  await shot('workspace-patients');
  await accessible(work, 'the clinician\'s patient list');
  await work.getByRole('button', { name: `Open chart of ${ownName}` }).click();
  await work.locator('#w-chart-body section').first().waitFor({ timeout: 60000 });
  await statusIs(work, /^$/);
  const sections = await work.locator('#w-chart-body h3').allTextContents();
  check(['Problems', 'Medications', 'Allergies', 'Vitals and labs', 'Encounters', 'Documents'].every((s) => sections.includes(s)),
    'the chart is laid out by category', sections);
  check(await work.locator('.trend svg polyline').count() === 1, 'a numeric observation is plotted over time', null);
  await shot('workspace-chart');
  await accessible(work, 'the chart');

  // Write an observation: a value out of range is refused before anything is sent.
  await work.getByRole('tab', { name: 'Write' }).click();
  await work.getByLabel('Measurement').selectOption('8867-4');
  await work.getByLabel('Value', { exact: true }).fill('900');
  await work.getByRole('button', { name: 'Check and save' }).click();
  await statusIs(work, /between 20 and 250/);
  check(true, 'the form refuses an implausible value before sending it', null);
  await work.getByLabel('Value', { exact: true }).fill('72');
  await work.getByRole('button', { name: 'Check and save' }).click();
  await statusIs(work, /^Saved: Heart rate/);
  await shot('workspace-written');
  await accessible(work, 'the form');
  check(true, 'the clinician writes an observation through the form', null);

  // Another institution's patient, with no consent: refused in the contract's words.
  await work.getByRole('tab', { name: 'Patients' }).click();
  await work.getByLabel(/Patient id \(from/).fill(other.patient);
  await work.getByRole('button', { name: 'Open chart' }).last().click();
  await work.locator('#w-denied').waitFor({ state: 'visible', timeout: 60000 });
  const why = await work.locator('#w-denied-why').textContent();
  check(/Refused: .*(grant|consent)/.test(why), 'a refused read says why, in the contract\'s words', why);
  await shot('workspace-refused');
  // Break the glass: a reason is required, and the time box runs on screen.
  await work.getByRole('button', { name: 'Open in an emergency' }).click();
  await statusIs(work, /choose the reason/, 10000).catch(async () => {
    // The browser's own check of the required field stopped the form: same outcome.
    check(await work.locator('#w-glass-reason:invalid').count() === 1, 'break-glass needs a reason', null);
  });
  await work.getByLabel('Reason (required)').selectOption({ label: 'life-threatening condition' });
  await work.getByRole('button', { name: 'Open in an emergency' }).click();
  await statusIs(work, /^Emergency access is open/);
  const timer = await work.locator('#w-glass-running').textContent();
  check(/closes in \d+ min \d\d s/.test(timer), 'the break-glass time box is shown while it runs', timer);
  check(await work.locator('#w-glass-form').isHidden(), 'under break-glass the form is not offered again', null);
  // The chart opens: this node holds no key for another institution's patient, so the
  // patient's home node released each data key over the p2p network, after checking the
  // break-glass itself.
  const opened = await work.locator('#w-chart-body .chart-list li').count();
  check(opened > 0 && await work.locator('#w-denied').isHidden(),
    'under break-glass the chart of another institution\'s patient opens', `${opened} items; ${await work.locator('#w-denied-why').textContent()}`);
  await shot('workspace-break-glass');
  await accessible(work, 'the chart under break-glass');

  // ---- the patient sees it flagged ----------------------------------------------------
  const portal = await logIn(other.api, keyOf(`patient-${patients.indexOf(other) + 1}.key`), false);
  const patientShot = shooter(portal);
  await portal.getByRole('tab', { name: 'Who looked' }).click();
  await portal.locator('#history-rows tr.break-glass').first().waitFor({ timeout: 60000 });
  const flagged = await portal.locator('#history-rows tr.break-glass').first().textContent();
  check(flagged.includes('Emergency access') && flagged.includes(clinician.id.slice(0, 8)),
    'the patient sees the break-glass flagged, with who opened it', flagged);
  check(flagged.includes('awaiting an auditor'), 'the patient sees the opening awaits review', flagged);
  await patientShot('portal-break-glass-flagged');
  await accessible(portal, 'the flagged history');

  // ---- the auditor ----------------------------------------------------------------------
  const auditor = identities.find((i) => i.role === 'auditor');
  const audit = await logIn(auditor.api, path.join(home, 'auditor.key'));
  const auditShot = shooter(audit);
  await audit.locator('#a-find-rows tr').first().waitFor({ timeout: 60000 });
  await audit.locator('#a-find-kind').selectOption('break-glass');
  const finding = await audit.locator('#a-find-rows tr').first().textContent();
  check(finding.includes('Break-glass') && finding.includes('life-threatening') && finding.includes(other.patient.slice(0, 8)),
    'the auditor finds the break-glass finding', finding);
  // The clinician's institution: the finding is theirs; another's has none of theirs.
  await audit.locator('#a-find-institution').selectOption(clinician.institution);
  check(await audit.locator('#a-find-rows tr.break-glass').count() >= 1, 'findings filter by institution', clinician.institution);
  const elsewhere = identities.find((i) => i.role === 'clinician' && i.institution !== clinician.institution).institution;
  await audit.locator('#a-find-institution').selectOption(elsewhere);
  check(await audit.locator('#a-find-rows tr.break-glass').count() === 0, 'another institution\'s findings do not show it', elsewhere);
  await audit.locator('#a-find-institution').selectOption('');
  await auditShot('console-findings');
  await accessible(audit, 'the findings');
  // The auditor reviews the opening (on chain, once); the patient's history says so.
  await audit.locator('#a-find-kind').selectOption('break-glass');
  await audit.locator('#a-find-rows tr').first().getByRole('button', { name: /^Justified:/ }).click();
  await audit.waitForFunction(() => /^Reviewed: Justified/.test(document.getElementById('status').textContent), null, { timeout: 60000 });
  const reviewed = await audit.locator('#a-find-rows tr').first().textContent();
  check(reviewed.includes('Justified (') && await audit.locator('#a-find-rows tr').first().getByRole('button').count() === 0,
    'the auditor reviews the break-glass finding once', reviewed);
  await auditShot('console-reviewed');
  await portal.reload();
  await portal.getByRole('tab', { name: 'Who looked' }).click();
  await portal.locator('#history-rows tr.break-glass').first().waitFor({ timeout: 60000 });
  const afterReview = await portal.locator('#history-rows tr.break-glass').first().textContent();
  check(afterReview.includes('reviewed: justified'), 'the patient sees the auditor\'s review of the opening', afterReview);
  await patientShot('portal-break-glass-reviewed');
  await audit.getByRole('tab', { name: 'Trail' }).click();
  await audit.locator('#a-trail-rows tr').first().waitFor({ timeout: 60000 });
  const trailText = await audit.locator('#a-trail-rows').textContent();
  check(trailText.includes('break-glass') && !trailText.includes('Heart rate'), 'the trail shows who and why, never content', null);
  await auditShot('console-trail');
  await accessible(audit, 'the trail');
  await audit.getByRole('tab', { name: 'Governance' }).click();
  await audit.locator('#a-epoch-rows tr').first().waitFor({ timeout: 60000 });
  const sets = await audit.locator('#a-epoch-rows').textContent();
  check(sets.includes('from epoch 0'), 'governance lists the validator sets by epoch', sets.slice(0, 200));
  await auditShot('console-governance');
  await accessible(audit, 'governance');
  await audit.getByRole('tab', { name: 'Blocks' }).click();
  await audit.locator('#a-block-rows tr').first().waitFor({ timeout: 60000 });
  // A block with transactions: their kinds are listed.
  const blockRow = audit.locator('#a-block-rows tr').nth(1);
  await blockRow.getByRole('button', { name: /Check certificate of block/ }).click();
  await blockRow.locator('.proof.checked, .proof.denied').waitFor({ timeout: 60000 });
  const verdict = await blockRow.locator('.proof').textContent();
  check(verdict.startsWith('✔ Finalized by more than two thirds of the 4 validators') && verdict.includes('checked in this browser'),
    'a block\'s finalization certificate is checked in the browser', verdict);
  await auditShot('console-blocks');
  await accessible(audit, 'the block explorer');

  // ---- the operator -------------------------------------------------------------------
  const ops = await logIn(clinician.api, path.join(home, `node-${clinicians.indexOf(clinician)}`, 'validator.key'));
  const opsShot = shooter(ops);
  await ops.locator('#o-health-facts dt').first().waitFor({ timeout: 60000 });
  const health = await ops.locator('#o-health-facts').textContent();
  check(/Height\d+/.test(health) && health.includes('Mempool') && /Peers3 validators/.test(health), 'the operator sees the node\'s health', health.slice(0, 300));
  await opsShot('operator-health');
  await accessible(ops, 'node health');
  await ops.getByRole('tab', { name: 'Clinicians' }).click();
  await ops.locator('#o-clinician-rows tr').first().waitFor({ timeout: 60000 });
  const before = await ops.locator('#o-clinician-rows tr').count();
  await ops.getByRole('button', { name: 'Enrol a clinician' }).click();
  await statusIs(ops, /^Clinician enrolled/);
  const code = await ops.locator('#o-enrolled-code').textContent();
  check(/^[A-Z2-9]{5}-[A-Z2-9]{5}-[A-Z2-9]{5}$/.test(code), 'enrolment gives a one-time passkey code', code);
  check(await ops.locator('#o-clinician-rows tr').count() === before + 1, 'the new clinician is listed', null);
  await opsShot('operator-enrolled');
  await accessible(ops, 'the clinicians');
  const enrolled = await ops.locator('#o-enrolled-id').textContent();
  ops.once('dialog', (dialog) => dialog.accept());
  await ops.getByRole('button', { name: `Remove clinician ${enrolled.slice(0, 8)}` }).click();
  await statusIs(ops, /^Removed at block/);
  check(await ops.locator('#o-clinician-rows tr').count() === before, 'a removed clinician leaves the list', null);
  await opsShot('operator-removed');
  console.log('The staff pages in Chromium: all checks passed');
} catch (error) {
  for (const page of pages) {
    console.log(`page status: ${await page.locator('#status').textContent().catch(() => '?')}`);
  }
  if (pages.length) await pages[pages.length - 1].screenshot({ path: path.join(artefacts, 'failure.png'), fullPage: true }).catch(() => {});
  throw error;
} finally {
  await close();
}
