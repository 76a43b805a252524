// The agent console beyond one session: two agents, a customer waiting while both are away and
// accepted by hand, a transfer, every media type rendered, and a timed consultation with its
// remaining time, its end and the 410 that follows.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launch, newPage, screenshot, waitText, serverApi } from './helpers.js';

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

async function agentLogin(name) {
  const page = await newPage(browser);
  await page.goto(`${server.base}/agent/`);
  await page.locator('#login-name').fill(name);
  await page.getByRole('button', { name: 'Log in as agent' }).click();
  await waitText(page.locator('#conn'), 'Online');
  const uid = Number((await page.locator('#me-name').textContent()).match(/#(\d+)/)[1]);
  return { page, uid };
}

async function setStatus(page, status) {
  await page.locator('#status').selectOption(status);
  await waitText(page.locator('#chat-status'), status === 'away' ? 'Away:' : 'Available for new customers');
}

test('away agents, accept from the queue, transfer, media types, a timed consultation, unread counts', async () => {
  const alice = await agentLogin('Alice');
  const bob = await agentLogin('Bob');
  await setStatus(alice.page, 'away');
  await setStatus(bob.page, 'away');

  // A visitor writes while nobody takes new customers: queued, seen in both queues.
  const visitor = await newPage(browser);
  await visitor.goto(`${server.base}/widget/`);
  await visitor.locator('#text').fill('anyone there?');
  await visitor.locator('#text').press('Enter');
  await waitText(visitor.locator('#state'), 'number 1 in the queue');
  const waiting = alice.page.locator('#queue button.item').first();
  await waitText(waiting, '1.');
  await waitText(bob.page.locator('#queue-count'), '1');

  // Alice reads the waiting customer's message before accepting, then accepts.
  await waiting.click();
  await waitText(alice.page.locator('#messages .msg.theirs'), 'anyone there?');
  await alice.page.getByRole('button', { name: 'Accept' }).click();
  await alice.page.locator('#composer').waitFor();
  await waitText(visitor.locator('#messages'), 'An agent joined the chat.');
  await waitText(bob.page.locator('#queue'), 'Nobody is waiting');
  const testid = await alice.page.locator('#sessions button.item').first().getAttribute('data-testid');
  const customerUid = Number(testid.replace('customer-', ''));

  // Bob becomes available; Alice transfers the customer to him.
  await setStatus(bob.page, 'available');
  await alice.page.locator('#transfer-to').fill(String(bob.uid));
  await alice.page.getByRole('button', { name: 'Transfer' }).click();
  await waitText(alice.page.locator('#chat-status'), `Transferred to agent #${bob.uid}`);
  await waitText(alice.page.locator('#sessions'), 'No open sessions');
  await waitText(bob.page.locator('#chat-status'), `transferred to you by #${alice.uid}`);
  const bobsCustomer = bob.page.locator(`[data-testid="customer-${customerUid}"]`);
  await bobsCustomer.click();
  await waitText(bob.page.locator('#messages .msg.theirs'), 'anyone there?');

  // Voice, video, file and link messages from the customer, as a mini-program would send them
  // (a second WebSocket of the visitor, opened in the visitor's page), rendered playable /
  // downloadable at the agent's.
  const media = [
    { msg_type: 2, msg: { url: '/files/aa.mp3', duration: 3 } },
    { msg_type: 3, msg: { url: '/files/bb.mp4', duration: 5 } },
    { msg_type: 5, msg: { url: '/files/cc.pdf', name: 'invoice.pdf', size: 2048 } },
    { msg_type: 6, msg: { url: 'https://example.com/order/1', title: 'Order #1' } },
  ];
  const acks = await visitor.evaluate(async (msgs) => {
    const { token } = JSON.parse(localStorage.getItem('wxchat-visitor'));
    const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`);
    const codes = [];
    const done = new Promise((resolve) => {
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.cmd === 'send' && codes.push(f.code) === msgs.length) resolve();
      };
    });
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    msgs.forEach((m, i) => ws.send(JSON.stringify({ cmd: 'send', req_id: i + 1, chat_type: 2, to_id: 0, ...m })));
    await done;
    ws.close();
    return codes;
  }, media);
  assert.deepEqual(acks, [200, 200, 200, 200]);
  const theirs = bob.page.locator('#messages .msg.theirs');
  await theirs.locator('audio[controls][src="/files/aa.mp3"]').waitFor({ state: 'attached' });
  await theirs.locator('video[controls][src="/files/bb.mp4"]').waitFor({ state: 'attached' });
  await waitText(theirs.locator('a.file[href="/files/cc.pdf"]'), 'invoice.pdf (2.0 KB)');
  await waitText(theirs.locator('a.card[href="https://example.com/order/1"]'), 'Order #1');
  await screenshot(bob.page, 'agent-media-types');

  // A timed consultation between Bob (user) and Alice (consultant): both online, so it runs.
  const consult = await serverApi(server, 'consult_create', { user: bob.uid, consultant: alice.uid, seconds: 600 });
  const item = alice.page.locator(`[data-testid="consult-${consult.consult_id}"]`);
  // Names come only with conversation lists (2.5), which carry none for consultations.
  await waitText(item, `with #${bob.uid}`);
  await item.click();
  await waitText(alice.page.locator('#consult-bar'), 'of 10:00 · running');
  await alice.page.locator('#text').fill('Your consultation starts now');
  await alice.page.locator('#text').press('Enter');
  await waitText(bob.page.locator(`[data-testid="consult-${consult.consult_id}"] .badge`), '1');
  await screenshot(alice.page, 'agent-consultation');

  // The business backend ends it: the bar says so and a message is refused (410).
  await serverApi(server, 'consult_end', { consult_id: consult.consult_id });
  await waitText(alice.page.locator('#consult-bar'), 'time is used up');
  await alice.page.locator('#text').fill('one more thing');
  await alice.page.locator('#text').press('Enter');
  await waitText(alice.page.locator('#messages li.failed'), 'not sent');

  // Unread counts: Bob looks at the consultation while the customer writes again.
  await bob.page.locator(`[data-testid="consult-${consult.consult_id}"]`).click();
  await waitText(bob.page.locator('#chat-title'), `Consultation #${consult.consult_id}`);
  await visitor.locator('#text').fill('still there?');
  await visitor.locator('#text').press('Enter');
  await waitText(bobsCustomer.locator('.badge'), '1');
  await waitText(bobsCustomer.locator('.sub'), 'still there?');
  await bobsCustomer.click();
  await waitText(bob.page.locator('#messages .msg.theirs'), 'still there?');
  assert.equal(await bobsCustomer.locator('.badge').count(), 0);

  for (const p of [alice.page, bob.page, visitor]) assert.deepEqual(p.problems, []);
});
