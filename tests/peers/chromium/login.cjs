// Headless Chromium as the user of an interactive OAuth2 flow: opens an
// authorization URL, signs in on Glewlwyd's login page, grants the scopes on
// its consent page, presses "Continue", and follows the redirect to the
// client's loopback listener (the crate's), waiting until the listener's final
// page is shown. The crate's test opens it through its `Browser` trait.
//
//   node tests/peers/chromium/login.cjs AUTHORIZATION_URL
//
// Env: LOGIN_USER, LOGIN_PASSWORD (the Glewlwyd user), NODE_PATH (a
// node_modules holding puppeteer-core, installed by tests/peers/chromium.sh),
// CHROMIUM (default /usr/bin/chromium), LOGIN_TIMEOUT_MS (default 30000).
// Writes one JSON line on stdout at the end:
//   {"ok":true,"title":"…","text":"…","url":"…","steps":["login","grant","continue","listener"],"ms":812}
// or {"ok":false,"error":"…",…}; progress lines go to stderr. Exit 0 when the
// listener's page was reached (whatever it says: the test judges it), 1 otherwise.
'use strict';
const puppeteer = require('puppeteer-core');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const [authUrl] = process.argv.slice(2);
if (!authUrl) {
  process.stderr.write('usage: node login.cjs AUTHORIZATION_URL\n');
  process.exit(2);
}
const user = process.env.LOGIN_USER || 'alice';
const password = process.env.LOGIN_PASSWORD || 's3cret';
const timeout = Number(process.env.LOGIN_TIMEOUT_MS || 30000);
const redirect = new URL(authUrl).searchParams.get('redirect_uri');
if (!redirect) {
  process.stdout.write(JSON.stringify({ ok: false, error: 'the authorization URL has no redirect_uri' }) + '\n');
  process.exit(1);
}
// The listener's origin: every page there is the crate's, not the server's.
const listener = new URL(redirect).origin;
const t0 = Date.now();
const log = (m) => process.stderr.write(`[login.cjs ${Date.now() - t0} ms] ${m}\n`);
const steps = [];

(async () => {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tower-auth-chromium-'));
  let browser;
  let result;
  try {
    browser = await puppeteer.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      userDataDir,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run',
        // Every name fails to resolve but the loopback address: the test's
        // traffic stays on 127.0.0.1.
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      ],
    });
    log(`browser up: ${await browser.version()}`);
    const page = await browser.newPage();
    page.setDefaultTimeout(timeout);
    page.on('framenavigated', (f) => f === page.mainFrame() && log(`navigated: ${f.url().split('?')[0]}`));
    await page.goto(authUrl);
    const deadline = t0 + timeout;
    const atListener = () => page.url().startsWith(listener);
    // The listener's page is final when its title says how it ended (the
    // implicit grant's fragment page posts back first, then shows the answer).
    const finalTitle = () => page.title().then((t) => /succeeded|failed|Not found/i.test(t)).catch(() => false);
    for (;;) {
      if (Date.now() > deadline) throw new Error(`no answer from the listener within ${timeout} ms`);
      if (atListener()) {
        if (await finalTitle()) {
          steps.push('listener');
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      // Whichever comes first; the others are cancelled (a waiter left behind
      // would reject later and end the process).
      const abort = new AbortController();
      const { signal } = abort;
      const what = await Promise.race([
        page.waitForFunction((origin) => location.href.startsWith(origin), { polling: 50, signal }, listener).then(() => 'listener'),
        page.waitForSelector('#username', { visible: true, signal }).then(() => 'login'),
        page.waitForSelector('input[id^=grant-]', { visible: true, signal }).then(() => 'grant'),
        page.waitForSelector('button::-p-text(Continue)', { visible: true, signal }).then(() => 'continue'),
      ].map((p) => p.catch((e) => (signal.aborted ? 'cancelled' : Promise.reject(e)))));
      abort.abort();
      log(`step: ${what}`);
      if (what === 'listener' || what === 'cancelled') continue;
      steps.push(what);
      if (steps.filter((s) => s === what).length > 3) throw new Error(`the ${what} page came back again and again`);
      if (what === 'login') {
        await page.type('#username', user);
        await page.type('#password', password);
        await page.click('button[type=submit]');
        await page.waitForSelector('#username', { hidden: true });
      } else if (what === 'grant') {
        for (const box of await page.$$('input[id^=grant-]')) {
          if (!(await box.evaluate((e) => e.checked))) await box.click();
        }
        await page.click('button.btn-primary::-p-text(Grant access)');
        await page.waitForSelector('input[id^=grant-]', { hidden: true });
      } else {
        await page.click('button::-p-text(Continue)');
        await page.waitForFunction((origin) => location.href.startsWith(origin), { polling: 50 }, listener);
      }
    }
    result = {
      ok: true,
      title: await page.title(),
      text: await page.evaluate(() => document.body.innerText),
      url: page.url().split('?')[0].split('#')[0],
      steps,
    };
  } catch (e) {
    result = { ok: false, error: String(e && e.message ? e.message : e), steps };
  } finally {
    if (browser) await browser.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  result.ms = Date.now() - t0;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
})();
