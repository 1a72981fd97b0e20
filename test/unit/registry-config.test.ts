/**
 * `--registry` and the sandboxes settings (config.ts), GPU vendor and render
 * node detection on a fake /dev and /sys, the disk figures' formula, the
 * back-off, and the real executable: desktop- refused at start (exit 2, one
 * line naming the setting), and a sandboxes run with /readyz detail,
 * metrics and --deregister-on-exit.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { installSandboxHostsApi } from '../../dev/control-plane/sandbox-hosts-api.js';
import { type HeartbeatBody, type SandboxHost, SandboxHosts } from '../../dev/control-plane/sandbox-hosts.js';
import { VERSION } from '../../src/agent/config.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { detectGpu } from '../../src/agent/registry/gpu-detect.js';
import { backoffDelay, sandboxIdOf } from '../../src/agent/registry/http.js';
import { diskUsageOf, parseDiskPaths } from '../../src/agent/registry/sandboxes.js';
import { configOf } from '../helpers/config.js';
import { TOKEN, agentEnv, spawnAgent, startPlane, startWolf } from '../helpers/harness.js';
import { get, sample } from '../helpers/ops.js';

const roots: string[] = [];
after(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

function fakeHost(files: Record<string, string>): { dev: string; drmClass: string } {
  const root = mkdtempSync(join(tmpdir(), 'revdial-gpu-'));
  roots.push(root);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
  mkdirSync(join(root, 'dev'), { recursive: true });
  return { dev: join(root, 'dev'), drmClass: join(root, 'sys') };
}

test('--registry: off by default; --register / REVDIAL_REGISTER are wolf-instances; a contradiction is refused', () => {
  let c = configOf([]);
  assert.deepEqual([c.registry, c.register, c.runnerId], ['off', false, 'wolf-box-1']);
  c = configOf(['--register']);
  assert.deepEqual([c.registry, c.register, c.runnerId], ['wolf-instances', true, 'wolf-box-1']);
  c = configOf([], { REVDIAL_REGISTER: 'true', REVDIAL_REGISTRY: 'wolf-instances' });
  assert.equal(c.registry, 'wolf-instances');
  c = configOf([], { REVDIAL_REGISTRY: 'Sandboxes' });
  assert.deepEqual([c.registry, c.register, c.runnerId, c.sandboxId], ['sandboxes', false, 'hydra-box-1', 'box-1']);
  assert.throws(
    () => configOf(['--register', '--registry', 'sandboxes']),
    (err: { code?: string; message: string }) => {
      assert.equal(err.code, ErrorCodes.CONFIG_INVALID);
      assert.match(err.message, /REVDIAL_REGISTRY/);
      return true;
    },
  );
  assert.throws(() => configOf(['--registry', 'consul']), { code: 'commander.invalidArgument' });
});

test('sandboxes: runner id hydra-<WOLF_ID> by default, sandbox- accepted, others refused naming the setting', () => {
  assert.equal(configOf(['--registry', 'sandboxes', '--runner-id', 'hydra-gpu7']).sandboxId, 'gpu7');
  assert.equal(configOf(['--registry', 'sandboxes', '--runner-id', 'sandbox-gpu8']).sandboxId, 'gpu8');
  for (const bad of ['wolf-gpu9', 'hydra-']) {
    assert.throws(
      () => configOf(['--registry', 'sandboxes', '--runner-id', bad]),
      (err: { code?: string; message: string }) => err.code === ErrorCodes.CONFIG_INVALID && err.message.includes('REVDIAL_RUNNER_ID / --runner-id'),
    );
  }
  // desktop- is refused in every mode.
  for (const mode of ['off', 'wolf-instances', 'sandboxes']) {
    assert.throws(
      () => configOf(['--registry', mode], { REVDIAL_RUNNER_ID: 'desktop-ses-1' }),
      (err: { code?: string; message: string }) =>
        err.code === ErrorCodes.CONFIG_INVALID && err.message.includes('REVDIAL_RUNNER_ID / --runner-id "desktop-ses-1"'),
    );
  }
  assert.equal(sandboxIdOf('hydra-a-b'), 'a-b');
  assert.equal(sandboxIdOf('wolf-a'), undefined);
});

test('sandboxes settings: disk paths, extra file, deregister-on-exit, render node; --deregister-on-exit needs sandboxes', () => {
  let c = configOf(['--registry', 'sandboxes']);
  assert.deepEqual(c.diskPaths, [
    { mountPoint: '/', statPath: '/' },
    { mountPoint: '/var', statPath: '/var' },
  ]);
  assert.equal(c.deregisterOnExit, false);
  assert.equal(c.heartbeatExtraFile, undefined);
  c = configOf(['--registry', 'sandboxes', '--deregister-on-exit', '--render-node', 'SOFTWARE'], {
    REVDIAL_DISK_PATHS: '/=/host, /var=/host/var',
    REVDIAL_HEARTBEAT_EXTRA: '/run/hydra/heartbeat.json',
  });
  assert.deepEqual(c.diskPaths, [
    { mountPoint: '/', statPath: '/host' },
    { mountPoint: '/var', statPath: '/host/var' },
  ]);
  assert.equal(c.heartbeatExtraFile, '/run/hydra/heartbeat.json');
  assert.equal(c.deregisterOnExit, true);
  assert.equal(c.gpu.renderNode, 'SOFTWARE');
  assert.equal(configOf(['--registry', 'sandboxes'], { REVDIAL_DEREGISTER_ON_EXIT: 'yes' }).deregisterOnExit, true);
  assert.throws(() => configOf(['--deregister-on-exit']), { code: ErrorCodes.CONFIG_INVALID });
  assert.throws(() => configOf(['--registry', 'sandboxes', '--disk-paths', 'var']), { code: 'commander.invalidArgument' });
  assert.throws(() => parseDiskPaths('/ok,relative=/x'), /absolute path/);
});

test('GPU vendor and render node: nvidia, amd, intel by PCI vendor, SOFTWARE without a render node; --gpu-type overrides the vendor', () => {
  const nv = fakeHost({ 'dev/nvidia0': '', 'dev/dri/renderD128': '', 'sys/renderD128/device/vendor': '0x10de\n' });
  assert.deepEqual(detectGpu(nv), { vendor: 'nvidia', renderNode: '/dev/dri/renderD128' });
  const mixed = fakeHost({
    'dev/dri/renderD128': '',
    'sys/renderD128/device/vendor': '0x8086\n',
    'dev/dri/renderD130': '',
    'sys/renderD130/device/vendor': '0x1002\n',
    'dev/dri/renderD129': '',
    'sys/renderD129/device/vendor': '0x1002\n',
  });
  assert.deepEqual(detectGpu(mixed), { vendor: 'amd', renderNode: '/dev/dri/renderD129' });
  const intel = fakeHost({ 'dev/dri/renderD128': '', 'sys/renderD128/device/vendor': '0x8086\n' });
  assert.deepEqual(detectGpu(intel), { vendor: 'intel', renderNode: '/dev/dri/renderD128' });
  assert.deepEqual(detectGpu(fakeHost({ 'dev/nvidiactl': '' })), { vendor: 'nvidia', renderNode: 'SOFTWARE' });
  assert.deepEqual(detectGpu(fakeHost({})), { vendor: 'none', renderNode: 'SOFTWARE' });

  assert.deepEqual(configOf(['--registry', 'sandboxes'], {}, intel).gpu, { vendor: 'intel', renderNode: '/dev/dri/renderD128' });
  assert.deepEqual(configOf(['--registry', 'sandboxes', '--gpu-type', 'none'], {}, intel).gpu, { vendor: 'none', renderNode: 'SOFTWARE' });
  // wolf-instances keeps its own mapping: an Intel-only host is "none".
  assert.equal(configOf(['--register'], {}, intel).gpuType, 'none');
});

test('disk figures: used = total - free, avail from f_bavail, percent of total; alert levels at 80 and 95', () => {
  const d = diskUsageOf('/var', { bsize: 4096, blocks: 1000, bfree: 300, bavail: 250 });
  assert.deepEqual(d, {
    mount_point: '/var',
    total_bytes: 4_096_000,
    used_bytes: 2_867_200,
    avail_bytes: 1_024_000,
    used_percent: 70,
    alert_level: 'ok',
  });
  const level = (free: number): string => diskUsageOf('/', { bsize: 1, blocks: 10_000, bfree: free, bavail: free }).alert_level;
  assert.deepEqual([level(2001), level(2000), level(501), level(500), level(0)], ['ok', 'warning', 'warning', 'critical', 'critical']);
  assert.equal(diskUsageOf('/', { bsize: 4096, blocks: 0, bfree: 0, bavail: 0 }).used_percent, 0);
});

test('back-off: min·2^(n-1)·[1,2), capped', () => {
  const o = { minMs: 1_000, maxMs: 30_000 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, { ...o, random: () => 0 })),
    [1_000, 2_000, 4_000, 8_000, 16_000, 30_000],
  );
  assert.equal(backoffDelay(1, { ...o, random: () => 0.5 }), 1_500);
  assert.equal(backoffDelay(10, { ...o, random: () => 0.99 }), 30_000);
});

test('the executable: a desktop- runner id exits 2 before any connection, with one line naming the setting', async (t) => {
  const plane = await startPlane(t);
  let upgrades = 0;
  plane.server.on('upgrade', () => upgrades++);
  const agent = spawnAgent(
    t,
    agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'x', RUNNER_TOKEN: TOKEN, REVDIAL_REGISTRY: 'sandboxes', REVDIAL_RUNNER_ID: 'desktop-ses-9' }),
  );
  const { code } = await agent.exited;
  assert.equal(code, 2);
  const lines = agent.stderr().trim().split('\n');
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^wolf-revdial-client: invalid configuration: REVDIAL_RUNNER_ID \/ --runner-id "desktop-ses-9" starts with desktop-/);
  assert.equal(upgrades, 0);
});

test('the executable with REVDIAL_REGISTRY=sandboxes: beat at connect, /readyz detail and metrics, DELETE on SIGTERM only with --deregister-on-exit', async (t) => {
  const plane = await startPlane(t);
  const hosts = new SandboxHosts();
  installSandboxHostsApi(plane, hosts, { authorize: (tok) => tok === TOKEN });
  const { local } = await startWolf(t);
  // POST /api/v1/sandboxes/register is a full-row upsert that would blank the host's fields: never called.
  let upserts = 0;
  hosts.on('upserted', () => upserts++);
  const env = (id: string, extra: Record<string, string>): NodeJS.ProcessEnv =>
    agentEnv({
      HELIX_API_URL: plane.url,
      WOLF_ID: id,
      RUNNER_TOKEN: TOKEN,
      WOLF_LOCAL_ADDR: local,
      REVDIAL_METRICS_ADDR: '127.0.0.1:0',
      REVDIAL_REGISTRY: 'sandboxes',
      REVDIAL_HEARTBEAT_INTERVAL: '3600',
      ...extra,
    });

  const beat = once(hosts, 'heartbeat', { signal: AbortSignal.timeout(15_000) }) as Promise<[SandboxHost, HeartbeatBody]>;
  const agent = spawnAgent(t, env('exe-1', { REVDIAL_DEREGISTER_ON_EXIT: 'true', REVDIAL_GPU_TYPE: 'amd', REVDIAL_RENDER_NODE: '/dev/dri/renderD130' }));
  const serving = await agent.logs.waitFor((l) => typeof l.metricsAddr === 'string', 15_000);
  const port = Number(String(serving.metricsAddr).split(':').pop());
  // The interval is an hour: this beat is the one the control connection triggers.
  const [host, body] = await beat;
  assert.equal(host.id, 'exe-1');
  assert.deepEqual([body.gpu_vendor, body.render_node, body.helix_version], ['amd', '/dev/dri/renderD130', VERSION]);
  assert.deepEqual(
    body.disk_usage?.map((d) => d.mount_point),
    ['/', '/var'],
  );
  await agent.logs.waitFor((l) => l.msg === 'Heartbeat sent to the control plane (sandboxes API)');
  const ready = await get(port, '/readyz');
  assert.equal(ready.status, 200);
  const detail = (JSON.parse(ready.body) as { registry: Record<string, unknown> }).registry;
  assert.deepEqual([detail.api, detail.sandboxId, detail.lastResult, detail.consecutiveFailures], ['sandboxes', 'exe-1', 'ok', 0]);
  const metrics = (await get(port, '/metrics')).body;
  assert.equal(sample(metrics, 'revdial_registry_heartbeats_total', { result: 'ok' }), 1);
  assert.equal(sample(metrics, 'revdial_registry_heartbeat_duration_seconds_count'), 1);
  assert.ok((sample(metrics, 'revdial_registry_last_heartbeat_ok_timestamp_seconds') ?? 0) > 0);

  const deleted = once(hosts, 'deleted', { signal: AbortSignal.timeout(15_000) }) as Promise<[string, boolean]>;
  agent.child.kill('SIGTERM');
  assert.deepEqual(await deleted, ['exe-1', true]);
  assert.equal((await agent.exited).code, 0);

  // Without the flag the host stays listed, as the production host software leaves it.
  const beat2 = once(hosts, 'heartbeat', { signal: AbortSignal.timeout(15_000) });
  const keeper = spawnAgent(t, env('exe-2', {}));
  await beat2;
  await keeper.logs.waitFor((l) => l.msg === 'Heartbeat sent to the control plane (sandboxes API)');
  keeper.child.kill('SIGTERM');
  assert.equal((await keeper.exited).code, 0);
  assert.deepEqual(
    hosts.list().map((h) => h.id),
    ['exe-2'],
  );
  assert.equal(upserts, 0);
});
