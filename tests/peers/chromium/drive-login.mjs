// PROBE ONLY: drive Glewlwyd's login + consent pages with headless Chromium
// (puppeteer-core) through an authorization code + PKCE request, and catch
// the redirect on a loopback listener.
//   node drive-login.mjs GLEWLWYD_URL [LISTEN_PORT=47123] [CLIENT=tower-client]
// Needs: npm install puppeteer-core (in a dir on NODE_PATH / next to this).
import puppeteer from 'puppeteer-core';
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base, port = '47123', client = 'tower-client'] = process.argv.slice(2);
const t0 = Date.now(), ms = () => `${Date.now() - t0} ms`;
const redirect = `http://127.0.0.1:${port}/`;
const verifier = crypto.randomBytes(32).toString('base64url');
const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
const state = crypto.randomBytes(16).toString('base64url');

// The loopback listener: resolves with the first request that carries ?code / ?error.
const got = new Promise((resolve) => {
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, redirect);
    console.log(`[${ms()}] listener: ${req.method} ${req.url}`);
    if (!u.searchParams.has('code') && !u.searchParams.has('error')) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': 'text/html' }).end('<p id="done">You can close this tab.</p>');
    srv.close(); resolve(u.searchParams);
  }).listen(Number(port), '127.0.0.1');
});

const auth = new URL(`${base}/api/oidc/auth`);
Object.entries({ response_type: 'code', client_id: client, redirect_uri: redirect, scope: 'scope1',
  state, code_challenge: challenge, code_challenge_method: 'S256' }).forEach(([k, v]) => auth.searchParams.set(k, v));

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chr-ud-'));
const browser = await puppeteer.launch({
  executablePath: '/usr/bin/chromium', headless: true, userDataDir,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
});
console.log(`[${ms()}] browser up: ${await browser.version()}`);
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  page.on('framenavigated', (f) => f === page.mainFrame() && console.log(`[${ms()}] nav: ${f.url()}`));
  await page.goto(auth.href);
  // Glewlwyd's login.html (React): username + password inputs, then a submit button.
  await page.waitForSelector('#username');
  await page.type('#username', 'alice');
  await page.type('#password', 's3cret');
  await page.click('button[type=submit]');
  console.log(`[${ms()}] login submitted`);
  // After login, login.html shows (a) the consent page "Client access grant"
  // (first time this user meets this client: tick #grant-scope1, click "Grant
  // access"), then (b) a logged-in page with a "Continue" button, which goes to
  // /api/oidc/auth again and on to the redirect_uri. (a) is skipped once the
  // grant is stored server-side; (b) always comes.
  for (let step = 0; step < 4; step++) {
    const w = await Promise.race([got.then(() => 'redirect'),
      page.waitForSelector('#grant-scope1', { visible: true }).then(() => 'grant'),
      page.waitForSelector('button::-p-text(Continue)', { visible: true }).then(() => 'continue')]);
    console.log(`[${ms()}] step: ${w}`);
    if (w === 'redirect') break;
    if (w === 'grant') {
      if (!(await page.$eval('#grant-scope1', (e) => e.checked))) await page.click('#grant-scope1');
      await page.click('button.btn-primary::-p-text(Grant access)');
      await page.waitForSelector('#grant-scope1', { hidden: true });
    } else { await page.click('button::-p-text(Continue)'); await got; break; }
  }
  const q = await got;
  console.log(`[${ms()}] callback: code=${q.get('code')} state_ok=${q.get('state') === state} error=${q.get('error')}`);
  if (process.env.DUMP) fs.writeFileSync(process.env.DUMP, await page.content());
  // Exchange the code (confidential client, Basic auth), to prove the whole flow.
  const body = new URLSearchParams({ grant_type: 'authorization_code', code: q.get('code'), redirect_uri: redirect, code_verifier: process.env.WRONG_VERIFIER ? 'x'.repeat(43) : verifier });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (client === 'tower-client') headers.authorization = 'Basic ' + Buffer.from('tower-client:tower-secret-0123').toString('base64');
  else body.set('client_id', client);
  const r = await fetch(`${base}/api/oidc/token`, { method: 'POST', headers, body });
  const txt = await r.text(); let keys = ''; try { keys = Object.keys(JSON.parse(txt)).join(','); } catch {}
  console.log(`[${ms()}] token: ${r.status} keys=${keys} ${txt.slice(0, 120)}`);
  if (r.status !== 200) process.exitCode = 1;
} catch (e) {
  console.log(`[${ms()}] FAILED: ${e.message}`);
  const pages = await browser.pages();
  const p = pages[pages.length - 1];
  fs.writeFileSync('/tmp/chr-fail.html', await p.content()); await p.screenshot({ path: '/tmp/chr-fail.png' });
  process.exitCode = 1;
} finally { await browser.close(); fs.rmSync(userDataDir, { recursive: true, force: true }); }
process.exit();
