/**
 * The sandboxes heartbeat client (src/agent/registry/sandboxes.ts) against
 * the project's 2026 host API (dev/control-plane/sandbox-hosts*.ts) on a real
 * ControlPlane on loopback, with an in-process agent whose control
 * connections drive it. The client's timers run on a manual clock: intervals,
 * back-off and time limits move only when the test ticks.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type StatsFs, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { Agent as UndiciAgent } from 'undici';
import { installSandboxHostsApi, sandboxHostsHandler } from '../../dev/control-plane/sandbox-hosts-api.js';
import { type HeartbeatBody, type SandboxHost, SandboxHosts } from '../../dev/control-plane/sandbox-hosts.js';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import { VERSION } from '../../src/agent/config.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { AgentMetrics, type RegistryResult } from '../../src/agent/ops/metrics.js';
import { detectGpu } from '../../src/agent/registry/gpu-detect.js';
import { type DiskUsage, SandboxHeartbeat, type SandboxHeartbeatOptions, parseDiskPaths } from '../../src/agent/registry/sandboxes.js';
import { call } from '../helpers/control-plane.js';
import { LogCapture, ManualClock, TOKEN, readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';
import { sample } from '../helpers/ops.js';

// Every wait below has a time limit: a regression fails with a stack naming the wait instead of hanging.

/** Metrics that also keep every heartbeat result, in order. */
class Observed extends AgentMetrics {
  readonly results: RegistryResult[] = [];
  constructor() {
    super({ defaultMetrics: false });
  }
  override heartbeat(result: RegistryResult): void {
    super.heartbeat(result);
    this.results.push(result);
  }
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'revdial-hb-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fake /dev and /sys with an Intel render node at renderD129. */
function intelHost(dir: string): { dev: string; drmClass: string } {
  const files: Record<string, string> = { 'dev/dri/renderD129': '', 'sys/renderD129/device/vendor': '0x8086\n' };
  for (const [rel, text] of Object.entries(files)) {
    const path = join(dir, rel);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text);
  }
  return { dev: join(dir, 'dev'), drmClass: join(dir, 'sys') };
}

interface Setup {
  plane: ControlPlane;
  hosts: SandboxHosts;
  clock: ManualClock;
  metrics: Observed;
  logs: LogCapture;
  hb: SandboxHeartbeat;
  runnerId: string;
  local: string;
}

/**
 * Plane with the host API (optionally behind `front`, a route that sees every
 * host call first), a stand-in Wolf, a heartbeat client and an agent whose
 * control connections kick it.
 */
async function setup(
  t: TestContext,
  overrides: Partial<SandboxHeartbeatOptions> = {},
  front?: (req: IncomingMessage, res: ServerResponse, url: URL, next: () => void) => void,
): Promise<Setup> {
  const plane = await startPlane(t);
  const hosts = new SandboxHosts();
  const authorize = (tok: string): boolean => tok === TOKEN;
  if (front) {
    const handler = sandboxHostsHandler(hosts, { authorize });
    plane.route('POST', '/api/v1/sandboxes', (req, res, url) => front(req, res, url, () => void handler(req, res, url)));
  }
  installSandboxHostsApi(plane, hosts, { authorize });
  const { local } = await startWolf(t);
  const clock = new ManualClock(Date.parse('2026-08-01T00:00:00Z'));
  const metrics = new Observed();
  const logs = new LogCapture();
  const dispatcher = new UndiciAgent();
  const runnerId = `hydra-t${Math.random().toString(16).slice(2, 8)}`;
  const hb = new SandboxHeartbeat({
    apiUrl: new URL(plane.url),
    token: () => TOKEN,
    userAgent: 'wolf-revdial-client/test',
    dispatcher,
    runnerId,
    intervalMs: 30_000,
    gpu: { vendor: 'nvidia', renderNode: '/dev/dri/renderD128' },
    diskPaths: parseDiskPaths('/,/var'),
    version: VERSION,
    log: logs.log,
    clock,
    observer: metrics,
    random: () => 0,
    ...overrides,
  });
  hb.start();
  t.after(async () => {
    await hb.stop();
    await dispatcher.close();
  });
  return { plane, hosts, clock, metrics, logs, hb, runnerId, local };
}

function connect(t: TestContext, s: Setup): void {
  startAgent(t, s.plane, s.local, { runnerId: s.runnerId, observer: { controlConnected: () => s.hb.controlConnected() } });
}

/**
 * Resolves with the result of beat number `n` once the client has finished
 * it and armed its next wait (then the only timer on its clock: a call's
 * time limit is cleared when the call ends).
 */
async function afterBeat(s: Setup, n: number): Promise<RegistryResult> {
  const deadline = Date.now() + 10_000;
  while (s.metrics.results.length < n || s.clock.pending !== 1) {
    if (Date.now() > deadline) throw new Error(`beat ${n}: ${s.metrics.results.length} results, ${s.clock.pending} timers`);
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(s.metrics.results.length, n, `exactly ${n} beats so far`);
  return s.metrics.results[n - 1]!;
}

function nextBeat(hosts: SandboxHosts): Promise<[SandboxHost, HeartbeatBody]> {
  return once(hosts, 'heartbeat', { signal: AbortSignal.timeout(15_000) }) as Promise<[SandboxHost, HeartbeatBody]>;
}

const alertOf = (pct: number): string => (pct >= 95 ? 'critical' : pct >= 80 ? 'warning' : 'ok');

test('registered by the control connection, first beat at connect, with GPU facts, statfs disk figures, version and the extra file', async (t) => {
  const dir = tempDir(t);
  const extra = join(dir, 'extra.json');
  writeFileSync(extra, JSON.stringify({ desktop_versions: { sway: 'sha256:aaa' }, instance_type: 'test-box', privileged_mode_enabled: false }));
  const gpu = detectGpu(intelHost(dir));
  assert.deepEqual(gpu, { vendor: 'intel', renderNode: '/dev/dri/renderD129' });
  // The agent's own statfs calls, recorded: other processes write to these disks while the
  // test runs, so the figures are checked against the very statfs answer they came from
  // (plus the test's own statfs for the sizes, which do not move).
  const seen = new Map<string, StatsFs>();
  const s = await setup(t, {
    gpu,
    extraFile: extra,
    statfs: async (path) => {
      const r = await statfs(path);
      seen.set(path, r);
      return r;
    },
  });

  const order: string[] = [];
  s.hosts.on('registered', () => order.push('registered'));
  s.hosts.on('heartbeat', () => order.push('heartbeat'));
  const beat = nextBeat(s.hosts);
  connect(t, s);
  // Nothing ticks the client's clock: only the control connection can have sent this beat.
  const [host, body] = await beat;
  const mine = await Promise.all(['/', '/var'].map((p) => statfs(p)));
  assert.deepEqual(order, ['registered', 'heartbeat']);
  assert.equal(host.id, s.hb.sandboxId);
  assert.equal(`hydra-${host.id}`, s.runnerId);
  assert.equal(host.status, 'online');
  assert.notEqual(host.last_seen, null, 'the beat gave it a last_seen');

  assert.equal(body.gpu_vendor, 'intel');
  assert.equal(body.render_node, '/dev/dri/renderD129');
  assert.equal(body.helix_version, VERSION);
  assert.deepEqual(body.desktop_versions, { sway: 'sha256:aaa' });
  assert.equal(body.instance_type, 'test-box');
  assert.equal(body.privileged_mode_enabled, false);

  const disks = body.disk_usage as DiskUsage[];
  assert.deepEqual(
    disks.map((d) => d.mount_point),
    ['/', '/var'],
  );
  assert.deepEqual([...seen.keys()], ['/', '/var']);
  disks.forEach((d, k) => {
    const f = seen.get(d.mount_point)!;
    const own = mine[k]!;
    // The production sender's formula: used = total - free (f_bfree), avail from f_bavail.
    assert.equal(d.total_bytes, f.blocks * f.bsize);
    assert.equal(d.total_bytes, own.blocks * own.bsize, 'the same disk as the test sees');
    assert.equal(d.used_bytes, (f.blocks - f.bfree) * f.bsize);
    assert.equal(d.avail_bytes, f.bavail * f.bsize);
    assert.ok(d.avail_bytes <= d.total_bytes - d.used_bytes, 'f_bavail excludes the reserved blocks');
    assert.equal(d.used_percent, (d.used_bytes / d.total_bytes) * 100);
    assert.equal(d.alert_level, alertOf(d.used_percent));
  });

  assert.equal(await afterBeat(s, 1), 'ok');
  const status = s.hb.status();
  assert.deepEqual([status.lastResult, status.consecutiveFailures, status.lastOkAt], ['ok', 0, new Date(s.clock.now()).toISOString()]);
  assert.ok(!s.logs.raw.some((l) => l.includes(TOKEN)), 'the token never reaches the logs');
});

test('--heartbeat-extra is read again on every beat; a bad file is left out with one coded warning', async (t) => {
  const dir = tempDir(t);
  const extra = join(dir, 'extra.json');
  writeFileSync(extra, JSON.stringify({ desktop_versions: { sway: 'v1' } }));
  const s = await setup(t, { extraFile: extra });
  let beat = nextBeat(s.hosts);
  connect(t, s);
  assert.deepEqual((await beat)[1].desktop_versions, { sway: 'v1' });
  await afterBeat(s, 1);

  writeFileSync(extra, JSON.stringify({ desktop_versions: { sway: 'v2', ubuntu: 'u1' }, instance_type: 'later' }));
  beat = nextBeat(s.hosts);
  s.clock.tick(30_000);
  let [, body] = await beat;
  assert.deepEqual(body.desktop_versions, { sway: 'v2', ubuntu: 'u1' });
  assert.equal(body.instance_type, 'later');
  await afterBeat(s, 2);

  // Half-written: the beat still goes, without the file's fields; warned once, with the code.
  writeFileSync(extra, '{"desktop_versions": {"sway": ');
  for (let n = 0; n < 2; n++) {
    beat = nextBeat(s.hosts);
    s.clock.tick(30_000);
    [, body] = await beat;
    assert.equal(body.desktop_versions, undefined);
    assert.equal(body.gpu_vendor, 'nvidia', 'the agent facts are still sent');
    assert.equal(await afterBeat(s, 3 + n), 'ok');
  }
  assert.equal(
    s.logs.count((l) => l.code === ErrorCodes.HEARTBEAT_EXTRA_INVALID),
    1,
  );
  assert.equal(s.logs.find((l) => l.code === ErrorCodes.HEARTBEAT_EXTRA_INVALID)?.level, 'warn');

  writeFileSync(extra, JSON.stringify({ desktop_versions: { sway: 'v3' } }));
  beat = nextBeat(s.hosts);
  s.clock.tick(30_000);
  assert.deepEqual((await beat)[1].desktop_versions, { sway: 'v3' });
  await s.logs.waitFor((l) => l.level === 'info' && l.msg.includes('valid again'));
});

test('a plane that forgets the host (DELETE, then a restart) learns it again on the next control connection, beat included', async (t) => {
  const s = await setup(t);
  let beat = nextBeat(s.hosts);
  connect(t, s);
  await beat;
  await afterBeat(s, 1);
  const id = s.hb.sandboxId;

  // Forgotten: heartbeats are answered 200 and change nothing.
  assert.deepEqual((await call(s.plane.url, 'DELETE', `/api/v1/sandboxes/${id}`, TOKEN)).body, { status: 'deleted' });
  const ignored = once(s.hosts, 'ignored-heartbeat', { signal: AbortSignal.timeout(15_000) }) as Promise<[string, HeartbeatBody]>;
  s.clock.tick(30_000);
  assert.equal((await ignored)[0], id);
  assert.equal(await afterBeat(s, 2), 'ok');
  assert.deepEqual(s.hosts.list(), []);

  // The next control connection registers it again, and the beat goes at once (no tick).
  beat = nextBeat(s.hosts);
  const registered = once(s.hosts, 'registered', { signal: AbortSignal.timeout(15_000) }) as Promise<[SandboxHost, { again: boolean }]>;
  s.plane.dialer(s.runnerId)?.terminate();
  const [again, how] = await registered;
  assert.deepEqual([again.id, how.again, again.last_seen], [id, false, null]);
  const [host] = await beat;
  assert.equal(host.gpu_vendor, 'nvidia');
  assert.notEqual(host.last_seen, null);
  await afterBeat(s, 3);

  // A restart: the store is empty and every connection drops.
  s.hosts.clear();
  beat = nextBeat(s.hosts);
  s.plane.server.closeAllConnections();
  for (const d of [s.plane.dialer(s.runnerId)]) d?.terminate();
  const [back] = await beat;
  assert.equal(back.id, id);
  assert.deepEqual(
    s.hosts.list().map((h) => [h.id, h.status, h.render_node]),
    [[id, 'online', '/dev/dri/renderD128']],
  );
});

test('a 500 and a 400 answer: coded warning once, jittered back-off on the clock, /readyz detail and metrics, then recovery', async (t) => {
  const dir = tempDir(t);
  const extra = join(dir, 'extra.json');
  writeFileSync(extra, '{}');
  let failWith500 = true;
  let calls = 0;
  const s = await setup(t, { extraFile: extra, retryMinMs: 1_000 }, (_req, res, _url, next) => {
    calls++;
    if (failWith500) res.writeHead(500, { 'content-type': 'text/plain' }).end('Internal Server Error\n');
    else next();
  });
  connect(t, s);
  assert.equal(await afterBeat(s, 1), 'error');
  // random() is 0: waits of 1 s, 2 s, 4 s, ... (p-retry's formula, capped at the interval).
  for (const [k, wait] of [1_000, 2_000].entries()) {
    s.clock.tick(wait - 1);
    await new Promise((resolve) => setImmediate(resolve));
    const before = calls;
    assert.equal(s.metrics.results.length, k + 1, 'still waiting');
    s.clock.tick(1);
    assert.equal(await afterBeat(s, k + 2), 'error');
    assert.equal(calls, before + 1);
  }
  const warns = s.logs.lines.filter((l) => l.level === 'warn' && l.status === 500);
  assert.equal(warns.length, 1, 'one warning per failure streak');
  assert.equal(warns[0]?.code, ErrorCodes.REGISTRY_FAILED);

  // The plane itself refuses the body: a field of the wrong type inside disk_usage.
  failWith500 = false;
  writeFileSync(extra, JSON.stringify({ disk_usage: [1] }));
  s.clock.tick(4_000);
  assert.equal(await afterBeat(s, 4), 'error');
  const status = s.hb.status();
  assert.equal(status.consecutiveFailures, 4);
  assert.equal(status.lastError?.code, ErrorCodes.REGISTRY_FAILED);
  assert.match(status.lastError.message, /HTTP 400.*Invalid request body.*--heartbeat-extra/);
  let text = await s.metrics.registry.metrics();
  assert.equal(sample(text, 'revdial_registry_heartbeats_total', { result: 'error' }), 4);
  assert.equal(sample(text, 'revdial_registry_heartbeat_consecutive_failures'), 4);
  assert.equal(sample(text, 'revdial_registry_last_heartbeat_ok_timestamp_seconds'), 0);

  writeFileSync(extra, '{}');
  const beat = nextBeat(s.hosts);
  s.clock.tick(8_000);
  await beat;
  assert.equal(await afterBeat(s, 5), 'ok');
  await s.logs.waitFor((l) => l.msg === 'Heartbeats answered again' && l.failures === 4);
  text = await s.metrics.registry.metrics();
  assert.equal(sample(text, 'revdial_registry_heartbeat_consecutive_failures'), 0);
  assert.equal(sample(text, 'revdial_registry_last_heartbeat_ok_timestamp_seconds'), s.clock.now() / 1000);
  assert.equal(s.hb.status().lastError, undefined);
});

test('a hung endpoint: each call cut at its time limit, retried with back-off, and the tunnel served meanwhile', async (t) => {
  const held: IncomingMessage[] = [];
  const closed: Promise<unknown>[] = [];
  const s = await setup(t, { requestTimeoutMs: 5_000 }, (req, res) => {
    held.push(req);
    closed.push(once(res, 'close', { signal: AbortSignal.timeout(15_000) }));
  });
  t.after(() => {
    for (const r of held) r.destroy();
  });
  const arrived = async (n: number): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (held.length < n) {
      if (Date.now() > deadline) throw new Error(`heartbeat ${n} never reached the plane`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  connect(t, s);
  await arrived(1);
  await s.plane.waitForRunner(s.runnerId, 10_000);

  // The tunnel works while the heartbeat hangs.
  const res = await s.plane.request(s.runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  assert.equal((JSON.parse((await readBody(res)).toString('utf8')) as { status: string }).status, 'ok');

  s.clock.tick(4_999);
  assert.equal(s.hb.status().lastResult, null, 'not cut before its limit');
  s.clock.tick(1);
  assert.equal(await afterBeat(s, 1), 'timeout');
  await closed[0]; // the connection was dropped, not left hanging
  const warn = await s.logs.waitFor((l) => l.level === 'warn' && l.code === ErrorCodes.REGISTRY_TIMEOUT);
  assert.match(warn.msg, /did not answer within 5000 ms/);

  s.clock.tick(1_000); // back-off, random() = 0
  await arrived(2);
  s.clock.tick(5_000);
  assert.equal(await afterBeat(s, 2), 'timeout');
  const text = await s.metrics.registry.metrics();
  assert.equal(sample(text, 'revdial_registry_heartbeats_total', { result: 'timeout' }), 2);
  assert.equal(sample(text, 'revdial_registry_heartbeat_duration_seconds_count'), 2);
  assert.equal(s.hb.status().consecutiveFailures, 2);

  const again = await s.plane.request(s.runnerId, { path: '/api/v1/system/health' });
  assert.equal(again.statusCode, 200);
  await readBody(again);

  // Shutdown abandons a hung beat at once.
  s.clock.tick(2_000);
  await arrived(3);
  await s.hb.stop();
  await closed[2];
});

test('stop(limit) deregisters with DELETE (--deregister-on-exit); stop() leaves the host listed', async (t) => {
  const s = await setup(t);
  const beat = nextBeat(s.hosts);
  connect(t, s);
  await beat;
  await afterBeat(s, 1);
  const deleted = once(s.hosts, 'deleted', { signal: AbortSignal.timeout(15_000) }) as Promise<[string, boolean]>;
  await s.hb.stop(1_000);
  assert.deepEqual(await deleted, [s.hb.sandboxId, true]);
  assert.deepEqual(s.hosts.list(), []);
  await s.logs.waitFor((l) => l.msg.includes('Deregistered this host'));

  const t2 = await setup(t);
  const beat2 = nextBeat(t2.hosts);
  connect(t, t2);
  await beat2;
  await afterBeat(t2, 1);
  let deletes = 0;
  t2.hosts.on('deleted', () => deletes++);
  await t2.hb.stop();
  assert.equal(deletes, 0);
  assert.equal(t2.hosts.list().length, 1);
});
