/**
 * What ships is kept apart from what helps: the agent (src/agent/) never
 * imports the control-plane side, the stand-in Wolf or the demos (dev/), nor
 * the tests or the benchmark. Checked twice: on the sources, following every
 * import from src/agent/main.ts (static, re-export, dynamic, type-only), and
 * on the bundle bin/ runs, whose module markers name each file esbuild put in.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ENTRY = join(ROOT, 'src/agent/main.ts');
const BUNDLE = join(ROOT, 'build/wolf-revdial-client.cjs');
const HELPERS = ['dev/', 'test/', 'bench/', 'scripts/'];
/** Files outside src/agent/ the agent may import: package.json, for its version. */
const SHIPPED_OUTSIDE = ['package.json'];

interface ImportSite {
  from: string;
  specifier: string;
}

/** Every module specifier in one file; `null` for a dynamic import whose argument is not a string literal. */
function specifiers(file: string): (string | null)[] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2023, true, ts.ScriptKind.TS);
  const found: (string | null)[] = [];
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push(node.moduleSpecifier.text);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const e = node.moduleReference.expression;
      found.push(ts.isStringLiteral(e) ? e.text : null);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0];
      found.push(arg && ts.isStringLiteralLike(arg) ? arg.text : null);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push(node.argument.literal.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** `./x.js` next to `from` as the TypeScript source it compiles from. */
function resolveRelative(from: string, specifier: string): string {
  const target = resolve(dirname(from), specifier);
  const candidates = [target.replace(/\.js$/, '.ts'), target, `${target}.ts`, join(target, 'index.ts')];
  const hit = candidates.find((c) => existsSync(c) && c.endsWith('.ts'));
  return hit ?? target;
}

/** The files reachable from `entry` through relative imports, and every import site met on the way. */
function reachable(entry: string): { files: Set<string>; sites: ImportSite[]; opaque: string[] } {
  const files = new Set<string>();
  const sites: ImportSite[] = [];
  const opaque: string[] = [];
  const queue = [entry];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (files.has(file)) continue;
    files.add(file);
    if (!file.endsWith('.ts') || !existsSync(file)) continue;
    for (const specifier of specifiers(file)) {
      if (specifier === null) {
        opaque.push(relative(ROOT, file));
        continue;
      }
      sites.push({ from: relative(ROOT, file), specifier });
      if (specifier.startsWith('.')) queue.push(resolveRelative(file, specifier));
    }
  }
  return { files, sites, opaque };
}

test('nothing reachable from src/agent/main.ts imports from dev/, test/, bench/ or scripts/', () => {
  const { files, sites, opaque } = reachable(ENTRY);
  const shipped = [...files].map((f) => relative(ROOT, f)).sort();
  // The walk must have found the agent itself, or the check below proves nothing.
  for (const module of ['src/agent/cli.ts', 'src/agent/control/supervisor.ts', 'src/agent/control/session.ts', 'src/agent/tunnel/pickup.ts']) {
    assert.ok(shipped.includes(module), `the import walk from main.ts reaches ${module}`);
  }
  const outside = shipped.filter((f) => !f.startsWith('src/agent/') && !SHIPPED_OUTSIDE.includes(f));
  assert.deepEqual(
    outside.filter((f) => HELPERS.some((h) => f.startsWith(h))),
    [],
    'the agent imports development code',
  );
  assert.deepEqual(outside, [], 'every relative import of the agent stays under src/agent/ (or is package.json)');
  // A package import cannot reach dev/ either: no path-like or self-referencing specifiers.
  const suspicious = sites.filter((s) => !s.specifier.startsWith('.') && (s.specifier.startsWith('/') || s.specifier.startsWith('wolf-revdial-client')));
  assert.deepEqual(suspicious, [], 'absolute or self-referencing imports in the agent');
  assert.deepEqual(opaque, [], 'a dynamic import whose target is not a string literal cannot be checked');
});

test('the bundle bin/ runs holds the agent and no module from dev/, test/ or bench/', () => {
  // esbuild marks each module it inlines with a `// <path>` comment line.
  const markers = [...readFileSync(BUNDLE, 'utf8').matchAll(/^\/\/ (build\/\S+)$/gm)].map((m) => m[1]!);
  assert.ok(markers.includes('build/src/agent/main.js'), 'the bundle holds build/src/agent/main.js');
  assert.ok(markers.includes('build/src/agent/control/session.js'), 'the bundle holds the control session');
  const helpers = [...new Set(markers.filter((m) => HELPERS.some((h) => m.startsWith(`build/${h}`))))];
  assert.deepEqual(helpers, [], 'development modules in the bundle');
});
