/**
 * What an idle agent has loaded (issue 6: idle RSS <= 64 MiB). Each module
 * kept out of a plain start (no --proxy, no --register) is resident memory an
 * agent never uses; this pins those choices down so a new static import does
 * not quietly bring them back. The real executable, connected to a control
 * plane on loopback, with a resolve hook preloaded (helpers/module-trace.ts).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { TOKEN, agentEnv, spawnAgent, startPlane, startWolf, type SpawnedAgent } from './helpers/harness.js';

const TRACE = fileURLToPath(new URL('./helpers/module-trace.js', import.meta.url));

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

test('an idle agent without --proxy or --register loads neither proxy agent, undici nor prom-client extras', async (t) => {
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

  const files = packageFiles(report);
  // The trace works: what the agent does use is there.
  for (const used of ['ws/', 'pino/', 'prom-client/lib/registry.js', 'prom-client/lib/defaultMetrics.js']) {
    assert.ok(files.some((f) => f.startsWith(used)), `${used} loaded`);
  }
  // https-proxy-agent (and agent-base, debug) only with a proxy; undici only with --register.
  for (const pkg of ['https-proxy-agent/', 'agent-base/', 'undici/']) {
    assert.deepEqual(files.filter((f) => f.startsWith(pkg)), [], `${pkg} not loaded`);
  }
  // prom-client's index and what only it pulls in: Pushgateway, cluster aggregation, Summary.
  for (const extra of ['prom-client/index.js', 'prom-client/lib/pushgateway.js', 'prom-client/lib/cluster.js', 'prom-client/lib/summary.js', 'tdigest/']) {
    assert.ok(!files.some((f) => f.startsWith(extra)), `${extra} not loaded`);
  }
  // Node's bundled undici, which `import ... from 'node:http'` would load (ops-server.ts).
  if (report.builtins === null) t.diagnostic('process.moduleLoadList is gone in this Node: bundled undici not checked');
  else assert.deepEqual(report.builtins.filter((m) => m.includes('internal/deps/undici')), []);
});
