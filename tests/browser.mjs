// Headless Chromium for the browser journeys (Debian chromium, driven by playwright-core),
// trusting the dev network's CA in a throw-away NSS database (Chromium on Linux reads
// $HOME/.pki), with screenshots numbered in the order they are taken.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

const modules = process.env.EHRCHAIN_NODE_MODULES
  || path.join(process.env.HOME, '.cache/ehrchain/npm/node_modules');

export async function launch(home, artefacts) {
  const { chromium } = await import(path.join(modules, 'playwright-core/index.mjs'));
  fs.mkdirSync(artefacts, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ehrchain-chromium-'));
  const nss = `sql:${path.join(profile, '.pki/nssdb')}`;
  fs.mkdirSync(path.join(profile, '.pki/nssdb'), { recursive: true });
  execFileSync('certutil', ['-d', nss, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', nss, '-A', '-t', 'C,,', '-n', 'ehrchain-dev', '-i', path.join(home, 'tls/ca.pem')]);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    env: { ...process.env, HOME: profile },
  });
  let step = 0;
  const shooter = (page) => async (name) => {
    step += 1;
    await page.screenshot({ path: path.join(artefacts, `${String(step).padStart(2, '0')}-${name}.png`), fullPage: true });
  };
  const close = async () => {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { browser, profile, shooter, close };
}

export function check(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
  console.log(`ok: ${what}`);
}

// axe-core in the page (evaluated through DevTools, so the page's CSP stays as it is): no
// violation of serious or critical impact (WCAG 2.1 A and AA rules), or the test fails naming them.
export async function accessible(page, what) {
  const source = fs.readFileSync(path.join(modules, 'axe-core/axe.min.js'), 'utf8');
  await page.evaluate(source);
  const violations = await page.evaluate(async () => {
    const results = await window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
    });
    return results.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ rule: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  check(violations.length === 0, `${what}: no serious or critical accessibility violation (axe-core)`, violations);
}

// Log in at a node's web UI with a key file, through the node's own SMART login: `button`
// names the welcome page's login button (a getByRole name option), then the consent is
// approved and the page is back at the node.
export async function logInWithKey(page, origin, keyFile, button) {
  await page.goto(`${origin}/`);
  await page.getByRole('button', button).click();
  await page.waitForURL(/\/auth\/authorize/, { timeout: 30000 });
  await page.locator('#keyfile').setInputFiles(keyFile);
  await page.getByRole('button', { name: 'Log in with the key file' }).click();
  await page.locator('#consent').waitFor({ state: 'visible', timeout: 30000 });
  await page.getByRole('button', { name: 'Approve' }).click();
  await page.waitForURL(`${origin}/`, { timeout: 60000 });
}
