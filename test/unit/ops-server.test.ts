/**
 * The operations server with a real agent, control plane and stand-in Wolf
 * on loopback: probes follow the control connection, metric values equal the
 * traffic that went through the tunnel.
 */
import assert from 'node:assert/strict';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { AgentMetrics, fanOut } from '../../src/agent/ops/metrics.js';
import { OpsServer, type Readiness } from '../../src/agent/ops/server.js';
import type { Agent } from '../../src/agent/control/supervisor.js';
import { LogCapture, readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';
import { BlackholeRelay, ObserverEvents, get, sample } from '../helpers/ops.js';

function readinessOf(agent: Agent): () => Readiness {
  return () => {
    if (agent.draining) return { ready: false, reason: 'shutting down' };
    if (agent.connected) return { ready: true };
    return { ready: false, reason: `control connection down since ${new Date(agent.disconnectedSince).toISOString()}` };
  };
}

async function startOps(t: import('node:test').TestContext, agent: Agent, metrics: AgentMetrics): Promise<number> {
  const ops = new OpsServer({
    address: { host: '127.0.0.1', port: 0 },
    readiness: readinessOf(agent),
    metrics: () => metrics.render(),
    log: new LogCapture().log,
  });
  const { port } = await ops.listen();
  t.after(() => ops.close());
  return port;
}

test('probes follow the control connection and metrics count the bytes of a download', async (t) => {
  const plane = await startPlane(t);
  const { wolf, local } = await startWolf(t);
  // What Wolf's sockets really wrote and read: the numbers the metrics must equal.
  const wolfSockets: Socket[] = [];
  wolf.server.on('connection', (s: Socket) => wolfSockets.push(s));

  const metrics = new AgentMetrics();
  const events = new ObserverEvents();
  const connected = events.next('controlConnected');
  const { agent, runnerId } = startAgent(t, plane, local, { observer: fanOut(metrics, events), reconnectMaxMs: 2_000 });
  const port = await startOps(t, agent, metrics);
  await connected;

  assert.deepEqual(await get(port, '/readyz'), { status: 200, type: 'application/json', body: '{"ready":true}' });
  const health = await get(port, '/healthz');
  assert.equal(health.status, 200);
  assert.equal((JSON.parse(health.body) as { status: string }).status, 'ok');

  const size = 3 * 1024 * 1024 + 17;
  const ended = events.next<string>('tunnelEnded');
  const res = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=m` });
  const body = await readBody(res);
  assert.equal(body.length, size);
  assert.equal(await ended, 'ok');
  assert.equal(wolfSockets.length, 1);
  const wolfSocket = wolfSockets[0]!;
  if (!wolfSocket.closed) await new Promise((r) => wolfSocket.once('close', r));

  const m = await get(port, '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.type, /^text\/plain; version=0\.0\.4/);
  const text = m.body;
  assert.equal(sample(text, 'revdial_tunnel_bytes_total', { direction: 'from_local' }), wolfSocket.bytesWritten);
  assert.equal(sample(text, 'revdial_tunnel_bytes_total', { direction: 'to_local' }), wolfSocket.bytesRead);
  assert.ok(wolfSocket.bytesWritten > size, 'the response carries headers and the whole body');
  assert.equal(sample(text, 'revdial_tunnels_total', { result: 'ok' }), 1);
  assert.equal(sample(text, 'revdial_tunnels_total', { result: 'local_dial_failed' }), 0);
  assert.equal(sample(text, 'revdial_tunnels_active'), 0);
  assert.equal(sample(text, 'revdial_tunnel_setup_seconds_count'), 1);
  assert.equal(sample(text, 'revdial_local_dial_seconds_count'), 1);
  assert.equal(sample(text, 'revdial_control_connected'), 1);
  assert.equal(sample(text, 'revdial_control_connects_total'), 1);
  assert.equal(sample(text, 'revdial_registry_heartbeats_total', { result: 'ok' }), 0);
  assert.ok(sample(text, 'process_cpu_seconds_total') !== undefined, 'default process metrics are served');
  // Labels never carry a runner id.
  assert.ok(!text.includes(runnerId));

  // The control plane drops the connection: not ready at once, with a reason.
  const lost = events.next<string>('controlDisconnected');
  const reconnected = events.next('controlConnected');
  plane.dialer(runnerId)?.terminate();
  assert.equal(await lost, ErrorCodes.CONTROL_CLOSED);
  // The agent waits at least 500 ms before coming back (reconnectMaxMs below).
  const down = await get(port, '/readyz');
  assert.equal(down.status, 503);
  const reason = JSON.parse(down.body) as { ready: boolean; reason: string };
  assert.equal(reason.ready, false);
  assert.match(reason.reason, /^control connection down since \d{4}-\d\d-\d\dT/);
  await reconnected;
  assert.equal((await get(port, '/readyz')).status, 200);
  const after = (await get(port, '/metrics')).body;
  assert.equal(sample(after, 'revdial_control_disconnects_total', { reason: 'closed' }), 1);
  assert.equal(sample(after, 'revdial_control_connects_total'), 2);
});

test('/readyz is 503 while the control plane is unreachable, and names since when', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const events = new ObserverEvents();
  const failed = events.next<string>('controlAttemptFailed');
  // Port 1 on loopback: nothing listens, every attempt is refused.
  const { agent } = startAgent(t, plane, local, { apiUrl: new URL('http://127.0.0.1:1'), observer: fanOut(metrics, events) });
  const port = await startOps(t, agent, metrics);
  assert.equal(await failed, ErrorCodes.CONNECT_FAILED);
  const r = await get(port, '/readyz');
  assert.equal(r.status, 503);
  assert.match((JSON.parse(r.body) as { reason: string }).reason, /^control connection down since /);
  assert.equal((await get(port, '/healthz')).status, 200);
  const text = (await get(port, '/metrics')).body;
  assert.equal(sample(text, 'revdial_control_connected'), 0);
  assert.ok((sample(text, 'revdial_control_connect_failures_total', { reason: 'connect_failed' }) ?? 0) >= 1);
});

test('a blackholed control path turns /readyz to 503 once --ping-timeout passes', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const planePort = (plane.server.address() as AddressInfo).port;
  const relay = new BlackholeRelay({ host: '127.0.0.1', port: planePort });
  const relayPort = await relay.listen(t);
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const events = new ObserverEvents();
  const connected = events.next('controlConnected');
  const pingTimeoutMs = 1_000;
  const { agent } = startAgent(t, plane, local, {
    apiUrl: new URL(`http://127.0.0.1:${relayPort}`),
    observer: fanOut(metrics, events),
    pingIntervalMs: 200,
    pingTimeoutMs,
    // Keep the agent from coming back through the dead relay during the check.
    reconnectMaxMs: 60_000,
  });
  const port = await startOps(t, agent, metrics);
  await connected;
  assert.equal((await get(port, '/readyz')).status, 200);

  const started = Date.now();
  const lost = events.next<string>('controlDisconnected', 10_000);
  relay.blackhole();
  assert.equal(await lost, ErrorCodes.PING_TIMEOUT);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= pingTimeoutMs - 250, `flipped after ${elapsed} ms, before the ping timeout`);
  assert.ok(elapsed < pingTimeoutMs + 4_000, `flipped after ${elapsed} ms`);
  assert.equal((await get(port, '/readyz')).status, 503);
  const text = (await get(port, '/metrics')).body;
  assert.equal(sample(text, 'revdial_control_disconnects_total', { reason: 'ping_timeout' }), 1);
  assert.equal(sample(text, 'revdial_control_connected'), 0);
});

test('refused tunnels count by result and leave the active gauge alone', async (t) => {
  const plane = await startPlane(t);
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const events = new ObserverEvents();
  const connected = events.next('controlConnected');
  // Nothing listens on port 1: the local dial fails.
  const { agent, runnerId } = startAgent(t, plane, '127.0.0.1:1', { observer: fanOut(metrics, events) });
  const port = await startOps(t, agent, metrics);
  await connected;
  const ended = events.next<string>('tunnelEnded');
  await assert.rejects(plane.request(runnerId, { path: '/api/v1/system/health' }));
  assert.equal(await ended, 'local_dial_failed');

  const dialer = plane.dialer(runnerId);
  assert.ok(dialer);
  const refused = events.next<string>('tunnelEnded');
  dialer.sendRaw(`${JSON.stringify({ command: 'conn-ready', connPath: '//evil.example/revdial' })}\n`);
  assert.equal(await refused, 'invalid_conn_path');

  const text = (await get(port, '/metrics')).body;
  assert.equal(sample(text, 'revdial_tunnels_total', { result: 'local_dial_failed' }), 1);
  assert.equal(sample(text, 'revdial_tunnels_total', { result: 'invalid_conn_path' }), 1);
  assert.equal(sample(text, 'revdial_tunnels_total', { result: 'ok' }), 0);
  assert.equal(sample(text, 'revdial_tunnels_active'), 0);
  assert.equal(sample(text, 'revdial_tunnel_bytes_total', { direction: 'to_local' }), 0);
});

test('unknown paths answer 404, other methods 405', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const { agent } = startAgent(t, plane, local, { observer: metrics });
  const port = await startOps(t, agent, metrics);
  assert.equal((await get(port, '/nope')).status, 404);
  assert.equal((await get(port, '/metrics', 'POST')).status, 405);
  const head = await get(port, '/healthz', 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
});

test('a port in use is a coded error naming the address and the variable', async (t) => {
  const log = new LogCapture();
  const first = new OpsServer({
    address: { host: '127.0.0.1', port: 0 },
    readiness: () => ({ ready: true }),
    metrics: () => Promise.resolve({ contentType: 'text/plain', body: '' }),
    log: log.log,
  });
  const { port } = await first.listen();
  t.after(() => first.close());
  const second = new OpsServer({
    address: { host: '127.0.0.1', port },
    readiness: () => ({ ready: true }),
    metrics: () => Promise.resolve({ contentType: 'text/plain', body: '' }),
    log: log.log,
  });
  await assert.rejects(second.listen(), (err: Error & { code?: string; cause?: { code?: string } }) => {
    assert.equal(err.code, ErrorCodes.OPS_LISTEN_FAILED);
    assert.equal(err.cause?.code, 'EADDRINUSE');
    return true;
  });
});
