// QR-code login: the page shows WeChat's code (the image fails gracefully offline), a
// simulated scan arrives as WeChat's subscribe push, and the page shows who logged in; the
// token then opens the chat demo. A fake WeChat API (JS, helpers.js) stands in for api.weixin.qq.com.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, newPage, screenshot, waitText, startFakeWechat, wechatAppToml, wechatPush } from './helpers.js';

const CALLBACK_TOKEN = 'qrtoken';

let server;
let browser;
let fake;

before(async () => {
  fake = await startFakeWechat();
  server = await startServer(`[wechat]\ntimeout_ms = 3000\n${wechatAppToml(fake, 'oa', 'official', CALLBACK_TOKEN)}`);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (fake) fake.close();
  if (server) await server.stop();
});

/** WeChat's push of a follow by scanning the code of `ticket` (the scene_str). */
function pushSubscribe(ticket, openid) {
  return wechatPush(server, 'oa', CALLBACK_TOKEN, {
    ToUserName: 'gh_oa',
    FromUserName: openid,
    MsgType: 'event',
    Event: 'subscribe',
    EventKey: `qrscene_${ticket}`,
    Ticket: 'gQ-wechat',
  });
}

test('the QR page logs in when the scan arrives, and the chat demo opens as that user', async () => {
  const page = await newPage(browser, { viewport: { width: 480, height: 800 } });
  const created = fake.nextScene();
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

test('an unscanned code expires; the page offers a new one', async () => {
  const quick = await startServer(`[wechat]\ntimeout_ms = 3000\nqr_expire_s = 1\n${wechatAppToml(fake, 'oa', 'official', CALLBACK_TOKEN)}`);
  try {
    const page = await newPage(browser);
    await page.goto(`${quick.base}/qrlogin/`);
    await waitText(page.locator('#status'), 'The code expired.');
    const next = fake.nextScene();
    await page.getByRole('button', { name: 'Get a new code' }).click();
    await next;
    // The new code (also of one second) runs its course the same way.
    await page.locator('#again').waitFor({ state: 'hidden' });
    await waitText(page.locator('#status'), 'The code expired.');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  } finally {
    await quick.stop();
  }
});
