// Chromium through a real nginx running deploy/nginx/wxchat.conf with TLS (a CA and certificate
// made for the test, trusted by the browser context only): the chat demo is loaded over https,
// its WebSocket is wss:// through the proxy with permessage-deflate negotiated (the browser
// offers it), and two users chat.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, launch, screenshot, waitText, until, webDir } from './helpers.js';

let server;
let browser;
let nginx;

/** A free loopback port (closed again before nginx takes it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A CA and a server certificate it signed for 127.0.0.1, made with openssl. */
function certificates(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=wxchat test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', 'key.pem', '-out', 'server.csr');
  return writeFile(path.join(dir, 'ext.cnf'), 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n').then(() => {
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'ext.cnf', '-out', 'cert.pem');
  });
}

/** nginx with the shipped site configuration in front of the server. */
async function startNginx(upstream) {
  const dir = await mkdtemp(path.join(tmpdir(), 'wxchat-nginx-'));
  await certificates(dir);
  const port = await freePort();
  const site = (await readFile(path.join(webDir, '../deploy/nginx/wxchat.conf'), 'utf8'))
    .replace('server 127.0.0.1:9501;', `server ${upstream};`)
    .replace('listen 443 ssl;', `listen 127.0.0.1:${port} ssl;`)
    .replace('listen [::]:443 ssl;', '')
    .replace('/etc/ssl/wxchat/fullchain.pem', path.join(dir, 'cert.pem'))
    .replace('/etc/ssl/wxchat/privkey.pem', path.join(dir, 'key.pem'));
  assert.ok(site.includes(`listen 127.0.0.1:${port} ssl;`), 'the shipped configuration changed shape');
  await writeFile(path.join(dir, 'wxchat.conf'), site);
  await writeFile(path.join(dir, 'nginx.conf'), `daemon off;
master_process off;
user root;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/wxchat.conf;
}
`);
  const proc = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let exited = null;
  proc.on('exit', (code) => { exited = code; });
  const reap = () => proc.kill('SIGKILL');
  process.once('exit', reap);
  await until('nginx to listen', () => {
    if (exited !== null) throw new Error(`nginx exited ${exited}`);
    return canConnect(port);
  });
  return {
    base: `https://127.0.0.1:${port}`,
    ca: path.join(dir, 'ca.pem'),
    async stop() {
      process.off('exit', reap);
      if (exited === null) {
        const gone = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGKILL');
        await gone;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Whether something accepts connections on the loopback port. */
function canConnect(port) {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

before(async () => {
  server = await startServer();
  nginx = await startNginx(server.addr);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (nginx) await nginx.stop();
  if (server) await server.stop();
});

/** A browser context that accepts the test's certificate (no network CA is involved). */
async function page() {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(10000);
  const p = await context.newPage();
  // The WebSocket handshake as the browser saw it (DevTools protocol): URL and extension.
  p.sockets = [];
  const cdp = await context.newCDPSession(p);
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketCreated', (e) => p.sockets.push({ url: e.url }));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const headers = Object.fromEntries(Object.entries(e.response.headers).map(([k, v]) => [k.toLowerCase(), v]));
    p.extensions = headers['sec-websocket-extensions'] || '';
  });
  return p;
}

async function login(p, name) {
  await p.goto(`${nginx.base}/demo/`);
  await p.locator('#login-name').fill(name);
  await p.getByRole('button', { name: 'Log in' }).click();
  await waitText(p.locator('#conn'), 'Online');
  return Number((await p.locator('#me-name').textContent()).match(/#(\d+)/)[1]);
}

test('Chromium chats over wss through nginx with permessage-deflate', async () => {
  const ann = await page();
  const annUid = await login(ann, 'Ann');
  const ben = await page();
  const benUid = await login(ben, 'Ben');
  // wss:// through the proxy, compressed.
  assert.ok(ann.sockets.some((s) => s.url.startsWith('wss://127.0.0.1:')), JSON.stringify(ann.sockets));
  await until('the handshake', () => ann.extensions !== undefined);
  assert.match(ann.extensions, /permessage-deflate/);
  // Ben writes a long message (compressed on the way); Ann opens the conversation and reads it.
  const long = 'through nginx, compressed on the way: '.repeat(20);
  const annItem = ben.locator(`[data-testid="friend-${annUid}"]`);
  await waitText(annItem, 'online');
  await annItem.click();
  await ben.locator('#text').fill(long);
  await ben.locator('#text').press('Enter');
  const conv = annUid < benUid ? `p_${annUid}_${benUid}` : `p_${benUid}_${annUid}`;
  const convItem = ann.locator(`[data-testid="conv-${conv}"]`);
  await waitText(convItem, 'Ben');
  await convItem.click();
  await ann.locator('#messages li.msg').filter({ hasText: 'through nginx' }).first().waitFor();
  await screenshot(ann, 'demo-through-nginx');
});
