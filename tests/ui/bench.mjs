// How the portal holds up with a long record, measured in Chromium: 1,000 Observations are
// written for the first patient (FHIR batches by their clinician), then the patient logs in
// and the page reports how long `$everything` took and how long the timeline takes to render
// (median of 7 renders of every record). Not a test: a benchmark, run against `ehrchain dev`:
//
//   ./scripts/dev &                                   # wait for "ready"
//   node tests/ui/bench.mjs .dev target/artefacts/ui-bench
//
// (EHRCHAIN_BIN defaults to target/release/ehrchain; NODE_EXTRA_CA_CERTS=.dev/tls/ca.pem.)
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { launch } from '../browser.mjs';

const [home, artefacts] = process.argv.slice(2);
const bin = process.env.EHRCHAIN_BIN || 'target/release/ehrchain';
const identities = JSON.parse(fs.readFileSync(path.join(home, 'identities.json'), 'utf8'));
const patient = identities.find((i) => i.role === 'patient');
const author = identities.find((i) => i.role === 'clinician' && i.api === patient.api);
const node = patient.api.replace('https://127.0.0.1', 'https://localhost');
const RECORDS = 1000;

const token = execFileSync(bin, ['auth', 'token', '--api', author.api, '--key', path.join(home, 'identities', 'clinician-1.key')]).toString().trim();
const written = Date.now();
for (let start = 0; start < RECORDS; start += 100) {
  const entry = Array.from({ length: 100 }, (_, i) => ({
    request: { method: 'POST', url: 'Observation' },
    resource: {
      resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      subject: { reference: `Patient/${patient.patient}` },
      effectiveDateTime: new Date(Date.UTC(2020, 0, 1) + (start + i) * 3600e3).toISOString(),
      valueQuantity: { value: 60 + ((start + i) % 40), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    },
  }));
  const response = await fetch(`${author.api}/fhir`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/fhir+json', Accept: 'application/fhir+json' },
    body: JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry }),
  });
  if (!response.ok) throw new Error(`batch ${start}: ${response.status} ${await response.text()}`);
}
console.log(`wrote ${RECORDS} Observations in ${Date.now() - written} ms`);

const { browser, close } = await launch(home, artefacts);
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${node}/`);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#keyfile').setInputFiles(path.join(home, 'identities', 'patient-1.key'));
  await page.getByRole('button', { name: 'Log in with the key file' }).click();
  await page.getByRole('button', { name: 'Approve' }).click();
  await page.waitForFunction((n) => document.querySelectorAll('#timeline li').length >= n, RECORDS, { timeout: 300000 });
  const load = await page.evaluate(() => window.__timings.record_ms);
  const renders = [];
  for (let i = 0; i < 7; i += 1) {
    await page.locator('#record-type').selectOption(i % 2 ? '' : 'Observation');
    await page.locator('#record-type').selectOption('');
    renders.push(await page.evaluate(() => window.__timings));
  }
  const ms = renders.map((t) => t.timeline_render_ms).sort((a, b) => a - b);
  console.log(`timeline: ${renders[0].timeline_items} records; $everything (all pages) ${Math.round(load)} ms; render median ${ms[3].toFixed(1)} ms (min ${ms[0].toFixed(1)}, max ${ms[6].toFixed(1)})`);
} finally {
  await close();
}
