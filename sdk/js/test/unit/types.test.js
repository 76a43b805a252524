// index.d.ts is hand-written: compile a usage file against it (tsc --strict), so the
// declarations cannot drift from the documented API without a failing test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('index.d.ts type-checks the documented usage (and rejects the misuse marked @ts-expect-error)', () => {
  const tsc = path.join(root, 'node_modules', '.bin', 'tsc');
  const r = spawnSync(tsc, ['-p', path.join(root, 'test/types/tsconfig.json')], { encoding: 'utf8' });
  assert.equal(r.error, undefined, `cannot run tsc: ${r.error}`);
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('every runtime export is declared in index.d.ts, and nothing more', async () => {
  const fs = await import('node:fs');
  const sdk = await import('../../src/index.js');
  const dts = fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export (?:declare )?(?:class|function|const) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(sdk).sort());
});
