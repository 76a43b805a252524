// QR-code login: the page shows WeChat's code (the image fails gracefully offline), a
// simulated scan arrives as WeChat's subscribe push, and the page shows who logged in; the
// token then opens the chat demo. A fake WeChat API (JS, below) stands in for api.weixin.qq.com.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { startServer, launch, newPage, screenshot, waitText } from './helpers.js';

const APPID = 'wx0123456789abcdef';
const SECRET = 'fake-app-secret';
const CALLBACK_TOKEN = 'qrtoken';

let server;
let browser;
let fake;
/** Resolvers of the next qrcode/create call: each gets the scene_str the server asked for. */
const sceneWaiters = [];

/** The WeChat endpoints wxchat calls for a QR login, answered as WeChat does. */
function fakeWechat() {
  return http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      const json = (v) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(v));
      };
      if (url.pathname === '/cgi-bin/stable_token' && req.method === 'POST') {
        const b = JSON.parse(body || '{}');
        if (b.appid !== APPID || b.secret !== SECRET) return json({ errcode: 40125, errmsg: 'invalid appsecret' });
        return json({ access_token: 'T', expires_in: 7200 });
      }
      if (url.pathname === '/cgi-bin/qrcode/create' && req.method === 'POST') {
        const scene = JSON.parse(body).action_info.scene.scene_str;
        json({ ticket: `gQ-${scene}`, expire_seconds: 120, url: `http://weixin.qq.com/q/${scene}` });
        for (const w of sceneWaiters.splice(0)) w(scene);
        return undefined;
      }
      if (url.pathname === '/cgi-bin/user/info' && req.method === 'GET') {
        // An older account that still gets nicknames (4.2).
        return json({ subscribe: 1, openid: url.searchParams.get('openid'), nickname: 'Lily', headimgurl: 'https://thirdwx.qlogo.cn/mmopen/lily/132' });
      }
      res.writeHead(404);
      res.end();
      return undefined;
    });
  });
}

before(async () => {
  fake = fakeWechat();
  await new Promise((r) => fake.listen(0, '127.0.0.1', r));
  server = await startServer(`[wechat]
timeout_ms = 3000
[[wechat.apps]]
name = "oa"
kind = "official"
appid = "${APPID}"
secret = "${SECRET}"
token = "${CALLBACK_TOKEN}"
api_base = "http://127.0.0.1:${fake.address().port}"
`);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (fake) fake.close();
  if (server) await server.stop();
});

/** WeChat's push of a follow by scanning: plaintext mode, signed as in 4.1. */
async function pushSubscribe(ticket, openid) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = String(Math.floor(Math.random() * 1e9));
  const signature = createHash('sha1').update([CALLBACK_TOKEN, timestamp, nonce].sort().join('')).digest('hex');
  const xml = `<xml><ToUserName><![CDATA[gh_oa]]></ToUserName><FromUserName><![CDATA[${openid}]]></FromUserName>`
    + `<CreateTime>${timestamp}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>`
    + `<EventKey><![CDATA[qrscene_${ticket}]]></EventKey><Ticket><![CDATA[gQ-wechat]]></Ticket></xml>`;
  const res = await fetch(`${server.base}/wechat/oa/callback?signature=${signature}&timestamp=${timestamp}&nonce=${nonce}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/xml' },
    body: xml,
  });
  return { status: res.status, text: await res.text() };
}

test('the QR page logs in when the scan arrives, and the chat demo opens as that user', async () => {
  const page = await newPage(browser, { viewport: { width: 480, height: 800 } });
  const created = new Promise((r) => sceneWaiters.push(r));
  await page.goto(`${server.base}/qrlogin/`);
  const ticket = await created;
  assert.match(ticket, /^[0-9a-f]{32}$/);

  // No network: WeChat's image fails, the page says so and keeps waiting for the scan.
  await page.locator('#qr-fallback').waitFor();
  assert.match(await page.locator('#qr-link').getAttribute('href'), /^https:\/\/mp\.weixin\.qq\.com\/cgi-bin\/showqrcode\?ticket=/);
  await waitText(page.locator('#expires'), 'expires in');
  await screenshot(page, 'qrlogin-waiting');

  const r = await pushSubscribe(ticket, 'oa-user-lily');
  assert.equal(r.status, 200);
  assert.match(r.text, /Lily，登录成功/);

  await waitText(page.locator('#user'), 'Lily');
  const shown = await page.locator('#user').textContent();
  assert.match(shown, /^Lily \(uid \d+\) · new account$/);
  await screenshot(page, 'qrlogin-done');

  // The token was kept for this tab: the demo opens logged in as Lily.
  await page.getByRole('link', { name: 'Open the chat demo' }).click();
  await waitText(page.locator('#conn'), 'Online');
  await waitText(page.locator('#me-name'), 'Lily');
  assert.deepEqual(page.problems, []);
});
