// End-to-end run of the audit web view in headless Chromium (Debian's
// chromium driven by playwright-core), started by tests/it/web.rs.
//
//   PEERS_NODE_DIR    where playwright-core is installed
//   BASE_URL          the broker's HTTP address
//   LOGIN_HINT        test IdP user to log in as (an admin)
//   FINISHED_SESSION  a recorded session to replay
//   LIVE_SESSION      a live session to terminate
//   ARTIFACTS         where the screenshots go
//   CHROMIUM          browser binary (default /usr/bin/chromium)
//
// Prints progress on stderr and one JSON line of findings on stdout; the
// Rust test asserts on them. Exits non-zero when a step cannot be done.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(path.join(process.env.PEERS_NODE_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const base = process.env.BASE_URL;
const finished = process.env.FINISHED_SESSION;
const live = process.env.LIVE_SESSION;
const shots = process.env.ARTIFACTS;
const step = (what) => process.stderr.write(`[web-e2e] ${what}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const result = {};
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const cspViolations = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on('dialog', (d) => d.accept());
  // Nothing the pages (or the browser for them, like the favicon) ask for is missing.
  const notFound = [];
  page.on('response', (r) => {
    if (r.status() === 404) notFound.push(r.url());
  });
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

  step('log in through the IdP');
  await page.goto(`${base}/ui/login?login_hint=${process.env.LOGIN_HINT}&next=/ui/logins`);
  await page.waitForURL(`${base}/ui/logins**`);
  const cookie = (await context.cookies()).find((c) => c.name === 'pam_web');
  result.cookie = cookie ? { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite, secure: cookie.secure } : null;

  step('find the login in the history');
  await page.fill('form.filters input[name=user]', `${process.env.LOGIN_HINT}@example.test`);
  await page.click('form.filters button[type=submit]');
  await page.waitForURL(/user=/);
  result.loginFound = (await page.locator('#logins tbody tr', { hasText: 'success' }).count()) > 0;
  await shot('logins');

  step('open the recorded session and replay it');
  await page.goto(`${base}/ui/sessions`);
  await shot('sessions');
  await page.locator(`#sessions a[href="/ui/sessions/${finished}"]`).first().click();
  await page.waitForURL(`${base}/ui/sessions/${finished}`);
  await page.waitForFunction(() => window.pamPlayer !== undefined);
  await page.evaluate(() => window.pamPlayer.play());
  await page.waitForFunction(
    () => (document.querySelector('#player .ap-term')?.textContent ?? '').includes('hello-from-pam'),
  );
  // Let the rest of the (short) recording play out.
  await page.waitForFunction(
    () => (document.querySelector('#player .ap-term')?.textContent ?? '').includes('bold?'),
  );
  result.replayText = await page.locator('#player .ap-term').textContent();
  result.pwned = await page.evaluate(() => window.pwned === 1);
  await shot('session');

  step('terminate the live session');
  await page.goto(`${base}/ui/sessions`);
  const form = page.locator(`#live-sessions form[action="/ui/sessions/${live}/terminate"]`);
  await form.locator('input[name=reason]').fill('INC-9 end-to-end terminate');
  await form.locator('input[name=confirm]').check();
  await form.locator('button[type=submit]').click();
  await page.waitForURL(`${base}/ui/sessions/${live}`);
  let status = '';
  for (let i = 0; i < 100; i++) {
    status = (await page.locator('#status .badge').textContent()).trim();
    if (status !== 'live') break;
    await page.waitForTimeout(200);
    await page.reload();
  }
  result.terminatedStatus = status;
  await shot('terminated');

  step('export the login history as CSV');
  await page.goto(`${base}/ui/logins`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  result.csv = fs.readFileSync(await download.path(), 'utf8');

  step('the chain page');
  await page.goto(`${base}/ui/verify`);
  await shot('verify');

  result.cspViolations = cspViolations;
  result.notFound = notFound;
  await context.close();
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(result)}\n`);
