/**
 * `wolf-revdial-client doctor`, the real executable, against the project's
 * control plane (over TLS with a throwaway CA, with the wolf-instances
 * registry), the stand-in Wolf on a unix socket, a real CONNECT proxy
 * (tinyproxy) and a loopback listener that accepts and never answers. Each
 * failure shows as its ✗ line and exit code 1; all passing is exit 0. The
 * token never appears in what it prints.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, after, test } from 'node:test';
import { installRegistryApi } from '../../dev/control-plane/registry-api.js';
import { Registry } from '../../dev/control-plane/registry.js';
import { installSandboxHostsApi } from '../../dev/control-plane/sandbox-hosts-api.js';
import { SandboxHosts } from '../../dev/control-plane/sandbox-hosts.js';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { makeCerts } from '../helpers/certs.js';
import { BIN, TOKEN, agentEnv, startPlane, startWolf } from '../helpers/harness.js';
import { freePort, get, waitForPort } from '../helpers/ops.js';

const TINYPROXY = ['/usr/bin/tinyproxy', '/usr/sbin/tinyproxy'].find((p) => spawnSync(p, ['-v']).status === 0);

const certs = makeCerts();
const dir = mkdtempSync(join(tmpdir(), 'revdial-doctor-'));
after(() => {
  certs.cleanup();
  rmSync(dir, { recursive: true, force: true });
});
const tokenFile = join(dir, 'runner-token');
writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
const WRONG_TOKEN = 'wrong-token-0123456789abcdef';
const wrongTokenFile = join(dir, 'wrong-token');
writeFileSync(wrongTokenFile, `${WRONG_TOKEN}\n`, { mode: 0o600 });

interface Step {
  step: string;
  status: 'ok' | 'fail' | 'skip';
  title: string;
  detail: string;
  fix?: string;
  code?: string;
}
interface Run {
  code: number | null;
  out: string;
  ms: number;
  lines: string[];
}

/** Runs `doctor` with this environment and flags; its output must never hold a token. */
async function doctor(env: Record<string, string>, args: string[] = []): Promise<Run> {
  const started = performance.now();
  const child: ChildProcess = spawn(BIN, ['doctor', ...args], { env: agentEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(killer);
  for (const secret of [TOKEN, WRONG_TOKEN]) assert.ok(!out.includes(secret), `the output holds a token:\n${out}`);
  return { code, out, ms: performance.now() - started, lines: out.trimEnd().split('\n') };
}

async function doctorJson(env: Record<string, string>, args: string[] = []): Promise<{ code: number | null; steps: Map<string, Step>; ok: boolean }> {
  const run = await doctor(env, ['--json', ...args]);
  const report = JSON.parse(run.out) as { ok: boolean; steps: Step[] };
  return { code: run.code, ok: report.ok, steps: new Map(report.steps.map((s) => [s.step, s])) };
}

/** The line of a step, by the start of its title. */
function line(run: Run, mark: '✓' | '✗' | '-', title: string): string {
  const found = run.lines.find((l) => l.startsWith(`${mark} ${title}`));
  assert.ok(found, `no "${mark} ${title}" line in:\n${run.out}`);
  return found;
}

/** A TLS control plane with the wolf-instances registry, and the stand-in Wolf on a unix socket. */
async function setup(
  t: TestContext,
  tls: { key: Buffer; cert: Buffer } | null = { key: certs.key, cert: certs.cert },
): Promise<{ plane: ControlPlane; env: Record<string, string> }> {
  const plane = await startPlane(t, tls ? { tls } : {});
  installRegistryApi(plane, new Registry(), { authorize: (token) => token === TOKEN });
  const { local } = await startWolf(t, { socketPath: join(mkdtempSync(join(dir, 'wolf-')), 'wolf.sock') });
  const env: Record<string, string> = {
    HELIX_API_URL: plane.url,
    WOLF_ID: 'doctor',
    RUNNER_TOKEN_FILE: tokenFile,
    WOLF_LOCAL_ADDR: local,
    REVDIAL_REGISTER: 'true',
  };
  if (tls) env.REVDIAL_CA_FILE = certs.caFile;
  return { plane, env };
}

test('all checks pass: one ✓ line per step, exit 0, a real upgrade closed at once', async (t) => {
  const { plane, env } = await setup(t);
  const upgrades: string[] = [];
  plane.on('dialer', (d: { runnerId: string }) => upgrades.push(d.runnerId));
  const run = await doctor(env);
  assert.equal(run.code, 0, run.out);
  for (const title of [
    'configuration valid',
    "the control plane's host resolves",
    'TCP reaches 127.0.0.1:',
    'TLS verifies',
    'the token is accepted',
    "Wolf's API answers on unix://",
    'the wolf-instances registry answers',
  ]) {
    line(run, '✓', title);
  }
  assert.match(line(run, '✓', 'TLS verifies'), /CN=localhost .* issued by CN=revdial test CA, valid until \d{4}-/);
  assert.match(line(run, '✓', "Wolf's API answers"), /GET \/api\/v1\/apps answered HTTP 200/);
  assert.equal(run.lines.filter((l) => l.startsWith('✗')).length, 0);
  assert.match(run.lines.at(-1) ?? '', /^All checks passed/);
  assert.deepEqual(upgrades, ['wolf-doctor'], 'one control connection, for the configured runner id');

  const json = await doctorJson(env);
  assert.equal(json.code, 0);
  assert.equal(json.ok, true);
  assert.deepEqual(
    [...json.steps.values()].map((s) => `${s.step}:${s.status}`),
    ['config:ok', 'dns:ok', 'tcp:ok', 'tls:ok', 'token:ok', 'wolf:ok', 'registry:ok'],
  );
});

test("wrong token: ✗ on the token step, named as the token's fault, exit 1", async (t) => {
  const { env } = await setup(t);
  const run = await doctor({ ...env, RUNNER_TOKEN_FILE: wrongTokenFile });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', 'the token is accepted'), /rejects the runner token \(HTTP 401\)/);
  assert.ok(run.out.includes(`put the right one in the token file ${wrongTokenFile}`), run.out);
  line(run, '✓', 'TLS verifies');
  line(run, '✓', "Wolf's API answers");
  const json = await doctorJson({ ...env, RUNNER_TOKEN_FILE: wrongTokenFile });
  assert.equal(json.code, 1);
  assert.equal(json.steps.get('token')?.code, ErrorCodes.AUTH_REJECTED);
  // The registry refuses it too, but its step follows the token's in the chain.
  assert.equal(json.steps.get('registry')?.status, 'skip');
});

test('untrusted certificate: ✗ on TLS naming the certificate and --ca-file, nothing sent', async (t) => {
  const { plane, env } = await setup(t);
  let upgrades = 0;
  plane.on('dialer', () => upgrades++);
  const { REVDIAL_CA_FILE: _ca, ...withoutCa } = env;
  const run = await doctor(withoutCa);
  assert.equal(run.code, 1);
  assert.match(
    line(run, '✗', 'TLS verifies'),
    /certificate CN=localhost .* issued by CN=revdial test CA is not signed by a CA this host trusts \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/,
  );
  assert.ok(run.lines.some((l) => l.includes('--ca-file / REVDIAL_CA_FILE')));
  line(run, '-', 'the token is accepted');
  assert.equal(upgrades, 0, 'the token never went to an untrusted peer');
  const json = await doctorJson(withoutCa);
  assert.equal(json.steps.get('tls')?.code, ErrorCodes.TLS_UNTRUSTED);
});

test('expired certificate: ✗ on TLS saying which certificate expired and when', async (t) => {
  const expired = makeCerts({ days: -1 });
  t.after(() => expired.cleanup());
  const { env } = await setup(t, { key: expired.key, cert: expired.cert });
  const run = await doctor({ ...env, REVDIAL_CA_FILE: expired.caFile });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', 'TLS verifies'), /certificate CN=localhost .* expired on \d{4}-\d\d-\d\dT/);
  const json = await doctorJson({ ...env, REVDIAL_CA_FILE: expired.caFile });
  assert.equal(json.steps.get('tls')?.code, ErrorCodes.TLS_CERT_EXPIRED);
});

test('certificate for another host: ✗ on TLS naming the host', async (t) => {
  const other = makeCerts({ san: 'DNS:other.example' });
  t.after(() => other.cleanup());
  const { env } = await setup(t, { key: other.key, cert: other.cert });
  const run = await doctor({ ...env, REVDIAL_CA_FILE: other.caFile });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', 'TLS verifies'), /\[DNS:other\.example\] .* is not for 127\.0\.0\.1/);
  const json = await doctorJson({ ...env, REVDIAL_CA_FILE: other.caFile });
  assert.equal(json.steps.get('tls')?.code, ErrorCodes.TLS_HOSTNAME_MISMATCH);
});

test("Wolf down: ✗ on Wolf's API with the socket path, the control plane steps still ✓", async (t) => {
  const { env } = await setup(t);
  const missing = join(dir, 'no-wolf-here.sock');
  const run = await doctor({ ...env, WOLF_LOCAL_ADDR: `unix://${missing}` });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', `Wolf's API answers on unix://${missing}`), /ENOENT/);
  assert.ok(run.out.includes(`no socket at ${missing}: start Wolf`), run.out);
  line(run, '✓', 'the token is accepted');
  const json = await doctorJson({ ...env, WOLF_LOCAL_ADDR: `unix://${missing}` });
  assert.equal(json.steps.get('wolf')?.code, ErrorCodes.LOCAL_DIAL_FAILED);
});

test('egress proxy refusing CONNECT: ✗ on TCP naming the proxy', { skip: TINYPROXY ? false : 'tinyproxy is not installed' }, async (t) => {
  const { plane, env } = await setup(t);
  // A real proxy that allows CONNECT to port 443 only: the control plane's port is refused.
  const port = await freePort();
  const conf = join(dir, `tinyproxy-${port}.conf`);
  writeFileSync(conf, [`Port ${port}`, 'Listen 127.0.0.1', 'Timeout 30', 'Allow 127.0.0.1', 'ConnectPort 443', ''].join('\n'));
  const proxy = spawn(TINYPROXY!, ['-d', '-c', conf], { stdio: 'ignore' });
  t.after(async () => {
    if (proxy.exitCode === null && proxy.signalCode === null) {
      proxy.kill('SIGTERM');
      await once(proxy, 'exit');
    }
  });
  await waitForPort(port);
  const planePort = new URL(plane.url).port;
  const run = await doctor({ ...env, REVDIAL_PROXY: `http://127.0.0.1:${port}` });
  assert.equal(run.code, 1);
  assert.match(
    line(run, '✗', `TCP reaches 127.0.0.1:${planePort} via proxy http://127.0.0.1:${port}`),
    new RegExp(`egress proxy http://127\\.0\\.0\\.1:${port} refused CONNECT to 127\\.0\\.0\\.1:${planePort} \\(HTTP 403`),
  );
  line(run, '✓', "the egress proxy's host resolves");
  const json = await doctorJson({ ...env, REVDIAL_PROXY: `http://127.0.0.1:${port}` });
  assert.equal(json.steps.get('tcp')?.code, ErrorCodes.PROXY_REJECTED);
});

test('egress proxy not running: ✗ on TCP naming the proxy, not the control plane', async (t) => {
  const { env } = await setup(t);
  const port = await freePort();
  const run = await doctor({ ...env, REVDIAL_PROXY: `http://127.0.0.1:${port}` });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', 'TCP reaches'), new RegExp(`cannot reach the egress proxy http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\)`));
  const json = await doctorJson({ ...env, REVDIAL_PROXY: `http://127.0.0.1:${port}` });
  assert.equal(json.steps.get('tcp')?.code, ErrorCodes.PROXY_FAILED);
});

test('blackholed port (accepts, never answers): ✗ within the time limit, not minutes', async (t) => {
  const held: net.Socket[] = [];
  const hole = net.createServer((socket) => {
    held.push(socket); // never read from, never written to
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of held) s.destroy();
    return new Promise<void>((resolve) => hole.close(() => resolve()));
  });
  const { port } = hole.address() as AddressInfo;
  const { env } = await setup(t);

  // https: TCP connects, the TLS handshake never finishes.
  const secure = await doctor({ ...env, HELIX_API_URL: `https://127.0.0.1:${port}` }, ['--timeout', '1']);
  assert.equal(secure.code, 1);
  line(secure, '✓', `TCP reaches 127.0.0.1:${port}`);
  assert.match(line(secure, '✗', 'TLS verifies'), /accepted TCP but no TLS handshake finished within 1 s/);
  assert.ok(secure.ms < 15_000, `took ${Math.round(secure.ms)} ms`);

  // http: the WebSocket upgrade is never answered.
  const plain = await doctorJson({ ...env, HELIX_API_URL: `http://127.0.0.1:${port}` }, ['--timeout', '1']);
  assert.equal(plain.code, 1);
  assert.equal(plain.steps.get('token')?.status, 'fail');
  assert.equal(plain.steps.get('token')?.code, ErrorCodes.DOCTOR_TIMEOUT);
  assert.equal(plain.steps.get('wolf')?.status, 'ok');
});

test('--registry sandboxes: the sandboxes list answers (✓, hydra- runner id); a plane without it is ✗ 404', async (t) => {
  const { plane, env } = await setup(t);
  const { REVDIAL_REGISTER: _register, ...base } = env;
  installSandboxHostsApi(plane, new SandboxHosts(), { authorize: (token) => token === TOKEN });
  const run = await doctor({ ...base, REVDIAL_REGISTRY: 'sandboxes' });
  assert.equal(run.code, 0, run.out);
  assert.match(line(run, '✓', 'configuration valid'), /runner id hydra-doctor/);
  assert.match(line(run, '✓', 'the sandboxes registry answers'), /GET https:\/\/127\.0\.0\.1:\d+\/api\/v1\/sandboxes answered HTTP 200/);

  // The plane of setup() without the sandboxes API: the wolf-instances one only.
  const { env: older } = await setup(t);
  const { REVDIAL_REGISTER: _r, ...olderBase } = older;
  const json = await doctorJson({ ...olderBase, REVDIAL_REGISTRY: 'sandboxes' });
  assert.equal(json.code, 1);
  assert.equal(json.steps.get('registry')?.status, 'fail');
  assert.equal(json.steps.get('registry')?.code, ErrorCodes.REGISTRY_FAILED);
  assert.match(json.steps.get('registry')?.detail ?? '', /HTTP 404/);
});

test('invalid configuration: ✗ on the first step, the rest not checked, exit 1', async () => {
  const run = await doctor({ HELIX_API_URL: 'https://127.0.0.1:9', RUNNER_TOKEN_FILE: tokenFile });
  assert.equal(run.code, 1);
  assert.match(line(run, '✗', 'configuration valid'), /missing Wolf id: set WOLF_ID or --wolf-id/);
  assert.equal(run.lines.filter((l) => l.startsWith('- ')).length, 6);
  const bad = await doctorJson({ HELIX_API_URL: 'https://127.0.0.1:9', WOLF_ID: 'x', RUNNER_TOKEN_FILE: tokenFile, WOLF_LOCAL_ADDR: 'not an address' });
  assert.equal(bad.code, 1);
  assert.equal(bad.steps.get('config')?.status, 'fail');
});

test('an agent already connected here: the token step leaves its control connection alone', async (t) => {
  const { plane, env } = await setup(t);
  const port = await freePort();
  const agent = spawn(BIN, [], { env: agentEnv({ ...env, REVDIAL_REGISTER: 'false', REVDIAL_METRICS_ADDR: `127.0.0.1:${port}` }), stdio: 'ignore' });
  t.after(async () => {
    if (agent.exitCode === null && agent.signalCode === null) {
      agent.kill('SIGTERM');
      await once(agent, 'exit');
    }
  });
  await plane.waitForRunner('wolf-doctor', 15_000);
  let upgrades = 0;
  plane.on('dialer', () => upgrades++);
  const run = await doctor({ ...env, REVDIAL_METRICS_ADDR: `127.0.0.1:${port}` });
  assert.equal(run.code, 0, run.out);
  assert.match(line(run, '✓', 'the token is accepted'), /an agent on this host holds a control connection for runner id wolf-doctor/);
  assert.equal(upgrades, 0);
  // The control plane still reaches Wolf through the running agent.
  const res = await plane.request('wolf-doctor', { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  res.resume();

  // Its /readyz names its runner id; a doctor for another runner id is not fooled by it.
  const ready = await get(port, '/readyz');
  assert.equal((JSON.parse(ready.body) as { runnerId?: string }).runnerId, 'wolf-doctor');
  const other = await doctor({ ...env, WOLF_ID: 'other', REVDIAL_METRICS_ADDR: `127.0.0.1:${port}` });
  assert.equal(other.code, 0, other.out);
  assert.match(line(other, '✓', 'the token is accepted'), /accepted the token for runner id wolf-other/);
  assert.equal(upgrades, 1);
});
