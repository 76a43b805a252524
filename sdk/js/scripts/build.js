// Builds the bundle for consumers that cannot load the ESM sources: dist/index.js, CommonJS,
// for Node's require() and for WeChat's "build npm" (package.json "miniprogram": "dist" makes
// the developer tools copy this directory into miniprogram_npm). dist/package.json says
// "commonjs", so Node reads the file as CommonJS although the package itself is ESM.
// ES2017, so the mini-program base library needs no further down-levelling. dist/ is committed,
// because an app that depends on the SDK as `file:../sdk/js` (examples/miniprogram) gets a
// symlink and no build step; test/unit/bundle.test.js fails when it is stale.
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** dist/'s own package.json: its .js files are CommonJS. */
export const DIST_PACKAGE = '{ "type": "commonjs" }\n';

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
  fs.rmSync(path.join(root, 'dist/wxchat-sdk.cjs'), { force: true });
  fs.writeFileSync(path.join(root, 'dist/index.js'), code);
  fs.writeFileSync(path.join(root, 'dist/package.json'), DIST_PACKAGE);
  fs.copyFileSync(path.join(root, 'index.d.ts'), path.join(root, 'dist/index.d.ts'));
  console.log(`dist/: ${code.length} bytes (CommonJS, ES2017)`);
}
