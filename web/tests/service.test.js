// Customer service end to end in two browser contexts: a visitor on another site's page (the
// widget's iframe, cross-origin) and an agent in the console.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer, launch, newPage, screenshot, waitText, testPng } from './helpers.js';

let server;
let browser;
let host; // the website that embeds the widget, on another origin (localhost vs 127.0.0.1)

before(async () => {
  server = await startServer();
  browser = await launch();
  host = http.createServer((req, res) => {
    const port = server.addr.split(':')[1];
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shop</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>A shop that embeds wxchat</h1><p>Products…</p>
<script src="http://127.0.0.1:${port}/widget.js" async></script></body></html>`);
  });
  await new Promise((r) => host.listen(0, '127.0.0.1', r));
});

after(async () => {
  if (browser) await browser.close();
  if (host) host.close();
  if (server) await server.stop();
});

test('a visitor on another site is queued, served, sends an image, rates; the agent sees it all', async () => {
  const visitor = await newPage(browser);
  await visitor.goto(`http://localhost:${host.address().port}/`);
  await visitor.locator('button[data-wxchat="button"]').click();
  const frame = visitor.frameLocator('iframe[data-wxchat="frame"]');

  // No agent is online: the first message opens a session that waits in the queue.
  await frame.locator('#text').fill('Hello, is my order shipped?');
  await frame.locator('#text').press('Enter');
  await waitText(frame.locator('#messages .msg.mine'), 'Hello, is my order shipped?');
  await waitText(frame.locator('#state'), 'number 1 in the queue');
  const visitorUid = await visitor.evaluate(() => {
    const f = document.querySelector('iframe[data-wxchat="frame"]');
    return f.src;
  });
  assert.match(visitorUid, /\/widget\/$/);

  // The agent logs in (demo login, user_type 1): available on connect, so the queue is served.
  const agent = await newPage(browser);
  await agent.goto(`${server.base}/agent/`);
  await agent.locator('#login-name').fill('Alice');
  await agent.getByRole('button', { name: 'Log in as agent' }).click();
  await waitText(agent.locator('#conn'), 'Online');
  await waitText(frame.locator('#messages'), 'An agent joined the chat.');
  await waitText(frame.locator('#state'), 'An agent is with you');

  const customer = agent.locator('#sessions button.item').first();
  await customer.waitFor();
  await customer.click();
  await waitText(agent.locator('#messages .msg.theirs'), 'Hello, is my order shipped?');
  // The customer's profile: an anonymous web visitor.
  await waitText(agent.locator('#chat-info'), 'Web visitor');
  await waitText(customer, '访客');

  // Typing reaches the visitor; the reply too.
  await agent.locator('#text').fill('Hi! Let me check');
  await waitText(frame.locator('#typing'), 'typing');
  await agent.locator('#text').press('Enter');
  await waitText(frame.locator('#messages .msg.theirs'), 'Hi! Let me check');

  // The visitor sends a picture: uploaded, then shown to the agent as an image.
  await frame.locator('#file').setInputFiles({ name: 'receipt.png', mimeType: 'image/png', buffer: testPng() });
  const img = agent.locator('#messages .msg.theirs img.media-image');
  await img.waitFor();
  assert.match(await img.getAttribute('src'), /^\/files\/[0-9a-f]{64}\.png$/);
  await frame.locator('#messages .msg.mine img.media-image').waitFor();
  await screenshot(agent, 'agent-console');
  await screenshot(visitor, 'widget-on-host-page');

  // The agent closes; the visitor is asked to rate and rates 4 stars with a comment.
  await agent.getByRole('button', { name: 'Close session' }).click();
  await waitText(frame.locator('#messages'), 'The agent ended the chat.');
  await frame.locator('#rate').waitFor();
  await frame.locator('label[for="r4"]').click();
  await frame.locator('#comment').fill('quick and kind');
  await frame.getByRole('button', { name: 'Send rating' }).click();
  await waitText(frame.locator('#messages'), 'Thank you for your rating (4/5).');

  // The agent sees the rating among the closed sessions.
  const closed = agent.locator('#closed li.closed-item').first();
  await waitText(closed, '“quick and kind”');
  assert.equal(await closed.locator('.stars').getAttribute('aria-label'), 'rated 4 of 5');
  await screenshot(agent, 'agent-console-rated');

  // A returning visitor (reload) keeps their conversation: the same messages, from history.
  await visitor.reload();
  await visitor.locator('button[data-wxchat="button"]').click();
  await waitText(frame.locator('#messages .msg.mine'), 'Hello, is my order shipped?');
  await waitText(frame.locator('#messages .msg.theirs'), 'Hi! Let me check');

  assert.deepEqual(visitor.problems, []);
  assert.deepEqual(agent.problems, []);
  await visitor.context().close();
  await agent.context().close();
});

test('a visitor who logs in on the host site becomes that user, on a phone; the agent follows; unread badge', async () => {
  const agent = await newPage(browser);
  await agent.goto(`${server.base}/agent/`);
  await agent.locator('#login-name').fill('Dora');
  await agent.getByRole('button', { name: 'Log in as agent' }).click();
  await waitText(agent.locator('#conn'), 'Online');

  const visitor = await newPage(browser, { viewport: { width: 390, height: 844 } });
  await visitor.goto(`http://localhost:${host.address().port}/`);
  await visitor.locator('button[data-wxchat="button"]').click();
  const frame = visitor.frameLocator('iframe[data-wxchat="frame"]');
  await frame.locator('#text').fill('I have an account, actually');
  await frame.locator('#text').press('Enter');
  await waitText(frame.locator('#messages'), 'An agent joined the chat.');
  const visitorItem = agent.locator('#sessions button.item').first();
  await visitorItem.click();
  await waitText(agent.locator('#messages .msg.theirs'), 'I have an account, actually');
  await screenshot(visitor, 'widget-phone-390x844');

  // The host site's backend logged the visitor in (here: a demo login) and hands the token
  // to the widget; the conversation moves to that user.
  const res = await fetch(`${server.base}/api/demo/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: 'Carol' }),
  });
  const carol = (await res.json()).data;
  await visitor.evaluate((token) => window.WxChatWidget.login(token), carol.token);
  await waitText(agent.locator('#chat-status'), `logged in as user #${carol.uid}`);
  await agent.locator(`[data-testid="customer-${carol.uid}"]`).waitFor();
  await waitText(agent.locator('#chat-info'), `uid ${carol.uid}`);
  await waitText(agent.locator('#messages .msg.theirs'), 'I have an account, actually');

  // The widget now chats as Carol, in the same session.
  await waitText(frame.locator('#messages .msg.mine'), 'I have an account, actually');
  await frame.locator('#text').fill('thanks, logged in now');
  await frame.locator('#text').press('Enter');
  await waitText(agent.locator('#messages .msg.theirs'), 'thanks, logged in now');
  await waitText(agent.locator(`[data-testid="customer-${carol.uid}"]`), 'Carol');

  // The box closed (Escape), a reply arrives: the host page's button shows it unread.
  await frame.locator('#text').press('Escape');
  const badge = visitor.locator('[data-wxchat="badge"]');
  await agent.locator('#text').fill('a reply while the box is closed');
  await agent.locator('#text').press('Enter');
  await waitText(badge, '1');
  await visitor.locator('button[data-wxchat="button"]').click();
  await waitText(frame.locator('#messages .msg.theirs'), 'a reply while the box is closed');
  await badge.waitFor({ state: 'hidden' });

  assert.deepEqual(visitor.problems, []);
  assert.deepEqual(agent.problems, []);
  await visitor.context().close();
  await agent.context().close();
});

test('the sample shop page of the index embeds the widget same-origin', async () => {
  const page = await newPage(browser, { viewport: { width: 390, height: 844 } });
  await page.goto(`${server.base}/`);
  await page.getByRole('link', { name: 'Visitor widget' }).click();
  await page.waitForURL('**/widget-demo/');
  await page.locator('button[data-wxchat="button"]').click();
  const frame = page.frameLocator('iframe[data-wxchat="frame"]');
  await frame.locator('#text').waitFor();
  await waitText(frame.locator('#state'), 'Ask us anything');
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
