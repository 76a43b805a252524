// Two users chat through the real server while it is kill -9'ed and restarted on the same
// port: every send promise resolves, and both sides see every message exactly once, in seq
// order, with no gap.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { WxChat, memoryStorage } from '../../src/index.js';
import { TestServer } from '../helpers/server.js';
import { until, nextEvent } from '../helpers/wait.js';

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

test('kill -9 and restart on the same port while both users keep sending: exactly once, in order, on both sides', { timeout: 120000 }, async (t) => {
  const server = new TestServer();
  servers.push(server);
  await server.start();
  const a = await server.api('user', { app_uid: 'alice' });
  const b = await server.api('user', { app_uid: 'bob' });
  await server.api('friend_add', { uid: a.uid, friend_id: b.uid });
  const convId = `p_${Math.min(a.uid, b.uid)}_${Math.max(a.uid, b.uid)}`;

  const opts = { url: server.wsUrl, WebSocket, backoffBase: 50, backoffCap: 500, requestTimeout: 5000 };
  const users = [
    { name: 'a', me: a, peer: b, chat: new WxChat({ ...opts, token: a.token, storage: memoryStorage() }) },
    { name: 'b', me: b, peer: a, chat: new WxChat({ ...opts, token: b.token, storage: memoryStorage() }) },
  ];
  for (const u of users) {
    u.got = [];
    u.acks = [];
    u.states = [];
    u.chat.on('message', (m) => u.got.push(m));
    u.chat.on('state', (s) => u.states.push(s));
  }
  try {
    await Promise.all(users.map((u) => u.chat.connect()));

    const WINDOW = 6;
    let killed = false;
    let markKilled;
    const killedP = new Promise((r) => (markKilled = r));
    let markRestarted;
    const restartedP = new Promise((r) => (markRestarted = r));
    const senders = users.map(async (u) => {
      const outstanding = [];
      u.issued = 0;
      u.whileDown = 0;
      const issue = () => {
        const msg = `${u.name}-${u.issued++}`;
        outstanding.push(u.chat.send({ chat_type: 0, to_id: u.peer.uid, msg_type: 0, msg }).then((ack) => u.acks.push(ack)));
      };
      // Until the kill: a window of WINDOW unacknowledged sends, so the kill lands mid-stream.
      while (!killed) {
        issue();
        if (outstanding.length >= WINDOW) await Promise.race([outstanding[outstanding.length - WINDOW], killedP]);
      }
      // While the server is down: more sends, which wait in the outbox.
      for (let k = 0; k < 5; k++, u.whileDown++) issue();
      await restartedP;
      for (let k = 0; k < 20; k++) {
        issue();
        await outstanding[outstanding.length - WINDOW];
      }
      await Promise.all(outstanding);
    });

    await until(() => users.every((u) => u.acks.length >= 15), { what: '15 acks each before the kill' });
    const down = users.map((u) => nextEvent(u.chat, 'state', { pred: (s) => s === 'disconnected' }));
    await server.kill9();
    killed = true;
    for (const u of users) u.ackedBeforeKill = u.acks.length;
    markKilled();
    await Promise.all(down);
    await until(() => users.every((u) => u.whileDown === 5), { what: 'sends issued while the server is down' });
    for (const u of users) assert.ok(u.chat.pending().length >= 5, `${u.name}: sends wait in the outbox during the outage`);
    await server.restartSamePort();
    markRestarted();
    await Promise.all(senders);

    const total = users[0].issued + users[1].issued;
    t.diagnostic(`sent ${users[0].issued} + ${users[1].issued}; acked before the kill: ${users.map((u) => u.ackedBeforeKill).join(' + ')}; duplicate acks (committed, ack lost in the kill): ${users.map((u) => u.acks.filter((a) => a.duplicate).length).join(' + ')}`);
    await until(() => users.every((u) => u.got.length >= total), { what: `${total} messages on both sides`, timeout: 30000 });
    for (const u of users) {
      assert.equal(u.acks.length, u.issued, `${u.name}: every send resolved once`);
      const conv = u.got.filter((m) => m.conv_id === convId);
      assert.equal(conv.length, total, `${u.name}: exactly ${total} messages (${u.got.length} emitted)`);
      assert.deepEqual(conv.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1), `${u.name}: seqs 1..${total} in order`);
      const texts = new Set(conv.map((m) => m.msg));
      assert.equal(texts.size, total, `${u.name}: no message twice`);
      for (const w of users) for (let i = 0; i < w.issued; i++) assert.ok(texts.has(`${w.name}-${i}`), `${u.name} has ${w.name}-${i}`);
      assert.ok(u.states.includes('disconnected') && u.states.at(-1) === 'connected');
    }
    // Both sides agree on which message holds which seq, and so does the server.
    assert.deepEqual(users[0].got.map((m) => m.msg_id), users[1].got.map((m) => m.msg_id));
    const stored = await users[0].chat.sync(convId, 0, 200);
    assert.deepEqual(stored.messages.map((m) => m.msg_id), users[0].got.map((m) => m.msg_id));
    assert.equal(stored.has_more, false);
  } finally {
    for (const u of users) u.chat.close();
  }
});

test('a send the server committed before kill -9, whose ack never reached the page: after the restart and a reload the resend gets the first ack (duplicate), emitted once', { timeout: 60000 }, async () => {
  const server = new TestServer();
  servers.push(server);
  await server.start();
  const a = await server.api('user', { app_uid: 'carol' });
  const b = await server.api('user', { app_uid: 'dave' });
  await server.api('friend_add', { uid: a.uid, friend_id: b.uid });
  const args = { chat_type: 0, to_id: b.uid, msg_type: 0, msg: 'committed, ack lost' };

  // The page wrote its outbox, sent the frame, and died before the ack arrived: the storage
  // holds what WxChat had written; the server got the frame (sent here on a raw socket).
  const storage = memoryStorage();
  storage.set('wxchat:outbox', JSON.stringify({ uid: a.uid, items: [{ client_msg_id: 'lost-ack-1', args, created: Date.now() }] }));
  storage.set(`wxchat:seqs:${a.uid}`, JSON.stringify({}));
  const raw = new WebSocket(`${server.wsUrl}?token=${a.token}`);
  const first = await new Promise((resolve, reject) => {
    raw.on('open', () => raw.send(JSON.stringify({ cmd: 'send', req_id: 1, ...args, client_msg_id: 'lost-ack-1' })));
    raw.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.cmd === 'send') resolve(f.data);
    });
    raw.on('error', reject);
  });
  raw.terminate();

  await server.kill9();
  await server.restartSamePort();

  const chat = new WxChat({ url: server.wsUrl, token: a.token, WebSocket, storage });
  const got = [];
  chat.on('message', (m) => got.push(m));
  const sent = [];
  chat.on('sent', (ack) => sent.push(ack));
  try {
    await chat.connect();
    await until(() => sent.length === 1 && got.length === 1, { what: 'the duplicate ack and the message' });
    assert.equal(sent[0].duplicate, true);
    assert.equal(sent[0].msg_id, first.msg_id);
    assert.equal(sent[0].seq, first.seq);
    assert.deepEqual(got.map((m) => [m.seq, m.msg_id, m.msg]), [[first.seq, first.msg_id, args.msg]]);
    assert.deepEqual(chat.pending(), []);
    const stored = await chat.sync(first.conv_id, 0, 50);
    assert.equal(stored.messages.length, 1, 'one message on the server');
  } finally {
    chat.close();
  }
});
