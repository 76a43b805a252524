// Exactly-once sending: the outbox survives reconnects and reloads, resends keep their
// client_msg_id, a duplicate ack resolves once, permanent errors drop, 429/503 retry.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStorage } from '../../src/index.js';
import { setup, accept, nextSocket, flush } from '../helpers/setup.js';

const hi = (msg = 'hi') => ({ chat_type: 0, to_id: 8, msg_type: 0, msg });

test('send resolves with the ack after the reply, and emits our own message (no push comes back)', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const ack = await c.chat.send(hi());
  assert.equal(ack.conv_id, 'p_7_8');
  assert.equal(ack.seq, 1);
  assert.equal(ack.duplicate, false);
  const frame = c.server.last.sentOf('send')[0];
  assert.match(frame.client_msg_id, /^[0-9a-f]{32}$/);
  assert.equal(ack.client_msg_id, frame.client_msg_id);
  assert.deepEqual(c.ev.messages.map((m) => [m.seq, m.from_id, m.msg]), [[1, 7, 'hi']]);
  assert.equal(c.ev.sent.length, 1);
  assert.deepEqual(c.chat.pending(), []);
});

test('a send made before connecting is stored, then sent on connect', async () => {
  const c = setup();
  const p = c.chat.send(hi('early'));
  assert.equal(JSON.parse(c.storage.get('wxchat:outbox')).items.length, 1, 'persisted before anything is sent');
  c.chat.connect();
  await accept(c);
  assert.equal((await p).seq, 1);
  assert.equal(JSON.parse(c.storage.get('wxchat:outbox')).items.length, 0);
});

test('unacknowledged sends are resent with the same client_msg_id after a reconnect; the duplicate ack resolves once', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  // The server commits the message but the ack is lost with the connection.
  c.server.hold.add('send');
  let resolved = 0;
  const p = c.chat.send(hi()).then((a) => {
    resolved++;
    return a;
  });
  await flush();
  const first = c.server.last.held[0];
  c.server.answer(c.server.last, first); // committed server-side, reply never delivered
  c.server.last.serverClose(1006);
  c.server.hold.clear();
  await nextSocket(c);
  await accept(c);
  const ack = await p;
  const resent = c.server.last.sentOf('send');
  assert.equal(resent.length, 1);
  assert.equal(resent[0].client_msg_id, first.client_msg_id);
  assert.equal(ack.duplicate, true);
  assert.equal(ack.seq, 1);
  await flush();
  assert.equal(resolved, 1);
  assert.equal(c.ev.sent.length, 1);
  assert.deepEqual(c.ev.messages.map((m) => m.seq), [1], 'emitted once');
});

test('a send with no reply on a live socket is resent after requestTimeout; the second ack changes nothing', async () => {
  const c = setup({ requestTimeout: 5000 });
  c.chat.connect();
  await accept(c);
  c.server.hold.add('send');
  const p = c.chat.send(hi());
  await flush();
  await c.clock.advance(5000);
  const s = c.server.last;
  assert.equal(s.sentOf('send').length, 2);
  assert.equal(s.sentOf('send')[0].client_msg_id, s.sentOf('send')[1].client_msg_id);
  c.server.hold.clear();
  s.release('send');
  const ack = await p;
  await flush();
  // The first frame's reply comes after its timeout; the resend's ack (duplicate) settles it.
  assert.equal(ack.seq, 1);
  assert.equal(c.server.convs.get('p_7_8').length, 1, 'one message on the server');
  assert.equal(c.ev.sent.length, 1);
  assert.equal(c.ev.messages.length, 1);
});

test('after a reload (new instance, same storage) outbox entries are resent and reported by sent', async () => {
  const storage = memoryStorage();
  const a = setup({ storage });
  a.chat.connect();
  await accept(a);
  a.server.hold.add('send');
  const lost = a.chat.send(hi('before reload'));
  lost.catch(() => {});
  await flush();
  const frame = a.server.last.held[0];
  a.server.answer(a.server.last, frame); // committed; the page dies before the ack arrives
  a.server.last.serverClose(1006);
  a.chat.close();
  a.server.hold.clear();

  const b = setup({ storage }, { server: a.server });
  assert.deepEqual(b.chat.pending().map((p) => p.client_msg_id), [frame.client_msg_id]);
  b.chat.connect();
  await accept(b);
  await flush();
  assert.equal(b.server.last.sentOf('send')[0].client_msg_id, frame.client_msg_id);
  assert.equal(b.ev.sent.length, 1);
  assert.equal(b.ev.sent[0].duplicate, true);
  assert.equal(b.ev.sent[0].args.msg, 'before reload');
  assert.deepEqual(b.chat.pending(), []);
  assert.equal(JSON.parse(storage.get('wxchat:outbox')).items.length, 0);
  // A third instance finds nothing to send.
  const c = setup({ storage }, { server: a.server });
  assert.deepEqual(c.chat.pending(), []);
});

test('codes that can never succeed reject and drop the message; send_failed reports it', async () => {
  for (const code of [400, 403, 404, 410, 413]) {
    const c = setup();
    c.server.replyOverride = (f) => (f.cmd === 'send' ? { cmd: 'send', req_id: f.req_id, code, msg: 'no' } : undefined);
    c.chat.connect();
    await accept(c);
    await assert.rejects(c.chat.send(hi()), (e) => e.code === code);
    assert.deepEqual(c.chat.pending(), []);
    assert.equal(c.ev.failed.length, 1);
    assert.equal(c.server.last.sentOf('send').length, 1, `${code}: not retried`);
  }
});

test('429 and 503 are retried with the same client_msg_id after a backoff delay', async () => {
  const c = setup({ backoffBase: 1000 });
  let refusals = 2;
  c.server.replyOverride = (f) => {
    if (f.cmd !== 'send' || refusals === 0) return undefined;
    refusals--;
    return { cmd: 'send', req_id: f.req_id, code: refusals ? 429 : 503, msg: 'later' };
  };
  c.chat.connect();
  await accept(c);
  const p = c.chat.send(hi());
  await flush();
  const s = c.server.last;
  assert.equal(s.sentOf('send').length, 1);
  await c.clock.advance(999); // retry 1: 0.5 x min(cap, 1000 x 2^1)
  assert.equal(s.sentOf('send').length, 1);
  await c.clock.advance(1);
  assert.equal(s.sentOf('send').length, 2);
  await c.clock.advance(1999); // retry 2: 0.5 x 4000
  assert.equal(s.sentOf('send').length, 2);
  await c.clock.advance(1);
  assert.equal(s.sentOf('send').length, 3);
  const ack = await p;
  assert.equal(ack.seq, 1);
  assert.equal(new Set(s.sentOf('send').map((f) => f.client_msg_id)).size, 1);
});

test('an outbox written by another user is not sent under this user', async () => {
  const storage = memoryStorage();
  storage.set('wxchat:outbox', JSON.stringify({ uid: 99, items: [{ client_msg_id: 'x1', args: hi(), created: 1 }] }));
  const c = setup({ storage });
  c.chat.connect();
  await accept(c);
  assert.equal(c.server.last.sentOf('send').length, 0);
  assert.equal(c.ev.failed.length, 1);
  assert.equal(c.ev.failed[0].error.code, 'wrong_user');
});

test('a long outbox goes out in windows of maxInflightSends, in order', async () => {
  const c = setup({ maxInflightSends: 4 });
  const all = [];
  for (let i = 0; i < 10; i++) all.push(c.chat.send(hi(`m${i}`)));
  c.server.hold.add('send');
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  assert.deepEqual(s.sentOf('send').map((f) => f.msg), ['m0', 'm1', 'm2', 'm3']);
  c.server.hold.clear();
  s.release('send');
  const acks = await Promise.all(all);
  assert.deepEqual(s.sentOf('send').map((f) => f.msg), Array.from({ length: 10 }, (_, i) => `m${i}`));
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 10 }, (_, i) => i + 1));
});
