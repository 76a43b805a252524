// Prints the size of the SDK as shipped to a page: bundled, minified (esbuild) and gzipped.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const result = await build({
  entryPoints: [path.join(root, 'src/index.js')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2019',
  write: false,
});
const code = result.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 });
console.log(`wxchat-sdk: ${code.length} bytes minified, ${gz.length} bytes minified + gzip`);
