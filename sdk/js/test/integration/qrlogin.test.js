// Official-account QR login through the real server: QrLogin gets qrcode_url, the test plays
// WeChat pushing the SCAN event to the callback (plaintext, signed), QrLogin resolves with
// scan_success, and its token opens a chat connection.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { QrLogin, WxChat, memoryStorage } from '../../src/index.js';
import { TestServer } from '../helpers/server.js';
import { startFakeWechat } from '../helpers/fake-wechat.js';
import { nextEvent } from '../helpers/wait.js';

const PUSH_TOKEN = 'qrtoken';
const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

test('QrLogin: qrcode_url, then the scan pushed by WeChat gives scan_success with a working token', { timeout: 30000 }, async () => {
  const wechat = await startFakeWechat();
  cleanups.push(() => wechat.close());
  const server = new TestServer(`[wechat]\ntimeout_ms = 2000\n${wechat.officialToml('oa', PUSH_TOKEN)}`);
  cleanups.push(() => server.stop());
  await server.start();

  const qr = new QrLogin({ url: `ws://${server.addr}/ws/qrlogin`, app: 'oa', WebSocket });
  cleanups.push(() => qr.close());
  const shown = nextEvent(qr, 'qrcode_url');
  const done = qr.start();
  const code = await shown;
  assert.match(code.url, /^https:\/\/mp\.weixin\.qq\.com\/cgi-bin\/showqrcode\?ticket=/);
  assert.equal(wechat.scenes.length, 1);
  const ticket = wechat.scenes[0];

  // WeChat's SCAN push for that ticket, signed with the account's token (4.1).
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = '12345';
  const signature = crypto.createHash('sha1').update([PUSH_TOKEN, timestamp, nonce].sort().join('')).digest('hex');
  const xml = `<xml><ToUserName><![CDATA[gh_oa]]></ToUserName><FromUserName><![CDATA[o-qr-user]]></FromUserName><CreateTime>${timestamp}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[${ticket}]]></EventKey><Ticket><![CDATA[gQ-wechat-ticket]]></Ticket></xml>`;
  const res = await fetch(`${server.httpUrl}/wechat/oa/callback?signature=${signature}&timestamp=${timestamp}&nonce=${nonce}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/xml' },
    body: xml,
  });
  assert.equal(res.status, 200, await res.text());

  const ok = await done;
  assert.equal(ok.message_type, 'scan_success');
  assert.match(ok.token, /^[0-9a-f]{64}$/);
  const chat = new WxChat({ url: server.wsUrl, token: ok.token, WebSocket, storage: memoryStorage() });
  cleanups.push(() => chat.close());
  await chat.connect();
  assert.equal(chat.uid, ok.user.uid);
});
