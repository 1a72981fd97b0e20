/**
 * The health monitor with an injected clock: offline after missed
 * heartbeats (and the log line), back online on a heartbeat, degraded while
 * the RevDial tunnel is down, and new placements failing over meanwhile.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HealthMonitor } from '../../dev/control-plane/health-monitor.js';
import { Registry } from '../../dev/control-plane/registry.js';
import { Placements } from '../../dev/control-plane/placements.js';
import { FakeClock } from '../helpers/control-plane.js';
import { LogCapture } from '../helpers/harness.js';

function setup(options: { tunnels?: Set<string> } = {}) {
  const clock = new FakeClock();
  const registry = new Registry({ clock });
  const logs = new LogCapture('debug');
  const tunnels = options.tunnels;
  const monitor = new HealthMonitor({
    registry,
    log: logs.log,
    clock,
    ...(tunnels ? { tunnelUp: (runnerId: string) => tunnels.has(runnerId) } : {}),
  });
  const placements = new Placements({
    registry,
    clock,
    tunnels: { request: () => Promise.reject(new Error('unused')) },
  });
  return { clock, registry, logs, monitor, placements };
}

const status = (registry: Registry, name: string): string | undefined => registry.findByName(name)?.status;

test('defaults: checked every 60 s, offline once the last heartbeat is older than 2 minutes, and logged', (t) => {
  const { clock, registry, logs, monitor } = setup();
  monitor.start();
  t.after(() => monitor.stop());
  registry.register({ name: 'w1' });
  registry.register({ name: 'w2' });
  assert.equal(clock.pending, 1);

  // w2 heartbeats every 30 s; w1 falls silent.
  const beat = (): void => {
    registry.heartbeat(registry.findByName('w2')!.id);
  };
  for (let s = 30; s <= 120; s += 30) {
    clock.tick(30_000);
    beat();
  }
  // At t=120 s, w1's heartbeat is exactly 2 min old: not older, still online.
  assert.equal(status(registry, 'w1'), 'online');
  clock.tick(30_000);
  beat();
  // t=150 s: no check yet since t=120 s.
  assert.equal(status(registry, 'w1'), 'online');
  clock.tick(30_000);
  beat();
  // t=180 s: the check sees 180 s of silence.
  assert.equal(status(registry, 'w1'), 'offline');
  assert.equal(status(registry, 'w2'), 'online');

  const line = logs.find((l) => l.msg.startsWith('Wolf instance w1 marked offline'));
  assert.ok(line, logs.raw.join('\n'));
  assert.equal(line.level, 'warn');
  assert.equal(line.to, 'offline');
  assert.equal(line.from, 'online');
  assert.equal(
    logs.count((l) => l.msg.includes('w2 marked')),
    0,
  );
});

test('configurable interval and threshold; a heartbeat brings an offline instance back online', () => {
  const clock = new FakeClock();
  const registry = new Registry({ clock });
  const logs = new LogCapture('info');
  const monitor = new HealthMonitor({ registry, log: logs.log, clock, intervalMs: 500, offlineAfterMs: 2_000 });
  monitor.start();
  const { id } = registry.register({ name: 'w' });
  clock.tick(2_000);
  assert.equal(status(registry, 'w'), 'online');
  clock.tick(500);
  assert.equal(status(registry, 'w'), 'offline');
  registry.heartbeat(id);
  assert.equal(status(registry, 'w'), 'online');
  clock.tick(1_500);
  assert.equal(status(registry, 'w'), 'online');
  monitor.stop();
  assert.equal(clock.pending, 0);
  clock.tick(10_000);
  // Stopped: nothing changes any more.
  assert.equal(status(registry, 'w'), 'online');
});

test('new placements fail over to the instance that keeps heartbeating', () => {
  const { clock, registry, monitor, placements } = setup();
  monitor.start();
  const a = registry.register({ name: 'a', max_sandboxes: 10 });
  const b = registry.register({ name: 'b', max_sandboxes: 10 });
  for (let n = 0; n < 4; n++) placements.create();
  assert.deepEqual(placements.spread(), { a: 2, b: 2 });
  // b stops; a keeps beating every 20 s for 3 minutes.
  for (let s = 0; s < 9; s++) {
    clock.tick(20_000);
    registry.heartbeat(a.id);
  }
  assert.equal(status(registry, 'b'), 'offline');
  const placed = Array.from({ length: 5 }, () => placements.create().instance_name);
  assert.deepEqual(placed, ['a', 'a', 'a', 'a', 'a']);
  // b comes back with a heartbeat and is the least loaded again.
  registry.heartbeat(b.id);
  assert.equal(placements.create().instance_name, 'b');
  monitor.stop();
});

test('with tunnel watching: an instance whose RevDial tunnel is down is degraded, and online again when it is back', () => {
  const tunnels = new Set(['wolf-a', 'wolf-b']);
  const { registry, monitor, placements, logs } = setup({ tunnels });
  registry.register({ name: 'a' });
  registry.register({ name: 'b' });
  assert.deepEqual(monitor.check(), []);
  tunnels.delete('wolf-b');
  const changes = monitor.check();
  assert.deepEqual(
    changes.map((c) => [c.instance.name, c.from, c.to]),
    [['b', 'online', 'degraded']],
  );
  assert.ok(logs.find((l) => l.msg.startsWith('Wolf instance b marked degraded') && l.level === 'warn'));
  assert.equal(placements.create().instance_name, 'a');
  assert.equal(placements.create().instance_name, 'a');
  // A heartbeat over HTTP does not lift `degraded`: the tunnel is still down.
  registry.heartbeat(registry.findByName('b')!.id);
  assert.equal(status(registry, 'b'), 'degraded');
  tunnels.add('wolf-b');
  assert.deepEqual(
    monitor.check().map((c) => [c.instance.name, c.to]),
    [['b', 'online']],
  );
  assert.equal(placements.create().instance_name, 'b');
});
