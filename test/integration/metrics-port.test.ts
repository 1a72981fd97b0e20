/**
 * Several agents on one host (issue 15, part 1): with no --metrics-addr given,
 * a taken default port never stops the agent. The next free port of
 * 127.0.0.1:9464-9473 is served and logged in one line; with none free the
 * agent warns and carries on without the endpoints. (An address set
 * explicitly stays fatal: ops-config.test.ts.)
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { OpsServer } from '../../src/agent/ops/server.js';
import { LogCapture, TOKEN, agentEnv, readBody, spawnAgent, startPlane, startWolf } from '../helpers/harness.js';
import { get } from '../helpers/ops.js';

const FIRST = 9464;
const LAST = 9473;

/** Holds a port (unless something else already does: then it is taken all the same). */
async function occupy(t: TestContext, port: number): Promise<void> {
  const server = net.createServer();
  const held = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  if (held) t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
}

function envWithoutMetricsAddr(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = agentEnv(extra);
  delete env.REVDIAL_METRICS_ADDR;
  return env;
}

function opsServer(port: number, ports: number, log: LogCapture): OpsServer {
  return new OpsServer({
    address: { host: '127.0.0.1', port },
    ports,
    readiness: () => ({ ready: true }),
    metrics: () => Promise.resolve({ contentType: 'text/plain', body: '' }),
    log: log.log,
  });
}

test('OpsServer with a range: a port in use moves to the next; all in use is REVDIAL_OPS_LISTEN_FAILED naming the range', async (t) => {
  const log = new LogCapture();
  const first = opsServer(0, 1, log);
  const { port } = await first.listen();
  t.after(() => first.close());
  const second = opsServer(port, 3, log);
  const bound = await second.listen();
  t.after(() => second.close());
  assert.ok(bound.port > port && bound.port <= port + 2, `bound ${bound.port}, asked ${port}`);
  assert.equal((await get(bound.port, '/healthz')).status, 200);
  await occupy(t, port + 1);
  await occupy(t, port + 2);
  const third = opsServer(port, 3, log);
  await assert.rejects(third.listen(), (err: Error & { code?: string }) => {
    assert.equal(err.code, ErrorCodes.OPS_LISTEN_FAILED);
    assert.ok(err.message.includes(`127.0.0.1:${port}-${port + 2}`), err.message);
    return true;
  });
});

test(`the executable, no --metrics-addr, ${FIRST} taken: serves the next free port of ${FIRST}-${LAST}, logs it, and works`, async (t) => {
  await occupy(t, FIRST);
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const agent = spawnAgent(t, envWithoutMetricsAddr({ HELIX_API_URL: plane.url, WOLF_ID: 'crowded-1', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local }));
  const serving = await agent.logs.waitFor((l) => l.msg.startsWith('Serving /healthz'), 15_000);
  const port = Number(String(serving.metricsAddr).split(':').pop());
  assert.ok(port > FIRST && port <= LAST, `served ${String(serving.metricsAddr)}`);
  assert.equal(serving.metricsAddrTaken, `127.0.0.1:${FIRST}`);
  assert.match(serving.msg, new RegExp(`on http://127\\.0\\.0\\.1:${port} \\(127\\.0\\.0\\.1:${FIRST} is in use\\)`));
  await plane.waitForRunner('wolf-crowded-1', 15_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  assert.equal((await get(port, '/readyz')).status, 200);
  const res = await plane.request('wolf-crowded-1', { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.equal(agent.child.exitCode, null);
});

test(`the executable, no --metrics-addr, all of ${FIRST}-${LAST} taken: a warning, and the tunnel works`, async (t) => {
  for (let p = FIRST; p <= LAST; p++) await occupy(t, p);
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const agent = spawnAgent(t, envWithoutMetricsAddr({ HELIX_API_URL: plane.url, WOLF_ID: 'crowded-2', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local }));
  const warned = await agent.logs.waitFor((l) => l.code === ErrorCodes.OPS_LISTEN_FAILED, 15_000);
  assert.equal(warned.level, 'warn');
  assert.match(warned.msg, new RegExp(`${FIRST}-${LAST}`));
  await plane.waitForRunner('wolf-crowded-2', 15_000);
  const res = await plane.request('wolf-crowded-2', { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.equal(agent.child.exitCode, null, 'still running');
  assert.equal(agent.stderr(), '');
});

test('an explicit --metrics-addr in use is still fatal (exit 2)', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const port = (busy.address() as AddressInfo).port;
  const agent = spawnAgent(
    t,
    agentEnv({ HELIX_API_URL: 'http://127.0.0.1:9', WOLF_ID: 'explicit', RUNNER_TOKEN: TOKEN, REVDIAL_METRICS_ADDR: `127.0.0.1:${port}` }),
  );
  const { code } = await agent.exited;
  assert.equal(code, 2);
});
