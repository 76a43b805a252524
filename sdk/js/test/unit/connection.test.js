// The connection state machine with a scripted fake server and a manual clock: backoff,
// which close codes stop, getToken, heartbeat, requests while disconnected, mini-program
// lifecycle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fullJitter, WxChatError } from '../../src/index.js';
import { FakeServer, flush } from '../helpers/fake.js';
import { setup, accept, nextSocket } from '../helpers/setup.js';

test('fullJitter stays within [0, min(cap, base * 2^attempt))', () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    assert.equal(fullJitter(attempt, 500, 30000, () => 0), 0);
    const top = fullJitter(attempt, 500, 30000, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} vs ${ceiling}`);
  }
  assert.equal(fullJitter(2000, 500, 30000, () => 0.5), 15000, 'huge attempts stay capped');
});

test('connect authenticates with the token in the first frame and reaches connected', async () => {
  const c = setup();
  const done = c.chat.connect();
  await accept(c);
  await done;
  const s = c.server.last;
  assert.equal(s.url, 'ws://chat.test/ws', 'no token on the URL');
  assert.deepEqual(s.frames[0], { cmd: 'auth', req_id: s.frames[0].req_id, token: 'tok-7' });
  assert.equal(c.chat.uid, 7);
  assert.deepEqual(c.ev.states, ['connecting', 'connected']);
});

test('lost connections reconnect after full-jitter delays that grow to the cap, and reset once connected', async () => {
  const c = setup({ backoffBase: 1000, backoffCap: 8000 });
  c.chat.connect();
  await accept(c);
  const expected = [500, 1000, 2000, 4000, 4000, 4000]; // random 0.5 x min(8000, 1000 * 2^n)
  for (const [i, delay] of expected.entries()) {
    c.server.last.serverClose(i % 2 ? 1006 : 1011);
    assert.equal(c.chat.state, 'disconnected');
    const sockets = c.server.sockets.length;
    await c.clock.advance(delay - 1);
    assert.equal(c.server.sockets.length, sockets, `attempt ${i}: not before ${delay} ms`);
    await c.clock.advance(1);
    assert.equal(c.server.sockets.length, sockets + 1, `attempt ${i}: reconnects at ${delay} ms`);
    // The new socket fails before authenticating: backoff keeps growing.
  }
  await accept(c);
  c.server.last.serverClose(1001);
  await c.clock.advance(499);
  const before = c.server.sockets.length;
  await c.clock.advance(1);
  assert.equal(c.server.sockets.length, before + 1, 'the attempt counter restarts after a connection');
});

for (const code of [1001, 1006, 1008, 1011, 1012, 4002]) {
  test(`close ${code} reconnects`, async () => {
    const c = setup();
    c.chat.connect();
    await accept(c);
    c.server.last.serverClose(code, 'x');
    await nextSocket(c);
    await accept(c);
    assert.equal(c.server.sockets.length, 2);
  });
}

for (const code of [4003, 4004]) {
  test(`close ${code} stops: state closed, no reconnect, requests reject`, async () => {
    const c = setup();
    c.chat.connect();
    await accept(c);
    c.server.last.serverClose(code, 'kicked');
    assert.equal(c.chat.state, 'closed');
    assert.deepEqual(c.chat.lastClose, { code, reason: 'kicked' });
    await c.clock.advance(10 * 60 * 1000);
    assert.equal(c.server.sockets.length, 1);
    await assert.rejects(c.chat.friends(), (e) => e instanceof WxChatError && e.code === 'closed');
  });
}

test('a bad token without getToken stops with closed and rejects connect()', async () => {
  const c = setup({ token: 'nope' });
  const p = c.chat.connect();
  await flush();
  c.server.last.accept();
  await assert.rejects(p, (e) => e.code === 401);
  assert.equal(c.chat.state, 'closed');
  await c.clock.advance(10 * 60 * 1000);
  assert.equal(c.server.sockets.length, 1);
});

test('4001 calls getToken again and reconnects with the new token', async () => {
  let calls = 0;
  const c = setup({ token: 'expired', getToken: async () => (++calls === 1 ? 'tok-7' : 'other') });
  const p = c.chat.connect();
  await flush();
  c.server.last.accept();
  await flush();
  assert.equal(c.chat.state, 'disconnected', 'the 401 + 4001 is not the end with getToken');
  await nextSocket(c);
  await accept(c);
  await p;
  assert.equal(calls, 1);
  assert.equal(c.server.last.frames[0].token, 'tok-7');
  // Once more: the server now refuses 'tok-7' (revoked), getToken gives another.
  c.server.tokens.delete('tok-7');
  c.server.tokens.set('other', 7);
  c.server.last.serverClose(1006);
  await nextSocket(c);
  c.server.last.accept();
  await flush();
  assert.equal(c.server.last.frames[0].token, 'tok-7', 'the token still held is tried first');
  await nextSocket(c);
  await accept(c);
  assert.equal(calls, 2);
  assert.equal(c.server.last.frames[0].token, 'other');
});

test('a connect that never opens is abandoned after connectTimeout and retried', async () => {
  const c = setup({ connectTimeout: 5000 });
  c.chat.connect();
  await flush();
  await c.clock.advance(4999);
  assert.equal(c.chat.state, 'connecting');
  await c.clock.advance(1);
  assert.equal(c.chat.state, 'disconnected');
  assert.equal(c.server.sockets[0].closedBy.code, 1000);
  await nextSocket(c);
  assert.equal(c.server.sockets.length, 2);
});

test('heartbeat: a ping after the quiet interval; no answer within the timeout means a dead link', async () => {
  const c = setup({ heartbeatInterval: 20000, heartbeatTimeout: 10000 });
  c.chat.connect();
  await accept(c);
  const s = c.server.last;
  await c.clock.advance(19999);
  assert.equal(s.sentOf('ping').length, 0);
  await c.clock.advance(1);
  assert.equal(s.sentOf('ping').length, 1, 'ping after 20 s of silence');
  // Answered: the link is alive; the next ping comes an interval later.
  await c.clock.advance(20000);
  assert.equal(s.sentOf('ping').length, 2);
  assert.equal(c.chat.state, 'connected');
  // Now the network silently drops everything.
  c.server.hold.add('ping');
  await c.clock.advance(20000);
  assert.equal(s.sentOf('ping').length, 3);
  await c.clock.advance(9999);
  assert.equal(c.chat.state, 'connected');
  await c.clock.advance(1);
  assert.equal(c.chat.state, 'disconnected', 'dead 30 s after the last sign of life');
  assert.equal(s.closedBy.code, 1000);
  c.server.hold.clear();
  await nextSocket(c);
  await accept(c);
});

test('requests made while disconnected wait for the connection, or time out with code timeout', async () => {
  const c = setup({ requestTimeout: 15000 });
  c.chat.connect();
  const friends = c.chat.request('friends');
  const late = c.chat.request('groups');
  await flush();
  assert.equal(c.server.last.frames.length, 0);
  c.server.last.accept();
  await flush();
  assert.deepEqual(await friends, {});
  await late;
  c.server.last.serverClose(1006);
  c.server.hold.add('auth');
  const doomed = assert.rejects(c.chat.request('friends'), (e) => e.code === 'timeout');
  await c.clock.advance(14999);
  let settled = false;
  doomed.then(() => (settled = true));
  await flush();
  assert.equal(settled, false, 'still waiting before the timeout');
  await c.clock.advance(1);
  await doomed;
});

test('a lost connection resends idempotent requests and rejects the others with disconnected', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  c.server.hold.add('history').add('group_create');
  const hist = c.chat.history('p_7_8');
  const create = c.chat.groupCreate('g', [8]);
  await flush();
  c.server.last.serverClose(1006);
  await assert.rejects(create, (e) => e.code === 'disconnected');
  c.server.hold.clear();
  await nextSocket(c);
  await accept(c);
  assert.deepEqual(await hist, {});
  assert.equal(c.server.last.sentOf('history').length, 1);
});

test('customer-service reads refused with 503 (the desk moving between nodes) are sent again after a backoff delay', async () => {
  const c = setup({ backoffBase: 500, backoffCap: 4000, requestTimeout: 15000 });
  c.chat.connect();
  await accept(c);
  let refusals = 2;
  c.server.replyOverride = (f) => {
    if (f.cmd !== 'consult_get') return undefined;
    if (refusals-- > 0) return { cmd: f.cmd, req_id: f.req_id, code: 503, msg: 'customer service is moving to another node, retry' };
    return { cmd: f.cmd, req_id: f.req_id, code: 200, data: { consult_id: f.consult_id, remaining_ms: 1234 } };
  };
  const got = c.chat.consultGet(9);
  await flush();
  const s = c.server.last;
  assert.equal(s.sentOf('consult_get').length, 1);
  await c.clock.advance(249); // random 0.5 x min(4000, 500 * 2^0)
  assert.equal(s.sentOf('consult_get').length, 1, 'not before the backoff delay');
  await c.clock.advance(1);
  assert.equal(s.sentOf('consult_get').length, 2);
  await c.clock.advance(500); // 0.5 x 1000
  assert.equal(s.sentOf('consult_get').length, 3);
  assert.deepEqual(await got, { consult_id: 9, remaining_ms: 1234 });
  // Commands that cannot be repeated safely reject with the 503 at once.
  c.server.replyOverride = (f) => (f.cmd === 'service_close' ? { cmd: f.cmd, req_id: f.req_id, code: 503, msg: 'customer service is moving to another node, retry' } : undefined);
  await assert.rejects(c.chat.serviceClose(5), (e) => e.code === 503);
  assert.equal(s.sentOf('service_close').length, 1);
});

test('a customer-service read unanswered (sent to a node that died) goes out again after a third of requestTimeout; still refused at the timeout, it rejects with the 503', async () => {
  const c = setup({ backoffBase: 500, backoffCap: 1000, requestTimeout: 15000 });
  c.chat.connect();
  await accept(c);
  c.server.hold.add('service_info');
  const info = c.chat.serviceInfo();
  await flush();
  const s = c.server.last;
  await c.clock.advance(4999);
  assert.equal(s.sentOf('service_info').length, 1);
  await c.clock.advance(1);
  assert.equal(s.sentOf('service_info').length, 2, 'sent again after 5 s without a reply');
  assert.notEqual(s.sentOf('service_info')[1].req_id, s.sentOf('service_info')[0].req_id);
  // The late reply to the first try is ignored; the second try's settles it.
  c.server.hold.clear();
  s.release('service_info');
  assert.deepEqual(await info, {});
  assert.equal(c.clock.pending().length, 1, 'only the heartbeat is left');

  // Refused until the request's own time is up: the 503 is what the caller learns.
  c.server.replyOverride = (f) => (f.cmd === 'service_info' ? { cmd: f.cmd, req_id: f.req_id, code: 503, msg: 'customer service is moving to another node, retry' } : undefined);
  const refused = assert.rejects(c.chat.request('service_info', {}, { timeout: 3000 }), (e) => e.code === 503 && /moving/.test(e.message));
  await flush();
  assert.ok(s.sentOf('service_info').length > 2, 'refused at once');
  await c.clock.advance(3000);
  await refused;
  const tries = s.sentOf('service_info').length;
  await c.clock.advance(60000);
  assert.equal(s.sentOf('service_info').length, tries, 'no try after the timeout');
  // Other commands never go out twice on a live connection.
  c.server.hold.add('friends');
  const friends = assert.rejects(c.chat.friends(), (e) => e.code === 'timeout');
  await c.clock.advance(15000);
  await friends;
  assert.equal(s.sentOf('friends').length, 1);
});

test('a customer-service read waiting to be retried rejects with closed on close(), and goes out on the next connection after a disconnect', async () => {
  const c = setup({ backoffBase: 1000, backoffCap: 8000, requestTimeout: 30000 });
  c.chat.connect();
  await accept(c);
  let refuse = true;
  c.server.replyOverride = (f) => (f.cmd === 'consult_get' && refuse ? { cmd: f.cmd, req_id: f.req_id, code: 503, msg: 'busy' } : undefined);
  const got = c.chat.consultGet(3);
  await flush();
  c.server.last.serverClose(1006);
  refuse = false;
  await nextSocket(c);
  await accept(c);
  assert.deepEqual(await got, {});
  assert.equal(c.server.last.sentOf('consult_get').length, 1, 'sent once on the new connection');

  refuse = true;
  const closed = assert.rejects(c.chat.consultGet(3), (e) => e.code === 'closed');
  await flush();
  c.chat.close();
  await closed;
  assert.deepEqual(c.clock.pending(), [], 'no timer left behind');
});

test('close() stops everything: state closed, no reconnect, pending requests reject', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  c.server.hold.add('friends');
  const f = c.chat.friends();
  await flush();
  c.chat.close();
  await assert.rejects(f, (e) => e.code === 'closed');
  assert.equal(c.chat.state, 'closed');
  assert.equal(c.server.last.closedBy.code, 1000);
  await c.clock.advance(10 * 60 * 1000);
  assert.equal(c.server.sockets.length, 1);
});

test('pushes other than message are emitted as events named after their cmd', async () => {
  const c = setup();
  c.chat.connect();
  await accept(c);
  const got = [];
  for (const cmd of ['read', 'typing', 'presence', 'profile', 'friend_request', 'group_event', 'service', 'consult', 'wx_delivery']) {
    c.chat.on(cmd, (d) => got.push([cmd, d.n]));
  }
  c.server.last.push('typing', { conv_id: 'p_7_8', uid: 8, n: 1 });
  c.server.last.push('consult', { consult_id: 3, event: 'running', n: 2 });
  c.server.last.push('service', { event: 'queued', position: 1, n: 3 });
  assert.deepEqual(got, [['typing', 1], ['consult', 2], ['service', 3]]);
});

function fakeWx(server) {
  const hooks = { hide: [], show: [] };
  const store = new Map();
  return {
    hooks,
    onNetworkStatusChange: (fn) => (hooks.network = fn),
    onAppHide: (fn) => hooks.hide.push(fn),
    onAppShow: (fn) => hooks.show.push(fn),
    getStorageSync: (k) => (store.has(k) ? store.get(k) : ''),
    setStorageSync: (k, v) => store.set(k, v),
    removeStorageSync: (k) => store.delete(k),
    store,
    server,
  };
}

test('mini-program lifecycle: onAppHide closes the socket cleanly; onAppShow reconnects at once and catches up', async () => {
  const server = new FakeServer();
  const wx = fakeWx(server);
  const c = setup({ wx, transport: server.transport(), storage: undefined });
  c.server = server;
  server.add('p_7_8');
  c.chat.connect();
  await accept(c);
  assert.ok(wx.store.get('wxchat:seqs:7'), 'seqs kept in wx storage');
  const s = server.last;
  wx.hooks.hide.forEach((fn) => fn());
  assert.deepEqual(s.closedBy, { code: 1000, reason: 'app hidden' });
  assert.equal(c.chat.state, 'disconnected');
  // While hidden (the JS thread may be frozen): nothing is retried, nothing pings.
  server.add('p_7_8', { msg: 'while hidden' });
  await c.clock.advance(10 * 60 * 1000);
  assert.equal(server.sockets.length, 1);
  wx.hooks.show.forEach((fn) => fn());
  assert.equal(server.sockets.length, 2, 'reconnects without waiting for a backoff');
  await accept(c);
  await flush();
  assert.deepEqual(c.ev.messages.map((m) => m.msg), ['while hidden']);
  assert.deepEqual(server.last.sentOf('sync').map((f) => f.after_seq), [1]);
});

test('cookie mode (no token, no getToken): the upgrade\'s cookie authenticates; no auth frame is sent', async () => {
  const c = setup({ token: undefined });
  c.server.cookieUid = 7;
  const p = c.chat.connect();
  await accept(c);
  await p;
  assert.equal(c.chat.uid, 7);
  assert.equal(c.server.last.sentOf('auth').length, 0);
});

test('cookie mode without a usable cookie fails at once with 401 instead of waiting for the auth timeout', async () => {
  const c = setup({ token: undefined });
  const p = c.chat.connect();
  await flush();
  c.server.last.accept();
  await assert.rejects(p, (e) => e.code === 401);
  assert.equal(c.chat.state, 'closed');
  assert.equal(c.clock.t, 1_000_000, 'no time had to pass');
});

test('wx.onNetworkStatusChange back online skips the rest of the backoff', async () => {
  const server = new FakeServer();
  const wx = fakeWx(server);
  const c = setup({ wx, transport: server.transport(), storage: undefined, backoffBase: 20000, backoffCap: 60000 });
  c.server = server;
  c.chat.connect();
  await accept(c);
  server.last.serverClose(1006);
  await c.clock.advance(100);
  assert.equal(server.sockets.length, 1, 'waiting out a 10 s backoff');
  wx.hooks.network({ isConnected: false, networkType: 'none' });
  assert.equal(server.sockets.length, 1);
  wx.hooks.network({ isConnected: true, networkType: 'wifi' });
  assert.equal(server.sockets.length, 2, 'reconnects at once');
  await accept(c);
  // While connected it does nothing.
  wx.hooks.network({ isConnected: true, networkType: '4g' });
  assert.equal(server.sockets.length, 2);
});
