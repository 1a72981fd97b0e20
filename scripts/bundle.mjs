// Bundles the compiled agent (build/src/agent/main.js) into one CommonJS file.
//
//   node scripts/bundle.mjs bin <out>   what bin/wolf-revdial-client and the container run
//   node scripts/bundle.mjs sea <out>   what scripts/package.sh puts in the single executable
//   node scripts/bundle.mjs <kind> <out> <entry>   another entry (default build/src/agent/main.js)
//
// Why a bundle, even where node_modules is at hand: Node's ES module loader
// and the records of the ~150 modules it loads cost resident memory for the
// life of the agent. An idle agent started from build/src/agent/main.js holds about 71 MiB;
// from the `bin` bundle, about 61.5 MiB (issue 6's target is 64).
//
// The two kinds differ only in what stays outside:
// - bin: node_modules sits beside the bundle. The native masking add-on
//   (bufferutil) stays a real package, and so does the module the agent
//   loads only on request: undici (with a proxy or --register). Kept out of the bundle, an agent that does not use them does
//   not even hold their source text.
// - sea: a single executable's `require` reaches built-in modules only, so
//   everything goes inside. A .node add-on cannot load from the blob: in
//   bufferutil's place goes build/src/agent/net/js-mask.js (same interface, masking four
//   bytes at a time in JavaScript).
// utf-8-validate stays outside in both: ws validates text in JS without it (the
// agent only takes binary frames anyway).
import { readFileSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';

const [kind, outfile, entry = 'build/src/agent/main.js'] = process.argv.slice(2);
const KINDS = {
  bin: { external: ['bufferutil', 'utf-8-validate', 'undici'], alias: {} },
  sea: { external: ['utf-8-validate'], alias: { bufferutil: './build/src/agent/net/js-mask.js' } },
};
const options = KINDS[kind];
if (!options || !outfile) {
  console.error('usage: node scripts/bundle.mjs bin|sea <outfile> [entry]   (after tsc: build/src/agent/main.js must exist)');
  process.exit(2);
}

await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  external: options.external,
  alias: options.alias,
  legalComments: 'eof',
  logLevel: 'warning',
  // `import.meta` is empty in a CommonJS bundle: anything that resolved files
  // relative to import.meta.url would break at run time, so it is a build error.
  logOverride: { 'empty-import-meta': 'error' },
});

// ASCII only. esbuild escapes non-ASCII characters in strings and identifiers
// but keeps them in comments (a few dependencies have `’` or `§` there). One
// such character makes V8 hold the whole source as a two-byte string: about
// 1.6 MiB more resident memory for the whole run. A \uXXXX escape means the same
// character in a string, an identifier or a regular expression, and nothing in
// a comment. (test/startup-footprint.test.ts checks the result is plain ASCII.)
const text = readFileSync(outfile, 'utf8');
writeFileSync(
  outfile,
  // Everything outside ASCII, so the range starts at NUL on purpose.
  // eslint-disable-next-line no-control-regex
  text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`),
);
