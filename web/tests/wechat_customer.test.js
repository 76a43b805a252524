// A WeChat mini-program user asks customer service through WeChat's own chat (message push,
// protocol-spec 4.3): the agent console shows a WeChat user, and the agent's reply goes out
// through the customer-service API with its delivery reported on the message (wx_delivery).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, newPage, screenshot, waitText, startFakeWechat, wechatAppToml, wechatPush } from './helpers.js';

const PUSH_TOKEN = 'mptoken';

let server;
let browser;
let fake;

before(async () => {
  fake = await startFakeWechat();
  server = await startServer(`[wechat]\ntimeout_ms = 3000\n${wechatAppToml(fake, 'mp', 'miniprogram', PUSH_TOKEN)}`);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (fake) fake.close();
  if (server) await server.stop();
});

test('a WeChat user is served from the console; the reply is delivered through WeChat', async () => {
  // The agent signs in with a token pasted from elsewhere (here a demo login made outside the
  // browser, as a business backend's doLogin would be).
  const res = await fetch(`${server.base}/api/demo/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: 'Eve', user_type: 1 }),
  });
  const { token } = (await res.json()).data;
  const agent = await newPage(browser);
  await agent.goto(`${server.base}/agent/`);
  await agent.locator('#login-token').fill(token);
  await agent.getByRole('button', { name: 'Use token' }).click();
  await waitText(agent.locator('#conn'), 'Online');
  await waitText(agent.locator('#me-name'), 'Eve');

  // The user opens the mini-program's customer-service chat and writes.
  const from = { ToUserName: 'gh_mp', FromUserName: 'o-wx-user-1' };
  let r = await wechatPush(server, 'mp', PUSH_TOKEN, { ...from, MsgType: 'event', Event: 'user_enter_tempsession', SessionFrom: 'order-42' });
  assert.equal(r.status, 200, r.text);
  r = await wechatPush(server, 'mp', PUSH_TOKEN, { ...from, MsgType: 'text', Content: 'Where is my parcel?', MsgId: '990001' });
  assert.equal(r.status, 200, r.text);

  const customer = agent.locator('#sessions button.item').first();
  await customer.click();
  await waitText(agent.locator('#messages .msg.theirs'), 'Where is my parcel?');
  await waitText(agent.locator('#messages .msg.theirs'), 'WeChat: user_enter_tempsession (order-42)');
  await waitText(agent.locator('#chat-info'), 'WeChat user');

  // The reply leaves through cgi-bin/message/custom/send; the console says it was delivered.
  const sent = fake.nextSent();
  await agent.locator('#text').fill('It left the warehouse today');
  await agent.locator('#text').press('Enter');
  const body = await sent;
  assert.deepEqual(body, { touser: 'o-wx-user-1', msgtype: 'text', text: { content: 'It left the warehouse today' } });
  await waitText(agent.locator('#messages .msg.mine .status'), 'delivered to WeChat');
  await screenshot(agent, 'agent-wechat-customer');

  // On a phone the console shows one pane at a time.
  await agent.setViewportSize({ width: 390, height: 844 });
  assert.equal(await agent.locator('nav.side').isVisible(), false);
  await screenshot(agent, 'agent-phone-chat-390x844');
  await agent.getByRole('button', { name: 'Back to the list' }).click();
  await agent.locator('nav.side').waitFor();
  assert.equal(await agent.locator('#chat').isVisible(), false);
  await screenshot(agent, 'agent-phone-list-390x844');
  assert.deepEqual(agent.problems, []);
});
