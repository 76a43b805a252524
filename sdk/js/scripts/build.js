// Builds the bundles for consumers that cannot load the ESM sources:
//   dist/wxchat-sdk.cjs  CommonJS for Node's require()
//   dist/index.js        CommonJS for WeChat's "build npm" (package.json "miniprogram": "dist"
//                        makes the developer tools copy this directory into miniprogram_npm)
// ES2017, so the mini-program base library needs no further down-levelling. dist/ is committed,
// because an app that depends on the SDK as `file:../sdk/js` (examples/miniprogram) gets a
// symlink and no build step; test/unit/bundle.test.js fails when it is stale.
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The CommonJS bundle as a string (also used by the test that loads it without ESM). */
export async function cjsBundle({ minify = false } = {}) {
  const r = await build({
    entryPoints: [path.join(root, 'src/index.js')],
    bundle: true,
    minify,
    format: 'cjs',
    target: 'es2017',
    platform: 'neutral',
    write: false,
  });
  return r.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const code = await cjsBundle();
  fs.mkdirSync(path.join(root, 'dist'), { recursive: true });
  fs.writeFileSync(path.join(root, 'dist/wxchat-sdk.cjs'), code);
  fs.writeFileSync(path.join(root, 'dist/index.js'), code);
  fs.copyFileSync(path.join(root, 'index.d.ts'), path.join(root, 'dist/index.d.ts'));
  console.log(`dist/: ${code.length} bytes (CommonJS, ES2017)`);
}
