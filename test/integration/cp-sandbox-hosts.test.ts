/**
 * The control plane's 2026 host API (dev/control-plane/sandbox-hosts*.ts)
 * over real sockets: implicit registration by hydra-/sandbox- control
 * connections (and not by wolf-/desktop- ones), back online on reconnect,
 * heartbeats (400 `Invalid request body`, 200 and no change for unknown ids,
 * gpu fields overwritten with blanks), list, DELETE, register, and the reaper
 * on an injected clock. Placements keep their own path.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { createFleet } from '../../dev/control-plane/fleet.js';
import type { SandboxHost } from '../../dev/control-plane/sandbox-hosts.js';
import { FakeClock, call, field } from '../helpers/control-plane.js';
import { LogCapture, TOKEN, startAgent, startWolf } from '../helpers/harness.js';

async function setup(t: import('node:test').TestContext) {
  const clock = new FakeClock();
  const fleet = createFleet({ authorize: (tok) => tok === TOKEN, log: new LogCapture('warn').log, clock });
  await fleet.plane.listen(0, '127.0.0.1');
  t.after(() => fleet.close());
  return { clock, fleet, base: fleet.plane.url };
}

test('hydra- and sandbox- control connections register their host; wolf- and desktop- ones do not', async (t) => {
  const { fleet, base } = await setup(t);
  const { local } = await startWolf(t);
  for (const runnerId of ['hydra-gpu-1', 'sandbox-gpu-2', 'wolf-gpu-3', 'desktop-ses-4']) {
    startAgent(t, fleet.plane, local, { runnerId });
    await fleet.plane.waitForRunner(runnerId, 10_000);
  }
  const list = await call(base, 'GET', '/api/v1/sandboxes', TOKEN);
  assert.equal(list.status, 200);
  const hosts = list.body as SandboxHost[];
  assert.deepEqual(hosts.map((h) => h.id).sort(), ['gpu-1', 'gpu-2']);
  for (const h of hosts) {
    assert.equal(h.status, 'online');
    assert.equal(h.last_seen, null, 'no last_seen before the first heartbeat');
  }
  assert.equal((await call(base, 'GET', '/api/v1/sandboxes', null)).status, 401);
  assert.equal((await call(base, 'GET', '/api/v1/sandboxes', 'wrong')).status, 401);
});

test('heartbeats: fields stored, gpu fields overwritten even with blanks, unknown ids 200 and no change, non-JSON 400', async (t) => {
  const { fleet, base, clock } = await setup(t);
  fleet.hosts.connected('hydra-h1');
  const first = {
    gpu_vendor: 'nvidia',
    render_node: '/dev/dri/renderD128',
    disk_usage: [{ mount_point: '/', total_bytes: 100, used_bytes: 85, avail_bytes: 10, used_percent: 85, alert_level: 'warning' }],
    desktop_versions: { sway: 'sha256:abc' },
    instance_type: 'g5.xlarge',
    privileged_mode_enabled: true,
    helix_version: '2.4.0',
  };
  let r = await call(base, 'POST', '/api/v1/sandboxes/h1/heartbeat', TOKEN, first);
  assert.deepEqual([r.status, r.body], [200, { status: 'ok' }]);
  let h = fleet.hosts.get('h1')!;
  assert.equal(h.last_seen, new Date(clock.now()).toISOString());
  assert.equal(h.gpu_vendor, 'nvidia');
  assert.deepEqual(h.disk_usage, first.disk_usage);
  assert.deepEqual(h.desktop_versions, { sway: 'sha256:abc' });

  // A beat without the gpu fields blanks them; the others stay.
  clock.tick(1_000);
  r = await call(base, 'POST', '/api/v1/sandboxes/h1/heartbeat', TOKEN, {});
  assert.equal(r.status, 200);
  h = fleet.hosts.get('h1')!;
  assert.equal(h.gpu_vendor, '');
  assert.equal(h.render_node, '');
  assert.equal(h.instance_type, 'g5.xlarge');
  assert.equal(h.last_seen, new Date(clock.now()).toISOString());

  // Unknown id: the same answer, nothing created.
  r = await call(base, 'POST', '/api/v1/sandboxes/nobody/heartbeat', TOKEN, first);
  assert.deepEqual([r.status, r.body], [200, { status: 'ok' }]);
  assert.equal(fleet.hosts.get('nobody'), undefined);

  for (const bad of ['not json', '[1]', '{"gpu_vendor": 5}', '{"disk_usage": [1]}', '{"desktop_versions": {"a": 1}}']) {
    r = await call(base, 'POST', '/api/v1/sandboxes/h1/heartbeat', TOKEN, bad);
    assert.equal(r.status, 400, bad);
    assert.equal(String(r.body).trim(), 'Invalid request body');
  }
  assert.equal((await call(base, 'POST', '/api/v1/sandboxes/h1/heartbeat', 'wrong', {})).status, 401);
});

test('DELETE answers deleted (unknown ids too); register is a full-row upsert that needs an id', async (t) => {
  const { fleet, base } = await setup(t);
  fleet.hosts.connected('hydra-h2');
  await call(base, 'POST', '/api/v1/sandboxes/h2/heartbeat', TOKEN, { gpu_vendor: 'amd', instance_type: 'big' });
  let r = await call(base, 'DELETE', '/api/v1/sandboxes/h2', TOKEN);
  assert.deepEqual([r.status, r.body], [200, { status: 'deleted' }]);
  assert.deepEqual(fleet.hosts.list(), []);
  r = await call(base, 'DELETE', '/api/v1/sandboxes/never', TOKEN);
  assert.deepEqual([r.status, r.body], [200, { status: 'deleted' }]);

  r = await call(base, 'POST', '/api/v1/sandboxes/register', TOKEN, { gpu_vendor: 'amd' });
  assert.equal(r.status, 400);
  assert.equal(String(r.body).trim(), 'Sandbox ID is required');
  fleet.hosts.connected('hydra-h3');
  await call(base, 'POST', '/api/v1/sandboxes/h3/heartbeat', TOKEN, { gpu_vendor: 'amd', instance_type: 'big' });
  r = await call(base, 'POST', '/api/v1/sandboxes/register', TOKEN, { id: 'h3', render_node: 'SOFTWARE' });
  assert.equal(r.status, 200);
  assert.equal(field(r.body, 'gpu_vendor'), '', 'fields not sent become empty');
  assert.equal(field(r.body, 'instance_type'), '');
});

test('the reaper marks hosts silent for 5 minutes offline, sweeping every minute; a reconnect flips them back online', async (t) => {
  const { fleet, base, clock } = await setup(t);
  const { local } = await startWolf(t);
  const { agent } = startAgent(t, fleet.plane, local, { runnerId: 'hydra-reaped' });
  await fleet.plane.waitForRunner('hydra-reaped', 10_000);
  fleet.hosts.connected('hydra-quiet');
  await call(base, 'POST', '/api/v1/sandboxes/reaped/heartbeat', TOKEN, { gpu_vendor: 'intel', render_node: '/dev/dri/renderD128' });

  clock.tick(4 * 60_000);
  await call(base, 'POST', '/api/v1/sandboxes/quiet/heartbeat', TOKEN, {});
  clock.tick(59_999);
  assert.equal(fleet.hosts.get('reaped')?.status, 'online', '4:59.999 silent: still online');
  const offline = once(fleet.hosts, 'status', { signal: AbortSignal.timeout(15_000) }) as Promise<[SandboxHost, string, string]>;
  clock.tick(1);
  const [host, previous] = await offline;
  assert.deepEqual([host.id, previous, host.status], ['reaped', 'online', 'offline']);
  assert.equal(fleet.hosts.get('quiet')?.status, 'online', 'beat a minute ago');

  // The agent reconnects: the plane flips the host back online.
  const back = once(fleet.hosts, 'registered', { signal: AbortSignal.timeout(15_000) }) as Promise<[SandboxHost, { again: boolean }]>;
  fleet.plane.dialer('hydra-reaped')?.terminate();
  const [again, how] = await back;
  assert.deepEqual([again.id, again.status, how.again], ['reaped', 'online', true]);
  assert.equal(again.gpu_vendor, 'intel', 'the row was kept');
  await agent.shutdown(0);
});

test('placements have their own path; /api/v1/placements is not the host list', async (t) => {
  const { fleet, base } = await setup(t);
  fleet.hosts.connected('hydra-only-host');
  const placements = await call(base, 'GET', '/api/v1/placements', TOKEN);
  assert.deepEqual([placements.status, placements.body], [200, []]);
  const hosts = await call(base, 'GET', '/api/v1/sandboxes', TOKEN);
  assert.deepEqual(
    (hosts.body as SandboxHost[]).map((h) => h.id),
    ['only-host'],
  );
});
