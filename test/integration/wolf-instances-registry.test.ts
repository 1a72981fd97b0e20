/**
 * The registry client against the project's control plane with its registry
 * (dev/control-plane/registry*.ts, mounted on a real ControlPlane on
 * loopback): register, heartbeat, register again after a 404 heartbeat,
 * deregister on stop; a control plane without a registry; a registry that
 * hangs never delays a tunnel.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { Agent as UndiciAgent } from 'undici';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import { installRegistryApi } from '../../dev/control-plane/registry-api.js';
import { Registry, type WolfInstance } from '../../dev/control-plane/registry.js';
import { AgentMetrics, type RegistryResult } from '../../src/agent/ops/metrics.js';
import { RegistryClient, type RegistryClientOptions } from '../../src/agent/registry/wolf-instances.js';
import { LogCapture, TOKEN, readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';
import { ObserverEvents, sample } from '../helpers/ops.js';

function withRegistry(plane: ControlPlane): Registry {
  const registry = new Registry();
  installRegistryApi(plane, registry, { authorize: (token) => token === TOKEN });
  return registry;
}

/** Registry observer whose results can be awaited. */
class RegistryEvents extends ObserverEvents {
  registration(result: RegistryResult): void {
    this.emit('registration', result);
  }
  heartbeat(result: RegistryResult): void {
    this.emit('heartbeat', result);
  }
}

function startClient(t: TestContext, plane: ControlPlane, overrides: Partial<RegistryClientOptions> = {}): { client: RegistryClient; logs: LogCapture } {
  const logs = new LogCapture();
  const dispatcher = new UndiciAgent();
  const client = new RegistryClient({
    apiUrl: new URL(plane.url),
    token: () => TOKEN,
    userAgent: 'wolf-revdial-client/test',
    dispatcher,
    instance: { name: 'gpu-box-1', address: 'wolf-gpu-box-1', gpuType: 'nvidia', maxSandboxes: 7 },
    heartbeatIntervalMs: 50,
    log: logs.log,
    ...overrides,
  });
  client.start();
  t.after(async () => {
    await client.stop(1_000);
    await dispatcher.close();
  });
  return { client, logs };
}

test('registers with the PROTOCOL.md fields, heartbeats, registers again after a 404 heartbeat, deregisters on stop', async (t) => {
  const plane = await startPlane(t);
  const registry = withRegistry(plane);
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const registered = once(registry, 'registered') as Promise<[WolfInstance, { again: boolean }]>;
  const { client, logs } = startClient(t, plane, { observer: metrics });

  const [instance] = await registered;
  assert.equal(instance.name, 'gpu-box-1');
  assert.equal(instance.address, 'wolf-gpu-box-1');
  assert.equal(instance.gpu_type, 'nvidia');
  assert.equal(instance.max_sandboxes, 7);
  assert.equal(instance.status, 'online');

  // Three heartbeats reach the registry, and the metric counts exactly those.
  let beats = 0;
  await new Promise<void>((resolve) => {
    const onBeat = (i: WolfInstance): void => {
      assert.equal(i.id, instance.id);
      if (++beats === 3) {
        registry.removeListener('heartbeat', onBeat);
        resolve();
      }
    };
    registry.on('heartbeat', onBeat);
  });
  assert.equal(client.instanceId, instance.id);

  // The control plane loses the instance: the next heartbeat is answered 404
  // and the client registers again, under a new id.
  const again = once(registry, 'registered') as Promise<[WolfInstance, { again: boolean }]>;
  registry.store.delete(instance.id);
  const [second] = await again;
  assert.notEqual(second.id, instance.id);
  await logs.waitFor((l) => l.msg.includes('Registered with the control plane registry') && l.instanceId === second.id);
  assert.equal(client.instanceId, second.id);
  assert.equal(
    logs.count((l) => l.msg.includes('heartbeat answered 404')),
    1,
  );

  const text = await metrics.registry.metrics();
  assert.ok((sample(text, 'revdial_registry_heartbeats_total', { result: 'ok' }) ?? 0) >= 3);
  assert.equal(sample(text, 'revdial_registry_heartbeats_total', { result: 'not_found' }), 1);
  assert.equal(sample(text, 'revdial_registry_registrations_total', { result: 'ok' }), 2);
  assert.equal(sample(text, 'revdial_registry_registered'), 1);

  const gone = once(registry, 'deregistered') as Promise<[WolfInstance]>;
  await client.stop(1_000);
  const [removed] = await gone;
  assert.equal(removed.id, second.id);
  assert.deepEqual(registry.list(), []);
  assert.equal(client.instanceId, undefined);
  assert.equal(sample(await metrics.registry.metrics(), 'revdial_registry_registered'), 0);
  // The token never reaches the logs.
  assert.ok(!logs.raw.some((l) => l.includes(TOKEN)));
});

test('a control plane without a registry gets one warning and slow retries', async (t) => {
  const plane = await startPlane(t);
  const events = new RegistryEvents();
  const { logs } = startClient(t, plane, { observer: events, missingRegistryRetryMs: 20 });
  for (let i = 0; i < 4; i++) assert.equal(await events.next('registration'), 'not_found');
  assert.equal(
    logs.count((l) => l.level === 'warn'),
    1,
  );
  assert.ok(logs.find((l) => l.level === 'warn' && l.status === 404));
});

test('a rejected token is a "rejected" registration, retried', async (t) => {
  const plane = await startPlane(t);
  withRegistry(plane);
  const events = new RegistryEvents();
  startClient(t, plane, { observer: events, token: () => 'wrong-token', registerRetryMs: 20 });
  assert.equal(await events.next('registration'), 'rejected');
  assert.equal(await events.next('registration'), 'rejected');
});

test('a registry that never answers does not delay tunnels', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  // The registry accepts the request and never answers.
  const held: import('node:http').ServerResponse[] = [];
  const arrived = new Promise<void>((resolve) => {
    plane.route('POST', '/api/v1/wolf-instances', (_req, res) => {
      held.push(res);
      resolve();
    });
  });
  t.after(() => {
    for (const res of held) res.destroy();
  });
  const { client } = startClient(t, plane, { requestTimeoutMs: 60_000 });
  await arrived;

  const events = new ObserverEvents();
  const connected = events.next('controlConnected');
  const { runnerId } = startAgent(t, plane, local, { observer: events });
  await connected;
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  assert.equal((JSON.parse((await readBody(res)).toString('utf8')) as { status?: unknown }).status, 'ok');

  await client.stop(200);
  assert.equal(client.instanceId, undefined);
});

test('stop() gives up on a deregistration that never answers after its time limit', async (t) => {
  const plane = await startPlane(t);
  const held: import('node:http').ServerResponse[] = [];
  plane.route('POST', '/api/v1/wolf-instances', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"i-1","status":"online"}');
  });
  const deleteArrived = new Promise<void>((resolve) => {
    plane.route('DELETE', '/api/v1/wolf-instances/i-1', (_req, res) => {
      held.push(res);
      resolve();
    });
  });
  t.after(() => {
    for (const res of held) res.destroy();
  });
  const events = new RegistryEvents();
  const { client, logs } = startClient(t, plane, { observer: events, heartbeatIntervalMs: 60_000 });
  assert.equal(await events.next('registration'), 'ok');
  assert.equal(client.instanceId, 'i-1');
  const limitMs = 300;
  const started = Date.now();
  await client.stop(limitMs);
  const took = Date.now() - started;
  await deleteArrived;
  assert.ok(took >= limitMs - 50 && took < limitMs + 3_000, `stop took ${took} ms`);
  const warn = await logs.waitFor((l) => l.msg.includes('Deregistration failed'));
  assert.equal(warn.code, 'REVDIAL_REGISTRY_FAILED');
});
