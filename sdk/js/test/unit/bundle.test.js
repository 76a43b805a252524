// The CommonJS bundle (mini-programs' "build npm", Node's require) works without ESM: loaded
// as a plain function body, it connects over a scripted transport and sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cjsBundle, DIST_PACKAGE } from '../../scripts/build.js';
import { FakeClock, FakeServer, flush } from '../helpers/fake.js';

test('the CommonJS bundle exports the API and runs', async () => {
  const code = await cjsBundle();
  assert.doesNotMatch(code, /\bimport\s*\(|^import /m, 'no ESM left');
  const module = { exports: {} };
  new Function('module', 'exports', code)(module, module.exports);
  const sdk = module.exports;
  for (const name of ['WxChat', 'WxChatError', 'QrLogin', 'wxLogin', 'uploadFile', 'socketTaskTransport', 'miniProgramStorage']) {
    assert.equal(typeof sdk[name], 'function', name);
  }
  const server = new FakeServer();
  const chat = new sdk.WxChat({ url: 'wss://x/ws', token: 'tok-7', transport: server.transport(), clock: new FakeClock(), storage: sdk.memoryStorage() });
  const p = chat.connect();
  await flush();
  server.last.accept();
  await p;
  const ack = await chat.send({ chat_type: 0, to_id: 8, msg_type: 0, msg: 'from the bundle' });
  assert.equal(ack.seq, 1);
});

test('the committed dist/ is what scripts/build.js makes now (run npm run build after changing src/)', async () => {
  const fs = await import('node:fs');
  const path = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  const code = await cjsBundle();
  assert.equal(fs.readFileSync(path.join(root, 'dist/package.json'), 'utf8'), DIST_PACKAGE);
  for (const f of ['dist/index.js']) {
    assert.equal(fs.readFileSync(path.join(root, f), 'utf8'), code, `${f} is stale`);
  }
  assert.equal(fs.readFileSync(path.join(root, 'dist/index.d.ts'), 'utf8'), fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8'));
});
