// Fails the build when the bundle is over Shopify's limit for UI extensions on API 2025-10 and
// later: 64 KB of compressed JavaScript per extension, checked again by Shopify at deploy.
import {readFileSync} from 'node:fs';
import {gzipSync} from 'node:zlib';

const LIMIT = 64 * 1024;
const file = process.argv[2];
const raw = readFileSync(file);
const gzipped = gzipSync(raw, {level: 9}).length;
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`${file}: ${kb(raw.length)} minified, ${kb(gzipped)} gzipped (limit ${kb(LIMIT)})`);
if (gzipped > LIMIT) {
  console.error(`${file} is over the limit`);
  process.exit(1);
}
