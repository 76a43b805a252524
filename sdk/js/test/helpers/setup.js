// Shared setup of the unit tests: a WxChat on a FakeServer with a manual clock.
import assert from 'node:assert/strict';
import { WxChat, memoryStorage } from '../../src/index.js';
import { FakeClock, FakeServer, flush } from './fake.js';

export function setup(extra = {}, shared = {}) {
  const clock = shared.clock || new FakeClock();
  const server = shared.server || new FakeServer();
  const storage = 'storage' in extra ? extra.storage : memoryStorage();
  const chat = new WxChat({
    url: 'ws://chat.test/ws',
    token: 'tok-7',
    transport: server.transport(),
    clock,
    random: () => 0.5,
    ...extra,
    storage,
  });
  const ev = { states: [], messages: [], sent: [], failed: [] };
  chat.on('state', (s) => ev.states.push(s));
  chat.on('message', (m) => ev.messages.push(m));
  chat.on('sent', (a) => ev.sent.push(a));
  chat.on('send_failed', (f) => ev.failed.push(f));
  return { clock, server, chat, storage, ev };
}

export async function nextSocket(ctx) {
  const n = ctx.server.sockets.length;
  for (let i = 0; i < 100 && ctx.server.sockets.length === n; i++) {
    if (!(await ctx.clock.runNext())) break;
  }
  assert.equal(ctx.server.sockets.length, n + 1, 'a new socket');
}

export async function accept(ctx) {
  await flush();
  ctx.server.last.accept();
  await flush();
  assert.equal(ctx.chat.state, 'connected');
}

export { flush };
