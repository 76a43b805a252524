// The two built-in transports against scripted platform objects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { socketTaskTransport, webSocketTransport } from '../../src/index.js';

function handlers() {
  const log = [];
  return {
    log,
    onOpen: () => log.push(['open']),
    onMessage: (t) => log.push(['message', t]),
    onClose: (code, reason) => log.push(['close', code, reason]),
    onError: () => log.push(['error']),
  };
}

test('socketTaskTransport: SocketTask events map to the handlers; send waits for open; one close only', () => {
  let task;
  const calls = [];
  const api = {
    connectSocket(req) {
      calls.push(req);
      const cb = {};
      task = {
        cb,
        sent: [],
        onOpen: (f) => (cb.open = f),
        onMessage: (f) => (cb.message = f),
        onClose: (f) => (cb.close = f),
        onError: (f) => (cb.error = f),
        send: (o) => task.sent.push(o.data),
        close: (o) => (task.closed = o),
      };
      return task;
    },
  };
  const h = handlers();
  const s = socketTaskTransport(api).open('wss://chat.example.com/ws', h);
  assert.equal(calls[0].url, 'wss://chat.example.com/ws');
  assert.equal('header' in calls[0], false);
  assert.equal(typeof calls[0].complete, 'function', 'uni-app returns the SocketTask only with a callback');
  assert.equal(s.send('early'), false);
  task.cb.open({});
  assert.equal(s.send('{"cmd":"ping"}'), true);
  assert.deepEqual(task.sent, ['{"cmd":"ping"}']);
  task.cb.message({ data: '{"cmd":"typing"}' });
  task.cb.message({ data: new ArrayBuffer(2) });
  task.cb.close({});
  task.cb.close({ code: 1000, reason: 'again' });
  assert.deepEqual(h.log, [['open'], ['message', '{"cmd":"typing"}'], ['close', 1006, '']]);
  assert.equal(s.send('late'), false);
  s.close(1000, 'bye');
  assert.deepEqual({ code: task.closed.code, reason: task.closed.reason }, { code: 1000, reason: 'bye' });
});

test('socketTaskTransport: a platform that returns no task reports a close', async () => {
  const h = handlers();
  socketTaskTransport({ connectSocket: () => undefined }).open('wss://x/ws', h);
  await Promise.resolve();
  assert.deepEqual(h.log.map((e) => e[0]), ['error', 'close']);
});

test('webSocketTransport: text frames only, send only while OPEN, close reported once', () => {
  let ws;
  class FakeWS {
    constructor(url) {
      ws = this;
      this.url = url;
      this.readyState = 0;
      this.sent = [];
    }
    send(t) {
      this.sent.push(t);
    }
    close(code, reason) {
      this.closed = [code, reason];
    }
  }
  const h = handlers();
  const s = webSocketTransport(FakeWS).open('ws://x/ws', h);
  assert.equal(s.send('early'), false);
  ws.readyState = 1;
  ws.onopen();
  assert.equal(s.send('hello'), true);
  ws.onmessage({ data: 'text' });
  ws.onmessage({ data: Buffer.from('binary') });
  ws.onclose({ code: 1001, reason: 'going away' });
  ws.onclose({ code: 1006 });
  assert.deepEqual(h.log, [['open'], ['message', 'text'], ['close', 1001, 'going away']]);
  assert.deepEqual(ws.sent, ['hello']);
});
