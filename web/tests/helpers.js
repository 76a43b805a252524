// Test harness: the real server binary on 127.0.0.1:0 with its own temp data dir, Debian's
// Chromium through playwright-core, and deadline-based waits (never fixed sleeps).

import { spawn } from 'node:child_process';
import { mkdtemp, writeFile, readFile, rm, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const webDir = path.resolve(here, '..');
export const resultsDir = path.join(webDir, 'test-results');
const serverBin = process.env.WXCHAT_TEST_SERVER_BIN || path.resolve(webDir, '../target/debug/server');

/**
 * Polls `check` until it returns a truthy value or the deadline passes. For conditions with no
 * event to wait on (a file the server writes); everything in the browser uses Playwright's
 * own waits.
 */
export async function until(what, check, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Starts the server with a fresh data dir. The pages are the ones built into the binary, or
 * with WXCHAT_TEST_WEB_DIR=/path/to/web those of that folder (no rebuild while editing them). `extra` is appended to the config (TOML). Resolves
 * with {base, addr, dataDir, stop(), log()}; stop() kills it and removes the data dir.
 */
export async function startServer(extra = '') {
  if (!existsSync(serverBin)) throw new Error(`no server binary at ${serverBin}: run cargo build --bin server (or set WXCHAT_TEST_SERVER_BIN)`);
  const dir = await mkdtemp(path.join(tmpdir(), 'wxchat-web-'));
  const dataDir = path.join(dir, 'data');
  await mkdir(dataDir);
  const config = `[server]
listen = "127.0.0.1:0"
data_dir = ${JSON.stringify(dataDir)}
workers = 2
log_level = "warn"
[admin]
listen = ""
[api]
key = "test-api-key-0123456789"
[chat]
max_msgs_per_sec = 0
${process.env.WXCHAT_TEST_WEB_DIR ? `[web]\ndir = ${JSON.stringify(process.env.WXCHAT_TEST_WEB_DIR)}\n` : ''}${extra}`;
  const configPath = path.join(dir, 'server.toml');
  await writeFile(configPath, config);
  const proc = spawn(serverBin, ['run', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
  });
  let exited = null;
  // Should the test process itself die (Ctrl-C, a crash), the server goes with it.
  const reap = () => proc.kill('SIGKILL');
  process.once('exit', reap);
  proc.on('exit', (code, signal) => {
    exited = { code, signal };
    process.off('exit', reap);
  });
  const stop = async () => {
    if (exited === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const addr = await until('server.pid', async () => {
      if (exited) throw new Error(`server exited ${JSON.stringify(exited)}: ${stderr}`);
      const text = await readFile(path.join(dataDir, 'server.pid'), 'utf8').catch(() => '');
      const line = text.split('\n')[1];
      return line && line.includes(':') ? line.trim() : null;
    }, 20000);
    return { base: `http://${addr}`, addr, dataDir, stop, log: () => stderr, apiKey: 'test-api-key-0123456789' };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Chromium from Debian, headless; nothing reaches the network but loopback. */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
      // No network here: names fail at once instead of waiting for a DNS timeout.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    ],
  });
}

/** A page that fails the test on uncaught errors and CSP violations (collected, asserted at the end). */
export async function newPage(browser, { viewport } = {}) {
  const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 800 } });
  // Fail within seconds, not Playwright's 30 s: every wait here is for something local.
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    const t = msg.text();
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(t)) page.problems.push(`console: ${t}`);
  });
  return page;
}

export async function screenshot(page, name) {
  await mkdir(resultsDir, { recursive: true });
  await page.screenshot({ path: path.join(resultsDir, `${name}.png`), fullPage: false });
}

/** Waits until `locator` (a Playwright locator) has `text` in its text content. */
export async function waitText(locator, text, timeout = 10000) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout });
}

/** POST /api/server/<action> with the API key (3.2). */
export async function serverApi(server, action, body) {
  const res = await fetch(`${server.base}/api/server/${action}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${server.apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (json.code !== 200) throw new Error(`${action}: ${JSON.stringify(json)}`);
  return json.data;
}

/** A small striped PNG (made here: nothing binary in the repository), for upload tests. */
export function testPng(width = 96, height = 64) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) {
      const stripe = Math.floor((x + y) / 12) % 2;
      row.set(stripe ? [7, 193, 96] : [245, 246, 247], 1 + x * 3);
    }
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

export const WX_APPID = 'wx0123456789abcdef';
export const WX_SECRET = 'fake-app-secret';

/**
 * A fake WeChat API (api.weixin.qq.com) answering the calls wxchat makes, as WeChat does:
 * stable_token, qrcode/create (QR login), user/info, message/custom/send and typing (customer
 * service). Records what it was sent; `nextScene()` resolves with the scene_str of the next QR
 * code the server asks for.
 */
export async function startFakeWechat() {
  const sceneWaiters = [];
  const sent = []; // bodies of message/custom/send
  const sentWaiters = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      const json = (v) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(v));
      };
      const b = req.method === 'POST' && body ? JSON.parse(body) : {};
      switch (url.pathname) {
        case '/cgi-bin/stable_token':
          if (b.appid !== WX_APPID || b.secret !== WX_SECRET) return json({ errcode: 40125, errmsg: 'invalid appsecret' });
          return json({ access_token: 'T', expires_in: 7200 });
        case '/cgi-bin/qrcode/create': {
          const scene = b.action_info.scene.scene_str;
          json({ ticket: `gQ-${scene}`, expire_seconds: 120, url: `http://weixin.qq.com/q/${scene}` });
          for (const w of sceneWaiters.splice(0)) w(scene);
          return undefined;
        }
        case '/cgi-bin/user/info':
          // An older account that still gets nicknames (protocol-spec 4.2).
          return json({ subscribe: 1, openid: url.searchParams.get('openid'), nickname: 'Lily', headimgurl: 'https://thirdwx.qlogo.cn/mmopen/lily/132' });
        case '/cgi-bin/message/custom/send':
          json({ errcode: 0, errmsg: 'ok' });
          sent.push(b);
          for (const w of sentWaiters.splice(0)) w(b);
          return undefined;
        case '/cgi-bin/message/custom/typing':
          return json({ errcode: 0, errmsg: 'ok' });
        default:
          res.writeHead(404);
          res.end();
          return undefined;
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    sent,
    nextScene: () => new Promise((r) => sceneWaiters.push(r)),
    nextSent: () => new Promise((r) => sentWaiters.push(r)),
    close: () => server.close(),
  };
}

/** The `[[wechat.apps]]` table of an app on the fake, with a push token (plaintext pushes). */
export function wechatAppToml(fake, name, kind, token) {
  return `[[wechat.apps]]
name = "${name}"
kind = "${kind}"
appid = "${WX_APPID}"
secret = "${WX_SECRET}"
token = "${token}"
api_base = "${fake.base}"
`;
}

/**
 * Posts a WeChat message push (plaintext XML) to /wechat/<app>/callback, signed as in
 * protocol-spec 4.1: signature = sha1(sort([token, timestamp, nonce]).join('')).
 */
export async function wechatPush(server, app, token, fields) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = String(Math.floor(Math.random() * 1e9));
  const signature = createHash('sha1').update([token, timestamp, nonce].sort().join('')).digest('hex');
  const xml = `<xml>${Object.entries({ CreateTime: timestamp, ...fields })
    .map(([k, v]) => `<${k}><![CDATA[${v}]]></${k}>`).join('')}</xml>`;
  const res = await fetch(`${server.base}/wechat/${app}/callback?signature=${signature}&timestamp=${timestamp}&nonce=${nonce}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/xml' },
    body: xml,
  });
  return { status: res.status, text: await res.text() };
}
