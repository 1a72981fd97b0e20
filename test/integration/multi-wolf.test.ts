/**
 * End to end with real agent processes (bin/wolf-revdial-client --register):
 * two stand-in Wolfs with different GPU types register themselves, placements
 * spread and are routed through each holder's tunnel, a SIGKILLed agent goes
 * degraded then offline and new placements fail over, capacity holds, a
 * SIGTERMed agent deregisters, and destroying everything zeroes the counts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { createFleet } from '../../dev/control-plane/fleet.js';
import type { WolfInstance } from '../../dev/control-plane/registry.js';
import type { Placement } from '../../dev/control-plane/placements.js';
import { call, field } from '../helpers/control-plane.js';
import { LogCapture, agentEnv, spawnAgent, startWolf } from '../helpers/harness.js';

const WAIT_MS = 20_000;

function waitForEvent<T extends unknown[]>(emitter: EventEmitter, event: string, pred: (...a: T) => boolean, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`timed out waiting for ${what}`));
    }, WAIT_MS);
    const on = (...a: unknown[]): void => {
      if (!pred(...(a as T))) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(a as T);
    };
    emitter.on(event, on);
  });
}

test(
  'two real agents: spread, routing, GPU filter, failover after SIGKILL, capacity, deregister on SIGTERM, counts back to zero',
  { timeout: 60_000 },
  async (t) => {
    const token = randomBytes(16).toString('hex');
    const logs = new LogCapture('info');
    const fleet = createFleet({
      authorize: (tok) => tok === token,
      log: logs.log,
      checkIntervalMs: 200,
      offlineAfterMs: 1_500,
      graceMs: 500,
    });
    await fleet.plane.listen(0, '127.0.0.1');
    fleet.monitor.start();
    t.after(() => fleet.close());
    const base = fleet.plane.url;

    const nodes = [
      { name: 'e2e-a', gpu: 'nvidia' },
      { name: 'e2e-b', gpu: 'amd' },
    ];
    const registered = waitForEvent(fleet.registry, 'registered', () => nodes.every((n) => fleet.registry.findByName(n.name)), 'both agents to register');
    const started = [];
    for (const n of nodes) {
      const { wolf, local } = await startWolf(t);
      const agent = spawnAgent(
        t,
        agentEnv({ HELIX_API_URL: base, WOLF_ID: n.name, RUNNER_TOKEN: token, WOLF_LOCAL_ADDR: local, LOG_LEVEL: 'info', REVDIAL_METRICS_ADDR: '127.0.0.1:0' }),
        ['--register', '--gpu-type', n.gpu, '--max-sandboxes', '4', '--heartbeat-interval', '0.3', '--advertise-address', local],
      );
      started.push({ ...n, wolf, agent });
    }
    const [a, b] = started as [(typeof started)[number], (typeof started)[number]];
    await registered;
    await Promise.all(nodes.map((n) => fleet.plane.waitForRunner(`wolf-${n.name}`, WAIT_MS)));
    const list = await call(base, 'GET', '/api/v1/wolf-instances', token);
    assert.deepEqual((list.body as WolfInstance[]).map((i) => [i.name, i.gpu_type, i.max_sandboxes, i.status]).sort(), [
      ['e2e-a', 'nvidia', 4, 'online'],
      ['e2e-b', 'amd', 4, 'online'],
    ]);

    // Spread and routing.
    const made: Placement[] = [];
    for (let k = 0; k < 4; k++) {
      const r = await call(base, 'POST', '/api/v1/placements', token, {});
      assert.equal(r.status, 201);
      made.push(r.body as Placement);
    }
    assert.deepEqual(fleet.placements.spread(), { 'e2e-a': 2, 'e2e-b': 2 });
    const before = [a.wolf.requests, b.wolf.requests];
    for (const s of made) {
      const r = await call(base, 'GET', `/api/v1/placements/${s.id}/proxy/api/v1/system/health`, token);
      assert.equal(r.status, 200);
      assert.equal(field(r.body, 'status'), 'ok');
    }
    assert.deepEqual([a.wolf.requests - before[0]!, b.wolf.requests - before[1]!], [2, 2]);

    // GPU filter.
    const nv = await call(base, 'POST', '/api/v1/placements', token, { gpu_type: 'nvidia' });
    assert.equal(field(nv.body, 'instance_name'), 'e2e-a');
    made.push(nv.body as Placement);

    // SIGKILL b: tunnel gone (degraded), heartbeats stop (offline).
    const degraded = waitForEvent<[WolfInstance]>(fleet.registry, 'status', (i) => i.name === 'e2e-b' && i.status === 'degraded', 'e2e-b degraded');
    const offline = waitForEvent<[WolfInstance]>(fleet.registry, 'status', (i) => i.name === 'e2e-b' && i.status === 'offline', 'e2e-b offline');
    b.agent.child.kill('SIGKILL');
    await degraded;
    await offline;
    assert.ok(logs.find((l) => l.msg.startsWith('Wolf instance e2e-b marked offline') && l.level === 'warn'));

    // New placements go to a until it is full (4), then a coded 503.
    const fresh = await call(base, 'POST', '/api/v1/placements', token, {});
    assert.equal(field(fresh.body, 'instance_name'), 'e2e-a');
    made.push(fresh.body as Placement);
    const full = await call(base, 'POST', '/api/v1/placements', token, {});
    assert.equal(full.status, 503);
    assert.equal(field(full.body, 'code'), 'REVDIAL_NO_INSTANCE_AVAILABLE');
    assert.equal(fleet.registry.findByName('e2e-a')?.connected_sandboxes, 4);

    // A placement on the dead Wolf cannot be reached; one on the survivor can.
    const onB = made.find((s) => s.instance_name === 'e2e-b')!;
    const dead = await call(base, 'GET', `/api/v1/placements/${onB.id}/proxy/api/v1/system/health`, token);
    assert.equal(dead.status, 502);
    assert.equal(field(dead.body, 'code'), 'REVDIAL_PLACEMENT_UNREACHABLE');
    const alive = await call(base, 'GET', `/api/v1/placements/${(fresh.body as Placement).id}/proxy/api/v1/system/health`, token);
    assert.equal(alive.status, 200);

    // SIGTERM a: it deregisters on the way out.
    const gone = waitForEvent<[WolfInstance]>(fleet.registry, 'deregistered', (i) => i.name === 'e2e-a', 'e2e-a to deregister');
    a.agent.child.kill('SIGTERM');
    assert.deepEqual(await a.agent.exited, { code: 0, signal: null });
    await gone;

    // Destroy everything.
    for (const s of made) assert.equal((await call(base, 'DELETE', `/api/v1/placements/${s.id}`, token)).status, 200);
    assert.equal(fleet.placements.list().length, 0);
    assert.deepEqual(
      fleet.registry.list().map((i) => [i.name, i.status, i.connected_sandboxes]),
      [['e2e-b', 'offline', 0]],
    );
  },
);
