// The chat demo with two users in two browser contexts: friend chat with unread counts, names,
// read receipts, typing, presence, uploads, recall, a group, history pages on scroll, and a page
// reload in the middle (messages sent meanwhile arrive once, history shows the earlier ones).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, newPage, screenshot, waitText, testPng, serverApi } from './helpers.js';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function login(page, name, { viaIndex = false } = {}) {
  if (viaIndex) {
    // The index lists the pages; the demo is one click away.
    await page.goto(`${server.base}/`);
    await screenshot(page, 'index');
    await page.getByRole('link', { name: 'Chat demo' }).click();
    await page.waitForURL('**/demo/');
  } else {
    await page.goto(`${server.base}/demo/`);
  }
  await screenshot(page, 'demo-login');
  await page.locator('#login-name').fill(name);
  await page.getByRole('button', { name: 'Log in' }).click();
  await waitText(page.locator('#conn'), 'Online');
  return Number((await page.locator('#me-name').textContent()).match(/#(\d+)/)[1]);
}

/** The rows of a conversation holding `text`: exactly one is expected. */
function rows(page, text) {
  return page.locator('#messages li.msg').filter({ hasText: text });
}

test('two users chat, a reload in the middle loses and repeats nothing, a group, history on scroll', async () => {
  const ann = await newPage(browser);
  const annUid = await login(ann, 'Ann', { viaIndex: true });
  // Ben on a phone-sized screen: one pane at a time.
  const ben = await newPage(browser, { viewport: { width: 390, height: 844 } });
  const benUid = await login(ben, 'Ben');
  const conv = annUid < benUid ? `p_${annUid}_${benUid}` : `p_${benUid}_${annUid}`;

  // Demo users are friends: Ben sees Ann, online.
  const annItem = ben.locator(`[data-testid="friend-${annUid}"]`);
  await waitText(annItem, 'online');
  await annItem.click();
  for (const text of ['hello 1', 'hello 2']) {
    await ben.locator('#text').fill(text);
    await ben.locator('#text').press('Enter');
    await rows(ben, text).locator('.status').filter({ hasText: 'Sent' }).waitFor();
  }

  // Ann gets the conversation with two unread and Ben's name, opens it, reads it.
  const convItem = ann.locator(`[data-testid="conv-${conv}"]`);
  await waitText(convItem, 'Ben');
  await waitText(convItem.locator('.badge'), '2');
  await convItem.click();
  await rows(ann, 'hello 2').waitFor();
  await rows(ben, 'hello 2').locator('.status').filter({ hasText: 'Read' }).waitFor();
  assert.equal(await convItem.locator('.badge').count(), 0, 'read: no unread badge');

  // Typing shows on the other side.
  await ann.locator('#text').fill('typing here');
  await waitText(ben.locator('#typing'), 'Ann is typing');
  await ann.locator('#text').press('Enter');
  await rows(ben, 'typing here').waitFor();

  // Ben leaves the page; Ann writes meanwhile; Ben comes back to the same conversation.
  await ben.goto('about:blank');
  await ann.locator('#text').fill('while you were away');
  await ann.locator('#text').press('Enter');
  await rows(ann, 'while you were away').locator('.status').waitFor();
  await ben.goto(`${server.base}/demo/#${conv}`);
  await waitText(ben.locator('#conn'), 'Online');
  await rows(ben, 'while you were away').waitFor();
  await rows(ben, 'hello 1').waitFor();
  // And a plain reload.
  await ben.reload();
  await waitText(ben.locator('#conn'), 'Online');
  await rows(ben, 'while you were away').waitFor();
  await ann.locator('#text').fill('after the reload');
  await ann.locator('#text').press('Enter');
  await rows(ben, 'after the reload').waitFor();
  for (const text of ['hello 1', 'hello 2', 'typing here', 'while you were away', 'after the reload']) {
    assert.equal(await rows(ben, text).count(), 1, `"${text}" shown once after the reload`);
  }

  // An image from Ben, then Ben recalls "hello 2": Ann sees both.
  await ben.locator('#file').setInputFiles({ name: 'pic.png', mimeType: 'image/png', buffer: testPng() });
  await ann.locator('#messages .msg.theirs img.media-image').waitFor();
  // And a file: a download link with its name and size.
  await ben.locator('#file').setInputFiles({ name: 'notes.pdf', mimeType: 'application/pdf', buffer: Buffer.from('%PDF-1.4\n%%EOF\n') });
  const link = ann.locator('#messages .msg.theirs a.file');
  await waitText(link, 'File: notes.pdf (15 B)');
  assert.match(await link.getAttribute('href'), /^\/files\/[0-9a-f]{64}\.pdf$/);
  await rows(ben, 'hello 2').getByRole('button', { name: 'Recall' }).click();
  await ann.locator('#messages li.msg .recalled').waitFor();
  assert.equal(await rows(ann, 'hello 2').count(), 0);
  await screenshot(ann, 'demo-desktop');
  await screenshot(ben, 'demo-phone-390x844');

  // A group: Ann creates it with Ben and writes; Ben finds it in his list with the message.
  await ann.locator('#group-name').fill('Trip');
  await ann.locator('#group-members label').filter({ hasText: 'Ben' }).locator('input').check();
  await ann.getByRole('button', { name: 'Create group' }).click();
  await waitText(ann.locator('#chat-title'), 'Trip (group)');
  await ann.locator('#text').fill('group hello');
  await ann.locator('#text').press('Enter');
  await ben.locator('#back').click();
  const groupItem = ben.locator('#convs button.item').filter({ hasText: 'Trip (group)' });
  await waitText(groupItem.locator('.badge'), '1');
  await groupItem.click();
  await waitText(rows(ben, 'group hello').locator('.meta'), 'Ann');
  // Group receipts are counted on request (read_count), not pushed: 0 or 1 of 1 by now.
  await rows(ann, 'group hello').locator('.status').filter({ hasText: /^Read by [01]\/1$/ }).waitFor();

  // History on scroll: 45 more messages from Ann (server API), Ben opens the chat and scrolls up.
  for (let i = 1; i <= 45; i++) {
    await serverApi(server, 'send', { from_id: annUid, chat_type: 0, to_id: benUid, msg_type: 0, msg: `bulk ${i}` });
  }
  await ben.locator('#back').click();
  await ben.locator(`[data-testid="conv-${conv}"]`).click();
  await rows(ben, 'bulk 45').waitFor();
  assert.equal(await rows(ben, 'bulk 10').count(), 0, 'only the newest page at first');
  await ben.locator('#scroll').evaluate((el) => { el.scrollTop = 0; });
  await rows(ben, 'bulk 10').waitFor();
  await ben.locator('#scroll').evaluate((el) => { el.scrollTop = 0; });
  await rows(ben, 'hello 1').waitFor();

  // Presence: Ben closes his page, Ann's list shows him offline.
  await ben.context().close();
  await waitText(ann.locator(`[data-testid="conv-${conv}"] .dot`).and(ann.locator('[title="offline"]')), '', 10000);

  assert.deepEqual(ann.problems, []);
});
