// Every command family through the SDK against the real server: friends, presence, groups,
// receipts, typing, recall, profile pushes, uploads with fetch, customer service with an
// anonymous visitor (and its conversion closing the visitor's socket with 4004), and the
// doLogin cookie authenticating a socket without a token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { WxChat, memoryStorage, createVisitor, convertVisitor, updateMe, uploadFile } from '../../src/index.js';
import { TestServer } from '../helpers/server.js';
import { until, nextEvent } from '../helpers/wait.js';

const SIGN_KEY = 'sdk-test-sign-key';
let server;
const chats = [];

before(async () => {
  server = new TestServer(`[auth]\nsign_key = "${SIGN_KEY}"\n`);
  await server.start();
});
after(async () => {
  for (const c of chats) c.close();
  await server.stop();
});

/** A connected client that records every event it gets. */
async function client(token, extra = {}) {
  const chat = new WxChat({ url: server.wsUrl, token, WebSocket, storage: memoryStorage(), ...extra });
  chats.push(chat);
  chat.got = [];
  chat.pushes = [];
  chat.on('message', (m) => chat.got.push(m));
  for (const cmd of ['read', 'typing', 'presence', 'profile', 'friend_request', 'friend_added', 'friend_removed', 'group_event', 'service']) {
    chat.on(cmd, (d) => chat.pushes.push([cmd, d]));
  }
  await chat.connect();
  return chat;
}

const pushed = (chat, cmd, pred = () => true) => until(() => chat.pushes.find(([c, d]) => c === cmd && pred(d)), { what: `${cmd} push` });

test('friends, presence, one-to-one receipts, typing, history, recall, profile', async () => {
  const [u1, u2] = await Promise.all(['f1', 'f2'].map((app_uid) => server.api('user', { app_uid })));
  const c1 = await client(u1.token);
  const c2 = await client(u2.token);

  await c1.friendRequest(u2.uid, 'hello');
  const req = await pushed(c2, 'friend_request');
  assert.equal(req[1].from_id, u1.uid);
  assert.deepEqual((await c2.friendRequests()).map((r) => [r.from_id, r.note]), [[u1.uid, 'hello']]);
  assert.deepEqual(await c2.friendAccept(u1.uid), { uid: u1.uid });
  await pushed(c1, 'friend_added', (d) => d.uid === u2.uid);
  assert.deepEqual(await c1.friends(), [{ uid: u2.uid, name: u2.name ?? '', head_img: '', online: true }]);
  assert.deepEqual(await c1.presence([u2.uid]), { [u2.uid]: true });

  const ack1 = await c1.send({ chat_type: 0, to_id: u2.uid, msg_type: 0, msg: 'one' });
  const ack2 = await c1.send({ chat_type: 0, to_id: u2.uid, msg_type: 0, msg: 'two' });
  await until(() => c2.got.length === 2, { what: 'two messages' });
  assert.deepEqual(await c2.read(ack2.conv_id, ack2.seq), { conv_id: ack2.conv_id, read_seq: 2 });
  await pushed(c1, 'read', (d) => d.seq === 2 && d.uid === u2.uid);
  assert.equal((await c1.readCount(ack2.conv_id, 2)).read >= 1, true);
  await c2.typing(ack1.conv_id);
  await pushed(c1, 'typing', (d) => d.uid === u2.uid);
  const hist = await c2.history(ack1.conv_id);
  assert.deepEqual(hist.messages.map((m) => m.seq), [2, 1], 'history is newest first');
  const convs = await c2.conversations();
  assert.equal(convs[0].conv_id, ack1.conv_id);
  assert.equal(convs[0].peer.uid, u1.uid);

  // Recall: the recall event takes seq 3; both sides emit it as a message.
  const rack = await c1.recall(ack1.conv_id, ack1.msg_id);
  assert.equal(rack.seq, 3);
  await until(() => c1.got.length === 3 && c2.got.length === 3, { what: 'the recall event on both sides' });
  for (const c of [c1, c2]) {
    assert.deepEqual(c.got.map((m) => m.seq), [1, 2, 3]);
    assert.equal(c.got[2].msg_type, 100);
    assert.equal(c.got[2].msg.msg_id, ack1.msg_id);
  }

  await updateMe({ baseUrl: server.httpUrl, token: u1.token, name: 'Renamed' });
  await pushed(c2, 'profile', (d) => d.uid === u1.uid && d.name === 'Renamed');

  await c2.friendRemove(u1.uid);
  await pushed(c1, 'friend_removed', (d) => d.uid === u2.uid);
  await assert.rejects(c1.send({ chat_type: 0, to_id: u2.uid, msg_type: 0, msg: 'no longer friends' }), (e) => e.code === 403);
  assert.deepEqual(c1.pending(), [], 'a 403 is not kept for resending');
});

test('groups: create, members, invite, messages to every member in order, leave', async () => {
  const [o, m1, m2] = await Promise.all(['g-owner', 'g-m1', 'g-m2'].map((app_uid) => server.api('user', { app_uid })));
  const co = await client(o.token);
  const c1 = await client(m1.token);
  const c2 = await client(m2.token);
  const created = await co.groupCreate('team', [m1.uid]);
  const gid = created.group.group_id;
  await pushed(c1, 'group_event', (d) => d.group_id === gid && d.event === 'created');
  assert.deepEqual((await c1.groups()).map((g) => g.group_id), [gid]);
  assert.deepEqual(await co.groupInvite(gid, [m2.uid]), { group_id: gid, added: [m2.uid] });
  await pushed(c2, 'group_event', (d) => d.event === 'joined');
  assert.deepEqual((await co.groupMembers(gid)).map((m) => m.uid).sort(), [o.uid, m1.uid, m2.uid].sort());
  await Promise.all([
    co.send({ chat_type: 1, to_id: gid, msg_type: 0, msg: 'from owner' }),
    c1.send({ chat_type: 1, to_id: gid, msg_type: 0, msg: 'from m1' }),
    c2.send({ chat_type: 1, to_id: gid, msg_type: 0, msg: 'from m2' }),
  ]);
  await until(() => [co, c1, c2].every((c) => c.got.length === 3), { what: 'three group messages everywhere' });
  const order = co.got.map((m) => m.msg_id);
  for (const c of [c1, c2]) {
    assert.deepEqual(c.got.map((m) => m.seq), [1, 2, 3]);
    assert.deepEqual(c.got.map((m) => m.msg_id), order);
  }
  assert.deepEqual(await c2.groupLeave(gid), { group_id: gid });
  await pushed(co, 'group_event', (d) => d.event === 'left');
});

test('customer service: an anonymous visitor and an agent; the conversion closes the visitor with 4004 and it stays closed', async () => {
  const agentUser = await server.api('user', { app_uid: 'agent-1', user_type: 1 });
  const agent = await client(agentUser.token);
  const visitor = await createVisitor({ baseUrl: server.httpUrl });
  assert.equal(visitor.user_type, 3);
  const v = await client(visitor.token);
  const ack = await v.send({ chat_type: 2, to_id: 0, msg_type: 0, msg: 'I need help' });
  assert.equal(ack.conv_id, `s_${visitor.uid}`);
  await pushed(agent, 'service', (d) => d.event === 'assigned' && d.customer === visitor.uid);
  await until(() => agent.got.some((m) => m.msg === 'I need help'), { what: 'the agent gets the message' });
  const info = await agent.serviceInfo();
  assert.deepEqual(info.customers, [visitor.uid]);
  assert.equal((await v.serviceInfo()).session.agent, agentUser.uid);
  await agent.send({ chat_type: 2, to_id: visitor.uid, msg_type: 0, msg: 'How can I help?' });
  await until(() => v.got.some((m) => m.msg === 'How can I help?'), { what: 'the visitor gets the reply' });
  assert.deepEqual(v.got.filter((m) => m.conv_id === ack.conv_id).map((m) => m.seq), v.got.map((_, i) => i + 1));
  await assert.rejects(v.friends(), (e) => e.code === 403, 'visitors may only use customer service');

  const registered = await server.api('user', { app_uid: 'customer-1' });
  const closed = nextEvent(v, 'state', { pred: (s) => s === 'closed' });
  const conv = await convertVisitor({ baseUrl: server.httpUrl, token: registered.token, visitor_token: visitor.token });
  assert.equal(conv.uid, registered.uid);
  await closed;
  assert.equal(v.lastClose.code, 4004);
  await pushed(agent, 'service', (d) => d.event === 'converted');
  await assert.rejects(v.ping(), (e) => e.code === 'closed');
});

test('a doLogin cookie authenticates the socket with no token; uploads with fetch + FormData', async () => {
  const time = Math.floor(Date.now() / 1000);
  const fields = { app_uid: 'cookie-user', name: 'Cookie', time: String(time) };
  // online_chat's signature: md5 of the ksorted fields with sign_key among them, PHP urlencoded.
  const php = (s) => encodeURIComponent(s).replace(/[!'()*~]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase()).replace(/%20/g, '+');
  const query = Object.entries({ ...fields, sign_key: SIGN_KEY }).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${php(k)}=${php(v)}`).join('&');
  const sign = crypto.createHash('md5').update(query).digest('hex');
  const res = await fetch(`${server.httpUrl}/api/doLogin`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ ...fields, sign }).toString(),
  });
  const body = await res.json();
  assert.equal(body.code, 200, JSON.stringify(body));
  const cookie = res.headers.get('set-cookie').split(';')[0];
  assert.match(cookie, /^wxchat_token=[0-9a-f]{64}$/);

  // What a same-site page's browser does: the cookie rides on the upgrade, the page has no token.
  class CookieWebSocket extends WebSocket {
    constructor(url) {
      super(url, { headers: { Cookie: cookie } });
    }
  }
  const chat = await client(undefined, { WebSocket: CookieWebSocket });
  assert.equal(chat.uid, body.data.uid);
  assert.equal(chat.state, 'connected');

  // Without the cookie the same setup fails at once (401), not after the server's 10 s.
  const bare = new WxChat({ url: server.wsUrl, WebSocket, storage: memoryStorage() });
  chats.push(bare);
  await assert.rejects(bare.connect(), (e) => e.code === 401);
  assert.deepEqual(bare.lastClose, { code: 4001, reason: 'no token and no usable cookie' }, 'the probe found out');

  const bytes = Buffer.from('%PDF-1.4 test file\n');
  const up = await uploadFile({ baseUrl: server.httpUrl, token: body.data.token, file: new Blob([bytes], { type: 'application/pdf' }), name: 'doc.pdf' });
  assert.match(up.url, /^\/files\/[0-9a-f]{64}\.pdf$/);
  assert.equal(up.size, bytes.length);
});

test('timed consultation: consult pushes as events, messages with chat_type 3, 410 once the time is used up', { timeout: 30000 }, async () => {
  const [user, consultant] = await Promise.all([
    server.api('user', { app_uid: 'c-user' }),
    server.api('user', { app_uid: 'c-consultant', user_type: 2 }),
  ]);
  const cu = await client(user.token);
  const cc = await client(consultant.token);
  const events = { u: [], c: [] };
  cu.on('consult', (d) => events.u.push(d.event));
  cc.on('consult', (d) => events.c.push(d.event));
  const created = await server.api('consult_create', { user: user.uid, consultant: consultant.uid, seconds: 600 });
  await until(() => events.u.includes('running') && events.c.includes('running'), { what: 'running on both sides' });
  assert.ok(events.u.includes('created'));
  const ack = await cu.send({ chat_type: 3, to_id: created.consult_id, msg_type: 0, msg: 'question' });
  assert.equal(ack.conv_id, created.conv_id);
  await until(() => cc.got.some((m) => m.conv_id === created.conv_id && m.msg === 'question'), { what: 'the consultant gets it' });
  // A one-second consultation runs out (the server's clock: wait for its `ended` push).
  const short = await server.api('consult_create', { user: user.uid, consultant: consultant.uid, seconds: 1 });
  const ended = [];
  cu.on('consult', (d) => d.consult_id === short.consult_id && d.event === 'ended' && ended.push(d));
  await until(() => ended.length === 1, { what: 'the short consultation ends', timeout: 15000 });
  assert.equal(ended[0].remaining_s, 0);
  await assert.rejects(cu.send({ chat_type: 3, to_id: short.consult_id, msg_type: 0, msg: 'too late' }), (e) => e.code === 410);
  assert.deepEqual(cu.pending(), []);
});
