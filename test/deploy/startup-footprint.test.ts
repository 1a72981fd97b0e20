/**
 * What an idle agent has loaded (issue 6: idle RSS <= 64 MiB). bin/ runs the
 * agent bundled into one file (scripts/bundle.mjs): no ES module loader, no
 * module records. Each module kept out of a plain start (no --proxy, no
 * --register) is resident memory an agent never uses; this pins those choices
 * down so a new static import does not quietly bring them back. The real
 * executable, connected to a control plane on loopback, with a resolve hook
 * preloaded (helpers/module-trace.ts), and the bundle's own file list.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { TOKEN, agentEnv, spawnAgent, startPlane, startWolf, type SpawnedAgent } from '../helpers/harness.js';

const TRACE = fileURLToPath(new URL('./helpers/module-trace.js', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../../../build/wolf-revdial-client.cjs', import.meta.url));

interface ModuleReport {
  resolved: string[];
  builtins: string[] | null;
}

/** Asks the traced agent for its report (SIGUSR2) and reads the line back. */
async function moduleReport(agent: SpawnedAgent): Promise<ModuleReport> {
  const from = agent.stderr().length;
  agent.child.kill('SIGUSR2');
  for (;;) {
    const line = /^MODULES (.*)$/m.exec(agent.stderr().slice(from));
    if (line?.[1]) return JSON.parse(line[1]) as ModuleReport;
    await once(agent.child.stderr!, 'data');
  }
}

/** `package/path/inside` for each resolved file under node_modules. */
function packageFiles(report: ModuleReport): string[] {
  return report.resolved.filter((u) => u.includes('/node_modules/')).map((u) => u.slice(u.lastIndexOf('/node_modules/') + 14));
}

/** `package/path/inside` of each node_modules file esbuild put in the bundle (its `// node_modules/...` markers). */
function bundledFiles(): string[] {
  return [...readFileSync(BUNDLE, 'utf8').matchAll(/^\/\/ node_modules\/(\S+)$/gm)].map((m) => m[1]!);
}

test('bin/ runs the one-file bundle; an idle agent loads neither proxy agent nor undici, and the bundle holds no prom-client extras', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const env = agentEnv({
    HELIX_API_URL: plane.url,
    WOLF_ID: 'footprint',
    RUNNER_TOKEN: TOKEN,
    WOLF_LOCAL_ADDR: local,
    // Metrics on, as users run it (default metrics included), on a free port.
    REVDIAL_METRICS_ADDR: '127.0.0.1:0',
    NODE_OPTIONS: `--import=${TRACE}`,
  });
  const agent = spawnAgent(t, env);
  await plane.waitForRunner('wolf-footprint', 15_000);
  await agent.logs.waitFor((l) => l.msg.startsWith('RevDial listener ready'));
  const report = await moduleReport(agent);
  agent.child.kill('SIGTERM');
  assert.equal((await agent.exited).code, 0);

  // What runs is the bundle: its file resolved, none of the compiled modules
  // under build/src, and from node_modules only what the bundle leaves outside.
  // bufferutil being there also shows the trace works and bin/ masks natively.
  assert.ok(
    report.resolved.some((u) => u.endsWith('/build/wolf-revdial-client.cjs')),
    'the bundle is what runs',
  );
  assert.deepEqual(
    report.resolved.filter((u) => u.includes('/build/src/')),
    [],
    'no module of build/src loaded separately',
  );
  const files = packageFiles(report);
  assert.ok(
    files.some((f) => f.startsWith('bufferutil/')),
    'bufferutil (native masking) loaded',
  );
  for (const f of files) assert.match(f, /^(bufferutil|node-gyp-build)\//, `${f} loaded from node_modules, not from the bundle`);
  // undici only with a proxy or --register.
  for (const pkg of ['undici/']) {
    assert.deepEqual(
      files.filter((f) => f.startsWith(pkg)),
      [],
      `${pkg} not loaded`,
    );
  }
  // Node's bundled undici, which `import ... from 'node:http'` would load (ops-server.ts).
  if (report.builtins === null) t.diagnostic('process.moduleLoadList is gone in this Node: bundled undici not checked');
  else
    assert.deepEqual(
      report.builtins.filter((m) => m.includes('internal/deps/undici')),
      [],
    );

  // Plain ASCII, so V8 holds the source at one byte per character (scripts/bundle.mjs
  // escapes what esbuild leaves in dependencies' comments).
  assert.equal(
    readFileSync(BUNDLE).findIndex((b) => b > 0x7f),
    -1,
    'the bundle is plain ASCII',
  );

  // Inside the bundle: what the agent uses, and not what it would only hold as source text.
  const bundled = bundledFiles();
  for (const used of ['ws/lib/websocket.js', 'pino/pino.js', 'prom-client/lib/registry.js', 'prom-client/lib/defaultMetrics.js']) {
    assert.ok(bundled.includes(used), `${used} in the bundle`);
  }
  for (const kept of ['undici/', 'bufferutil/']) {
    assert.deepEqual(
      bundled.filter((f) => f.startsWith(kept)),
      [],
      `${kept} left outside the bundle`,
    );
  }
  // prom-client's index and what only it pulls in: Pushgateway, cluster aggregation, Summary.
  for (const extra of ['prom-client/index.js', 'prom-client/lib/pushgateway.js', 'prom-client/lib/cluster.js', 'prom-client/lib/summary.js', 'tdigest/']) {
    assert.ok(!bundled.some((f) => f.startsWith(extra)), `${extra} not in the bundle`);
  }
});
