// Gap-free receiving: every message once, in seq order per conversation; pushes that skip a
// seq trigger sync; catch-up after reconnect; seqs persisted across reloads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStorage } from '../../src/index.js';
import { setup, accept, nextSocket, flush } from '../helpers/setup.js';

const seqs = (ev, conv) => ev.messages.filter((m) => !conv || m.conv_id === conv).map((m) => m.seq);

test('the first connection of a device starts at each conversation\'s last seq (history is for history())', async () => {
  const c = setup();
  c.server.add('p_7_8');
  c.server.add('p_7_8');
  c.chat.connect();
  await accept(c);
  assert.deepEqual(c.ev.messages, []);
  c.server.last.push('message', c.server.add('p_7_8'));
  assert.deepEqual(seqs(c.ev), [3]);
});

test('initialSync "all" emits the whole history on the first connection', async () => {
  const c = setup({ initialSync: 'all', syncLimit: 2 });
  for (let i = 0; i < 5; i++) c.server.add('p_7_8');
  c.chat.connect();
  await accept(c);
  await flush();
  assert.deepEqual(seqs(c.ev), [1, 2, 3, 4, 5]);
  assert.deepEqual(c.server.last.sentOf('sync').map((f) => f.after_seq), [0, 2, 4], 'pages until has_more is false');
});

test('a push that skips seqs triggers sync of the gap; everything is emitted once, in order', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  const m1 = c.server.add('p_7_8');
  const m2 = c.server.add('p_7_8');
  const m3 = c.server.add('p_7_8');
  const m4 = c.server.add('p_7_8');
  s.push('message', m1);
  c.server.hold.add('sync');
  s.push('message', m4); // 2 and 3 were lost (e.g. a slow-consumer drop)
  assert.deepEqual(seqs(c.ev), [1], '4 waits for 2 and 3');
  assert.deepEqual(s.sentOf('sync').map((f) => [f.conv_id, f.after_seq]), [['p_7_8', 1]]);
  s.push('message', m3); // arrives while the sync is out: buffered too
  s.push('message', m1); // a repeat is dropped
  c.server.hold.clear();
  s.release('sync');
  await flush();
  assert.deepEqual(seqs(c.ev), [1, 2, 3, 4]);
  assert.equal(c.ev.messages[1].msg_id, m2.msg_id);
  s.push('message', m4);
  assert.deepEqual(seqs(c.ev), [1, 2, 3, 4]);
});

test('out-of-order pushes are buffered and emitted in order', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  const ms = [1, 2, 3].map(() => c.server.add('g_5'));
  c.server.hold.add('sync');
  s.push('message', ms[2]);
  s.push('message', ms[1]);
  assert.deepEqual(seqs(c.ev), []);
  s.push('message', ms[0]);
  assert.deepEqual(seqs(c.ev), [1, 2, 3]);
});

test('after a reconnect: conversations, then sync each conversation above what we hold, paging until has_more is false', async () => {
  const c = setup({ syncLimit: 3 });
  c.server.add('p_7_8');
  c.chat.connect();
  await accept(c);
  c.server.last.serverClose(1006);
  for (let i = 0; i < 7; i++) c.server.add('p_7_8'); // 2..8 while away
  c.server.add('g_5'); // a new conversation
  await nextSocket(c);
  await accept(c);
  await flush();
  assert.deepEqual(seqs(c.ev, 'p_7_8'), [2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(seqs(c.ev, 'g_5'), [1]);
  const syncs = c.server.last.sentOf('sync').map((f) => [f.conv_id, f.after_seq]);
  assert.deepEqual(syncs.filter((x) => x[0] === 'p_7_8'), [['p_7_8', 1], ['p_7_8', 4], ['p_7_8', 7]]);
  assert.equal(c.server.last.sentOf('conversations').length, 1);
});

test('our own acked messages keep the conversation contiguous with the pushes around them', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  s.push('message', c.server.add('p_7_8')); // 1 from 8
  await c.chat.send({ chat_type: 0, to_id: 8, msg_type: 0, msg: 'mine' }); // 2 from us
  s.push('message', c.server.add('p_7_8')); // 3 from 8
  await flush();
  assert.deepEqual(c.ev.messages.map((m) => [m.seq, m.from_id]), [[1, 8], [2, 7], [3, 8]]);
  assert.equal(s.sentOf('sync').length, 0, 'no gap, no sync');
});

test('seqs are persisted: a reload emits nothing twice, and catches up from where it was', async () => {
  const storage = memoryStorage();
  const a = setup({ storage });
  a.chat.connect();
  await accept(a);
  a.server.last.push('message', a.server.add('p_7_8'));
  a.server.last.push('message', a.server.add('p_7_8'));
  assert.deepEqual(seqs(a.ev), [1, 2]);
  a.chat.close();
  a.server.add('p_7_8');
  const b = setup({ storage }, { server: a.server });
  b.chat.connect();
  await accept(b);
  await flush();
  assert.deepEqual(seqs(b.ev), [3]);
});

test('a group joined later: sync starts at the join point and the messages before it are not waited for', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  for (let i = 0; i < 5; i++) c.server.add('g_9', { hidden: true }); // before we joined
  const m6 = c.server.add('g_9');
  const m7 = c.server.add('g_9');
  s.push('message', m7);
  await flush();
  assert.deepEqual(seqs(c.ev, 'g_9'), [6, 7]);
  assert.equal(m6.seq, 6);
  s.push('message', c.server.add('g_9'));
  assert.deepEqual(seqs(c.ev, 'g_9'), [6, 7, 8]);
});

test('pushes that arrive before the conversation list on a first connection are neither lost nor doubled', async () => {
  const c = setup();
  c.server.add('p_7_8');
  c.server.hold.add('conversations');
  c.chat.connect();
  await flush();
  c.server.last.accept();
  await flush();
  const s = c.server.last;
  const m2 = c.server.add('p_7_8');
  s.push('message', m2);
  s.push('message', c.server.add('p_7_9'));
  assert.deepEqual(c.ev.messages, [], 'nothing before the list');
  c.server.hold.clear();
  // The list is computed now: p_7_8 up to 2 (history on a first connection), p_7_9 up to 1.
  s.release('conversations');
  await flush();
  assert.equal(c.chat.state, 'connected');
  assert.deepEqual(c.ev.messages, []);
  s.push('message', c.server.add('p_7_8'));
  assert.deepEqual(seqs(c.ev), [3]);
});

test('our own recall: the recall event (next seq) is fetched with sync and emitted', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const ack = await c.chat.send({ chat_type: 0, to_id: 8, msg_type: 0, msg: 'oops' });
  c.server.replyOverride = (f) => {
    if (f.cmd !== 'recall') return undefined;
    const ev = c.server.add(f.conv_id, { from_id: 7, msg_type: 100, msg: { msg_id: f.msg_id, seq: ack.seq } });
    return { cmd: 'recall', req_id: f.req_id, code: 200, data: { msg_id: ev.msg_id, conv_id: f.conv_id, seq: ev.seq, time: 1 } };
  };
  await c.chat.recall('p_7_8', ack.msg_id);
  await flush();
  assert.deepEqual(c.ev.messages.map((m) => [m.seq, m.msg_type]), [[1, 0], [2, 100]]);
});

test('catch-up of many conversations runs maxParallelSyncs syncs at a time and finishes them all', async () => {
  const c = setup({ maxParallelSyncs: 3 });
  c.chat.connect();
  await accept(c);
  c.server.last.serverClose(1006);
  for (let g = 1; g <= 8; g++) c.server.add(`g_${g}`);
  c.server.hold.add('sync');
  await nextSocket(c);
  await accept(c);
  const s = c.server.last;
  assert.equal(s.held.length, 3, 'three syncs in flight');
  c.server.hold.clear();
  s.release('sync');
  await flush();
  assert.equal(s.sentOf('sync').length, 8);
  for (let g = 1; g <= 8; g++) assert.deepEqual(seqs(c.ev, `g_${g}`), [1]);
});

test('a sync refused with 503 is retried after a backoff delay on the same connection', async () => {
  const c = setup({ backoffBase: 1000 });
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  let refuse = true;
  c.server.replyOverride = (f) => (f.cmd === 'sync' && refuse ? { cmd: 'sync', req_id: f.req_id, code: 503, msg: 'storage unavailable: x' } : undefined);
  c.server.add('p_7_8');
  s.push('message', c.server.add('p_7_8')); // seq 2: a gap at 1
  await flush();
  assert.equal(s.sentOf('sync').length, 1);
  assert.deepEqual(seqs(c.ev), []);
  refuse = false;
  await c.clock.advance(499); // 0.5 x 1000
  assert.equal(s.sentOf('sync').length, 1);
  await c.clock.advance(1);
  assert.equal(s.sentOf('sync').length, 2);
  assert.deepEqual(seqs(c.ev), [1, 2]);
});

test('after a reconnect, pushes that arrive before the conversation list are emitted once it is in', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  c.server.last.push('message', c.server.add('p_7_8'));
  c.server.last.serverClose(1006);
  c.server.hold.add('conversations');
  await nextSocket(c);
  c.server.last.accept();
  await flush();
  const s = c.server.last;
  s.push('message', c.server.add('p_7_8'));
  assert.deepEqual(seqs(c.ev), [1], 'held back until the list is in');
  c.server.hold.clear();
  s.release('conversations');
  await flush();
  assert.deepEqual(seqs(c.ev), [1, 2]);
  assert.equal(s.sentOf('sync').length, 0);
});

test('a resync push (the server lost live pushes): conversations, then sync what is behind, on the same connection', async () => {
  const c = setup();
  c.server.add('p_7_8');
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  s.push('message', c.server.add('p_7_8'));
  c.server.add('p_7_8'); // 3 and 4 were never pushed
  c.server.add('p_7_8');
  c.server.add('g_5'); // and a conversation started meanwhile
  const resyncs = [];
  c.chat.on('resync', (d) => resyncs.push(d));
  s.push('resync', {});
  await flush();
  assert.deepEqual(resyncs, [{}]);
  assert.deepEqual(seqs(c.ev, 'p_7_8'), [2, 3, 4]);
  assert.deepEqual(seqs(c.ev, 'g_5'), [1]);
  assert.equal(s.sentOf('conversations').length, 2);
  assert.equal(c.server.last, s, 'no reconnect');
});
