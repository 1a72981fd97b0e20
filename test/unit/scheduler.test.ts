/**
 * The least-loaded scheduler and the placement bookkeeping, without sockets:
 * even spread, GPU filtering, capacity, load ratio, failover and counts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type RegisterInput, Registry } from '../../dev/control-plane/registry.js';
import { Placements, type TunnelClient } from '../../dev/control-plane/placements.js';
import { NoInstanceAvailableError, selectInstance } from '../../dev/control-plane/scheduler.js';
import { FakeClock } from '../helpers/control-plane.js';

const noTunnels: TunnelClient = {
  request: () => Promise.reject(new Error('no tunnels in this test')),
};

function setup(...wolves: RegisterInput[]) {
  const clock = new FakeClock();
  const registry = new Registry({ clock });
  const ids = wolves.map((w) => registry.register(w).id);
  const placements = new Placements({ registry, tunnels: noTunnels, clock });
  const counts = (): Record<string, number> => Object.fromEntries(registry.list().map((i) => [i.name, i.connected_sandboxes]));
  return { clock, registry, placements, ids, counts };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

test('20 placements over 3 equal Wolfs: no instance more than one above another, after every create', () => {
  const { placements, counts, registry } = setup({ name: 'a', max_sandboxes: 10 }, { name: 'b', max_sandboxes: 10 }, { name: 'c', max_sandboxes: 10 });
  for (let n = 1; n <= 20; n++) {
    placements.create();
    const values = Object.values(counts());
    assert.ok(Math.max(...values) - Math.min(...values) <= 1, `after ${n}: ${JSON.stringify(counts())}`);
    assert.equal(
      values.reduce((x, y) => x + y, 0),
      n,
    );
  }
  assert.deepEqual(Object.values(counts()).sort(), [6, 7, 7]);
  // The records agree with the registry's counts.
  assert.deepEqual(placements.spread(), counts());
  assert.equal(registry.list().length, 3);
});

test('unequal capacity: the lowest connected/max ratio wins, so load follows capacity', () => {
  const { placements, counts } = setup({ name: 'big', max_sandboxes: 10 }, { name: 'small', max_sandboxes: 5 });
  for (let n = 0; n < 9; n++) placements.create();
  assert.deepEqual(counts(), { big: 6, small: 3 });
  for (let n = 0; n < 6; n++) placements.create();
  assert.deepEqual(counts(), { big: 10, small: 5 });
});

test('capacity is respected: creates beyond the total fail with REVDIAL_NO_INSTANCE_AVAILABLE', () => {
  const { placements, counts } = setup({ name: 'a', max_sandboxes: 2 }, { name: 'b', max_sandboxes: 3 });
  for (let n = 0; n < 5; n++) placements.create();
  assert.deepEqual(counts(), { a: 2, b: 3 });
  let caught: unknown;
  try {
    placements.create();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NoInstanceAvailableError);
  assert.equal(caught.code, 'REVDIAL_NO_INSTANCE_AVAILABLE');
  assert.deepEqual(caught.details, { gpuType: null, registered: 2, online: 2, matchingGpu: 2, withCapacity: 0 });
  assert.deepEqual(counts(), { a: 2, b: 3 });
  assert.equal(placements.list().length, 5);
});

test('GPU filtering: a requested type only lands on matching Wolfs (any case); no match is a coded error', () => {
  const { placements, registry } = setup(
    { name: 'n1', gpu_type: 'nvidia', max_sandboxes: 4 },
    { name: 'a1', gpu_type: 'amd', max_sandboxes: 4 },
    { name: 'n2', gpu_type: 'NVIDIA', max_sandboxes: 4 },
    { name: 'cpu', gpu_type: 'none', max_sandboxes: 4 },
  );
  for (let n = 0; n < 6; n++) {
    const s = placements.create({ gpuType: n % 2 ? 'nvidia' : 'Nvidia' });
    assert.ok(['n1', 'n2'].includes(s.instance_name), s.instance_name);
    assert.equal(s.gpu_type, 'nvidia');
  }
  assert.equal(placements.create({ gpuType: 'amd' }).instance_name, 'a1');
  assert.equal(placements.create({ gpuType: 'none' }).instance_name, 'cpu');
  assert.equal(
    codeOf(() => placements.create({ gpuType: 'tpu' })),
    'REVDIAL_NO_INSTANCE_AVAILABLE',
  );
  // Two more nvidia fill n1 and n2 (4 each); the next nvidia one has nowhere to go,
  // though amd and cpu Wolfs still have room.
  placements.create({ gpuType: 'nvidia' });
  placements.create({ gpuType: 'nvidia' });
  let caught: unknown;
  try {
    placements.create({ gpuType: 'nvidia' });
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NoInstanceAvailableError);
  assert.deepEqual(caught.details, { gpuType: 'nvidia', registered: 4, online: 4, matchingGpu: 2, withCapacity: 0 });
  // No type asked: any Wolf with room.
  assert.ok(['a1', 'cpu'].includes(placements.create().instance_name));
  assert.equal(registry.findByName('n1')?.connected_sandboxes, 4);
});

test('only online instances are chosen; offline and degraded are skipped', () => {
  const { registry, ids } = setup({ name: 'a' }, { name: 'b' }, { name: 'c' });
  const [a, b, c] = ids as [string, string, string];
  registry.setStatus(a, 'offline', 'test');
  registry.setStatus(b, 'degraded', 'test');
  assert.equal(selectInstance(registry.list()).id, c);
  registry.setStatus(c, 'offline', 'test');
  let caught: unknown;
  try {
    selectInstance(registry.list());
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NoInstanceAvailableError);
  assert.equal(caught.details.online, 0);
  assert.equal(
    codeOf(() => selectInstance([])),
    'REVDIAL_NO_INSTANCE_AVAILABLE',
  );
});

test('failover: once an instance is offline every new placement goes to the others, spread evenly', () => {
  const { placements, registry, ids, counts } = setup({ name: 'a' }, { name: 'b' }, { name: 'c' });
  for (let n = 0; n < 6; n++) placements.create();
  assert.deepEqual(counts(), { a: 2, b: 2, c: 2 });
  registry.setStatus(ids[1]!, 'offline', 'test');
  const placed = Array.from({ length: 6 }, () => placements.create().instance_name);
  assert.ok(!placed.includes('b'), placed.join(','));
  assert.deepEqual(counts(), { a: 5, b: 2, c: 5 });
});

test('destroying every placement brings every count back to zero; unknown ids are REVDIAL_PLACEMENT_NOT_FOUND', () => {
  const { placements, registry, ids, counts } = setup({ name: 'a', max_sandboxes: 7 }, { name: 'b', max_sandboxes: 7 }, { name: 'c', max_sandboxes: 7 });
  const made = Array.from({ length: 20 }, () => placements.create());
  // An instance going away while it holds placements does not break destroy.
  registry.setStatus(ids[2]!, 'offline', 'test');
  for (const s of made.slice(0, 10)) placements.destroy(s.id);
  for (const s of made.slice(10, 15)) {
    placements.create();
    placements.destroy(s.id);
  }
  for (const s of placements.list()) placements.destroy(s.id);
  assert.deepEqual(counts(), { a: 0, b: 0, c: 0 });
  assert.equal(placements.list().length, 0);
  assert.equal(
    codeOf(() => placements.destroy(made[0]?.id ?? '')),
    'REVDIAL_PLACEMENT_NOT_FOUND',
  );
  assert.deepEqual(counts(), { a: 0, b: 0, c: 0 });
});

test('a deregistered holder: its placements can still be destroyed, requests fail REVDIAL_PLACEMENT_UNREACHABLE', async () => {
  const { placements, registry, ids } = setup({ name: 'a' });
  const s = placements.create();
  registry.deregister(ids[0]!);
  await assert.rejects(placements.request(s.id, { path: '/api/v1/system/health' }), { code: 'REVDIAL_PLACEMENT_UNREACHABLE' });
  await assert.rejects(placements.request('plc-nope', { path: '/' }), { code: 'REVDIAL_PLACEMENT_NOT_FOUND' });
  assert.equal(placements.destroy(s.id).id, s.id);
  assert.equal(placements.list().length, 0);
});

test("requests go to the holder's runner id; tunnel failures become REVDIAL_PLACEMENT_UNREACHABLE with the cause", async () => {
  const asked: string[] = [];
  const clock = new FakeClock();
  const registry = new Registry({ clock });
  registry.register({ name: 'a' });
  registry.register({ name: 'b' });
  const failure = Object.assign(new Error('runner not connected'), { code: 'DIALER_CLOSED' });
  const placements = new Placements({
    registry,
    clock,
    tunnels: {
      request: (runnerId) => {
        asked.push(runnerId);
        return Promise.reject(failure);
      },
    },
  });
  const s1 = placements.create();
  const s2 = placements.create();
  for (const s of [s1, s2]) {
    const err = await placements.request(s.id, { path: '/' }).catch((e: unknown) => e);
    assert.equal((err as { code?: string }).code, 'REVDIAL_PLACEMENT_UNREACHABLE');
    assert.equal((err as { cause?: unknown }).cause, failure);
  }
  assert.deepEqual(asked, ['wolf-a', 'wolf-b']);
});

test('a placement record names its holder', () => {
  const { placements, registry } = setup({ name: 'gpu-box', gpu_type: 'nvidia' });
  const s = placements.create();
  const holder = registry.get(s.instance_id)!;
  assert.equal(holder.name, 'gpu-box');
  assert.equal(s.runner_id, 'wolf-gpu-box');
  assert.match(s.id, /^plc-[0-9a-f]{16}$/);
  assert.deepEqual(placements.get(s.id), s);
});
