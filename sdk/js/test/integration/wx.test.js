// The mini-program path end to end against the real server: wxLogin through a fake WeChat
// (jscode2session), the SocketTask transport of a faithful fake `wx`, wx storage, the app
// lifecycle (hide closes, show reconnects and catches up), a mini-program restart with a
// message still in the outbox, and wx.uploadFile with the form-data token.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import crypto from 'node:crypto';
import { WxChat, wxLogin, wxDecrypt, memoryStorage, WxChatError } from '../../src/index.js';
import { TestServer } from '../helpers/server.js';
import { startFakeWechat, APPID, SESSION_KEY } from '../helpers/fake-wechat.js';
import { createFakeWx } from '../helpers/fake-wx.js';
import { until, nextEvent } from '../helpers/wait.js';

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

test('mini-program: wx.login, SocketTask chat, onAppHide / onAppShow, restart with a queued message, uploadFile', { timeout: 60000 }, async () => {
  const wechat = await startFakeWechat();
  cleanups.push(() => wechat.close());
  const server = new TestServer(wechat.appToml('mp'));
  cleanups.push(() => server.stop());
  await server.start();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wxchat-sdk-wx-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const wx = createFakeWx({ openid: 'o-mini-1' });
  // A bad code first: the server passes WeChat's errcode on.
  const badWx = { ...wx, login: ({ success }) => success({ code: 'bad' }) };
  await assert.rejects(wxLogin({ wx: badWx, baseUrl: server.httpUrl, app: 'mp' }), (e) => e instanceof WxChatError && e.code === 400 && e.errcode === 40029);

  const login = await wxLogin({ wx, baseUrl: server.httpUrl, app: 'mp', userInfo: { nickName: '小程序用户', avatarUrl: 'https://img.example.com/a.png' } });
  assert.match(login.token, /^[0-9a-f]{64}$/);
  assert.ok(wechat.calls.includes('/sns/jscode2session'));

  // wx.getPhoneNumber's {encryptedData, iv}, as WeChat makes it with the login's session key.
  const phone = { phoneNumber: '13800138000', countryCode: '86', watermark: { appid: APPID, timestamp: 1700000000 } };
  const iv = crypto.randomBytes(16);
  const cipher = crypto.createCipheriv('aes-128-cbc', Buffer.from(SESSION_KEY, 'base64'), iv);
  const encryptedData = Buffer.concat([cipher.update(JSON.stringify(phone)), cipher.final()]).toString('base64');
  const decrypted = await wxDecrypt({ wx, baseUrl: server.httpUrl, token: login.token, encryptedData, iv: iv.toString('base64'), app: 'mp' });
  assert.equal(decrypted.phoneNumber, '13800138000');

  // The other side: a web user on Node's ws, a friend of the mini-program user.
  const web = await server.api('user', { app_uid: 'web-1', name: 'Web' });
  await server.api('friend_add', { uid: web.uid, friend_id: login.uid });
  const convId = `p_${Math.min(web.uid, login.uid)}_${Math.max(web.uid, login.uid)}`;
  const peer = new WxChat({ url: server.wsUrl, token: web.token, WebSocket, storage: memoryStorage() });
  const peerGot = [];
  peer.on('message', (m) => peerGot.push(m));
  cleanups.push(() => peer.close());
  await peer.connect();

  let logins = 0;
  const getToken = async () => {
    logins++;
    return (await wxLogin({ wx, baseUrl: server.httpUrl, app: 'mp' })).token;
  };
  const mini = new WxChat({ url: server.wsUrl, wx, getToken });
  cleanups.push(() => mini.close());
  const got = [];
  mini.on('message', (m) => got.push(m));
  await mini.connect();
  assert.equal(mini.uid, login.uid);
  assert.equal(logins, 1);
  assert.equal(wx.tasks.length, 1, 'the SocketTask transport was used');

  // Both directions.
  const ack = await mini.send({ chat_type: 0, to_id: web.uid, msg_type: 0, msg: 'from the mini-program' });
  assert.equal(ack.conv_id, convId);
  await peer.send({ chat_type: 0, to_id: login.uid, msg_type: 0, msg: 'from the web' });
  await until(() => got.length === 2 && peerGot.length === 2, { what: 'both messages on both sides' });
  assert.deepEqual(got.map((m) => [m.seq, m.msg]), [[1, 'from the mini-program'], [2, 'from the web']]);
  assert.ok(wx.storage.get(`wxchat:seqs:${login.uid}`), 'seqs live in wx storage');

  // onAppHide: the socket is closed cleanly, nothing reconnects while hidden.
  const task = wx.tasks[0];
  const closed = new Promise((resolve) => task.onClose(resolve));
  wx.hide();
  assert.deepEqual(task.closedWith, { code: 1000, reason: 'app hidden' });
  assert.equal(mini.state, 'disconnected');
  await closed;
  await peer.send({ chat_type: 0, to_id: login.uid, msg_type: 0, msg: 'while hidden 1' });
  await peer.send({ chat_type: 0, to_id: login.uid, msg_type: 0, msg: 'while hidden 2' });
  assert.equal(wx.tasks.length, 1);

  // onAppShow: reconnect at once and catch up with sync.
  wx.show();
  await until(() => got.length === 4, { what: 'the messages sent while hidden' });
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4]);
  assert.deepEqual(got.slice(2).map((m) => m.msg), ['while hidden 1', 'while hidden 2']);
  assert.equal(wx.tasks.length, 2);

  // A message sent while hidden stays in the outbox (wx storage); the mini-program is then
  // killed and restarted: the new instance sends it once and reports it on 'sent'.
  const task2 = wx.tasks[1];
  const closed2 = new Promise((resolve) => task2.onClose(resolve));
  wx.hide();
  await closed2;
  const orphan = mini.send({ chat_type: 0, to_id: web.uid, msg_type: 0, msg: 'queued before a restart' });
  orphan.catch(() => {});
  assert.equal(JSON.parse(wx.storage.get('wxchat:outbox')).items.length, 1);
  mini.close(); // the old JS context is gone; its promise never settles

  const restarted = new WxChat({ url: server.wsUrl, wx, getToken });
  cleanups.push(() => restarted.close());
  const got2 = [];
  restarted.on('message', (m) => got2.push(m));
  const sent = nextEvent(restarted, 'sent');
  await restarted.connect();
  const sentAck = await sent;
  assert.equal(sentAck.args.msg, 'queued before a restart');
  assert.equal(sentAck.seq, 5);
  await until(() => peerGot.some((m) => m.msg === 'queued before a restart'), { what: 'the peer gets the queued message' });
  assert.deepEqual(got2.map((m) => m.seq), [5], 'nothing emitted twice after the restart');
  assert.equal(peerGot.filter((m) => m.msg === 'queued before a restart').length, 1);
  assert.deepEqual(restarted.pending(), []);

  // uploadFile with the token as a form field, then an image message with the URL.
  const png = Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010806000000', 'hex');
  const file = path.join(tmp, 'pic.png');
  fs.writeFileSync(file, png);
  const up = await restarted.upload(file);
  assert.match(up.url, /^\/files\/[0-9a-f]{64}\.png$/);
  assert.equal(up.size, png.length);
  const served = Buffer.from(await (await fetch(server.httpUrl + up.url)).arrayBuffer());
  assert.deepEqual(served, png);
  await restarted.send({ chat_type: 0, to_id: web.uid, msg_type: 1, msg: { url: up.url, size: up.size } });
  await until(() => peerGot.some((m) => m.msg_type === 1), { what: 'the image message' });
  assert.equal(peerGot.find((m) => m.msg_type === 1).msg.url, up.url);

  assert.equal(wx.maxOpenSockets, 1, 'never more than one socket at a time');
});
