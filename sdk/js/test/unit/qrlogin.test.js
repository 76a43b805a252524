// QrLogin's outcomes other than success, with a scripted transport.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QrLogin } from '../../src/index.js';

function scripted() {
  const t = { sockets: [] };
  t.open = (url, h) => {
    const s = { url, h, closed: null, send: () => true, close: (code) => (s.closed = code) };
    t.sockets.push(s);
    return s;
  };
  return t;
}

test('qrcode_expired rejects with code expired; the app name goes on the URL', async () => {
  const transport = scripted();
  const qr = new QrLogin({ url: 'ws://x/ws/qrlogin', app: 'oa', transport });
  const seen = [];
  qr.on('qrcode_url', (e) => seen.push(e.url));
  const p = qr.start();
  const s = transport.sockets[0];
  assert.equal(s.url, 'ws://x/ws/qrlogin?app=oa');
  s.h.onMessage(JSON.stringify({ message_type: 'qrcode_url', url: 'https://mp.weixin.qq.com/q', expire_seconds: 120 }));
  s.h.onMessage(JSON.stringify({ message_type: 'qrcode_expired' }));
  s.h.onClose(1000, '');
  await assert.rejects(p, (e) => e.code === 'expired');
  assert.deepEqual(seen, ['https://mp.weixin.qq.com/q']);
});

test('an error push rejects with its errcode; a close before any outcome rejects with the close code', async () => {
  const t1 = scripted();
  const p1 = new QrLogin({ url: 'ws://x/ws/qrlogin', transport: t1 }).start();
  t1.sockets[0].h.onMessage(JSON.stringify({ message_type: 'error', msg: 'qrcode/create failed', errcode: 45009 }));
  await assert.rejects(p1, (e) => e.code === 'qr_error' && e.errcode === 45009);
  const t2 = scripted();
  const p2 = new QrLogin({ url: 'ws://x/ws/qrlogin', transport: t2 }).start();
  t2.sockets[0].h.onClose(1013, 'try again later');
  await assert.rejects(p2, (e) => e.code === 1013);
});
