// client_msg_id: the send time first, so a sender's ids grow (the server's dedup index takes
// them at its end), then enough randomness that two devices never collide.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newClientMsgId } from '../../src/index.js';
import { setup, accept } from '../helpers/setup.js';

test('32 hex characters: the time in milliseconds, then 20 random digits', () => {
  const t = Date.UTC(2026, 11, 3, 12, 0, 0, 5);
  const id = newClientMsgId(t);
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.equal(parseInt(id.slice(0, 12), 16), t);
  assert.notEqual(newClientMsgId(t).slice(12), id.slice(12), 'random part differs within one millisecond');
});

test('a clock that gives no number still yields a well-formed id', () => {
  for (const bad of [NaN, undefined, Infinity, -5]) assert.match(newClientMsgId(bad), /^0{12}[0-9a-f]{20}$/);
});

test('ids made later sort after earlier ones, as strings', () => {
  const ids = [];
  for (let t = 1_700_000_000_000; t < 1_700_000_000_000 + 5000; t += 7) ids.push(newClientMsgId(t));
  assert.deepEqual([...ids].sort(), ids);
  // Across a change in the number of hex digits of the time, too (padded to 12).
  assert.ok(newClientMsgId(0xfffffffff) < newClientMsgId(0x1000000000));
});

test('without Web Crypto (mini-programs) the given random source fills the random part', () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
  Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true });
  try {
    const digits = [0.0, 0.99, 0.5];
    let i = 0;
    const id = newClientMsgId(255, () => digits[i++ % digits.length]);
    assert.equal(id, '0000000000ff' + '0f8'.repeat(7).slice(0, 20));
  } finally {
    Object.defineProperty(globalThis, 'crypto', saved);
  }
});

test('send() stamps its id with the client clock', async () => {
  const c = setup();
  c.clock.t = 1_764_763_200_123;
  c.chat.connect();
  await accept(c);
  await c.chat.send({ chat_type: 0, to_id: 8, msg_type: 0, msg: 'hi' });
  const id = c.server.last.sentOf('send')[0].client_msg_id;
  assert.equal(parseInt(id.slice(0, 12), 16), 1_764_763_200_123);
});
