/**
 * Egress through a real HTTP CONNECT proxy on loopback (Debian's tinyproxy,
 * started here with its own config on a free port): the control connection,
 * each data connection and the registry calls all go through it, with
 * credentials from the proxy URL that never show up in a log line.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { installRegistryApi } from '../../dev/control-plane/registry-api.js';
import { Registry } from '../../dev/control-plane/registry.js';
import { createLogger } from '../../src/agent/logger.js';
import type { RegistryResult } from '../../src/agent/ops/metrics.js';
import { EgressProxy, bypassesProxy, proxyConfigFromEnv, safeProxy } from '../../src/agent/net/proxy.js';
import { DirectConnector } from '../../src/agent/net/connector.js';
import { PreconnectPool } from '../../src/agent/net/preconnect.js';
import { TlsSettings } from '../../src/agent/net/tls-context.js';
import { RegistryClient } from '../../src/agent/registry/wolf-instances.js';
import { TOKEN, readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';
import { makeCerts } from '../helpers/certs.js';
import { ObserverEvents, freePort, waitForPort } from '../helpers/ops.js';

const TINYPROXY = ['/usr/bin/tinyproxy', '/usr/sbin/tinyproxy'].find((p) => spawnSync(p, ['-v']).status === 0);
const SKIP = TINYPROXY ? false : 'tinyproxy is not installed (apt-get install -y tinyproxy; .ci/run installs it)';

const USER = 'agent';
const PASSWORD = 'pr0xy-S3cret-pw';

interface Tinyproxy {
  port: number;
  output: () => string;
  /** CONNECT requests the proxy established to `host:port`. */
  established: () => number;
  connects: (target: string) => number;
}

async function startTinyproxy(t: TestContext): Promise<Tinyproxy> {
  const dir = mkdtempSync(join(tmpdir(), 'revdial-tinyproxy-'));
  const port = await freePort();
  const conf = join(dir, 'tinyproxy.conf');
  writeFileSync(
    conf,
    [`Port ${port}`, 'Listen 127.0.0.1', 'Timeout 60', 'MaxClients 50', 'LogLevel Connect', `BasicAuth ${USER} ${PASSWORD}`, 'Allow 127.0.0.1', ''].join('\n'),
  );
  // -d: foreground, log lines on stdout.
  const child: ChildProcess = spawn(TINYPROXY!, ['-d', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await waitForPort(port);
  return {
    port,
    output: () => out,
    established: () => (out.match(/Established connection to host/g) ?? []).length,
    connects: (target) => out.split('\n').filter((l) => l.includes(`CONNECT ${target} HTTP/1.1`)).length,
  };
}

/** The agent's connector with this egress proxy (and CA). */
function through(egress: EgressProxy, ca?: Buffer): DirectConnector {
  return new DirectConnector({ tls: new TlsSettings({ rejectUnauthorized: true, ca }), proxy: egress });
}

class Results extends ObserverEvents {
  registration(result: RegistryResult): void {
    this.emit('registration', result);
  }
}

test('control, data and registry connections all go through the CONNECT proxy; its password is never logged', { skip: SKIP }, async (t) => {
  const proxy = await startTinyproxy(t);
  const plane = await startPlane(t);
  const registry = new Registry();
  installRegistryApi(plane, registry, { authorize: (token) => token === TOKEN });
  const { local } = await startWolf(t);
  const target = `127.0.0.1:${(plane.server.address() as AddressInfo).port}`;

  const egress = await EgressProxy.create({ explicit: new URL(`http://${USER}:${PASSWORD}@127.0.0.1:${proxy.port}`), noProxy: '' });
  t.after(() => egress.destroy());
  const events = new ObserverEvents();
  const connected = events.next('controlConnected');
  const { runnerId, logs } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true, connector: through(egress) },
    observer: events,
  });
  await connected;
  assert.equal(proxy.connects(target), 1, 'the control connection went through the proxy');

  for (let i = 0; i < 3; i++) {
    const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
    assert.equal(res.statusCode, 200);
    await readBody(res);
  }
  assert.equal(proxy.connects(target), 4, 'one CONNECT per data connection');

  const dispatcher = await egress.dispatcherFor(new URL(plane.url), { rejectUnauthorized: true });
  const results = new Results();
  const client = new RegistryClient({
    apiUrl: new URL(plane.url),
    token: () => TOKEN,
    userAgent: 'wolf-revdial-client/test',
    dispatcher,
    instance: { name: 'proxied', address: 'wolf-proxied', gpuType: 'none', maxSandboxes: 1 },
    heartbeatIntervalMs: 60_000,
    log: logs.log,
    observer: results,
  });
  client.start();
  t.after(() => dispatcher.close());
  assert.equal(await results.next('registration'), 'ok');
  await client.stop(2_000);
  assert.deepEqual(registry.list(), []);
  assert.ok(proxy.connects(target) >= 5, 'registry calls went through the proxy too');
  assert.ok(proxy.established() >= 5);

  // Neither the password nor its Basic encoding shows up in any log line,
  // not even when the proxy URL is handed to the project's logger.
  const basic = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
  const lines: string[] = [];
  const projectLog = createLogger('debug', { write: (s: string) => void lines.push(s) });
  projectLog.info({ proxy: `http://${USER}:${PASSWORD}@127.0.0.1:${proxy.port}` }, `Connecting ${egress.describeRoute(new URL(plane.url))}`);
  for (const line of [...logs.raw, ...lines]) {
    assert.ok(!line.includes(PASSWORD), line);
    assert.ok(!line.includes(basic), line);
  }
  assert.match(lines.join(''), /via proxy http:\/\/\[credentials\]@127\.0\.0\.1:/);
});

test('wrong proxy credentials are REVDIAL_PROXY_REJECTED, not a control plane refusal', { skip: SKIP }, async (t) => {
  const proxy = await startTinyproxy(t);
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const egress = await EgressProxy.create({ explicit: new URL(`http://${USER}:not-the-${PASSWORD}@127.0.0.1:${proxy.port}`), noProxy: '' });
  t.after(() => egress.destroy());
  const events = new ObserverEvents();
  const failed = events.next<string>('controlAttemptFailed');
  const { logs } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true, connector: through(egress) },
    observer: events,
  });
  assert.equal(await failed, ErrorCodes.PROXY_REJECTED);
  await logs.waitFor((l) => l.code === ErrorCodes.PROXY_REJECTED);
  assert.ok(!logs.raw.some((l) => l.includes(PASSWORD)));
});

test('an unreachable proxy is REVDIAL_PROXY_FAILED', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const egress = await EgressProxy.create({ explicit: new URL(`http://${USER}:${PASSWORD}@127.0.0.1:1`), noProxy: '' });
  t.after(() => egress.destroy());
  const events = new ObserverEvents();
  const failed = events.next<string>('controlAttemptFailed');
  const { logs } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true, connector: through(egress) },
    observer: events,
  });
  assert.equal(await failed, ErrorCodes.PROXY_FAILED);
  assert.ok(!logs.raw.some((l) => l.includes(PASSWORD)));
});

test('proxy choice: --proxy for every scheme, else HTTPS_PROXY / HTTP_PROXY by scheme, NO_PROXY always', async () => {
  const env = {
    HTTPS_PROXY: 'http://s.proxy:3128',
    http_proxy: 'h.proxy:8080',
    HTTP_PROXY: 'http://ignored.proxy:1',
    NO_PROXY: 'internal.example, .corp.example:8443, 10.0.0.0/8, [::1]',
  };
  const fromEnv = await EgressProxy.create(proxyConfigFromEnv(undefined, env));
  assert.equal(fromEnv.proxyFor(new URL('wss://api.example.com/x'))?.host, 's.proxy:3128');
  assert.equal(fromEnv.proxyFor(new URL('ws://api.example.com/x'))?.href, 'http://h.proxy:8080/');
  assert.equal(fromEnv.proxyFor(new URL('wss://internal.example/x')), undefined);
  assert.equal(fromEnv.proxyFor(new URL('wss://a.internal.example/x')), undefined);
  assert.equal(fromEnv.proxyFor(new URL('https://api.corp.example:8443/')), undefined);
  assert.ok(fromEnv.proxyFor(new URL('https://api.corp.example/')), 'port 443 is not excluded');
  assert.equal(fromEnv.proxyFor(new URL('ws://10.1.2.3:8080/')), undefined);
  assert.ok(fromEnv.proxyFor(new URL('ws://11.1.2.3:8080/')));
  assert.equal(fromEnv.proxyFor(new URL('ws://[::1]:8080/')), undefined);

  const explicit = await EgressProxy.create(proxyConfigFromEnv(new URL('http://u:p@only.proxy:3128'), { ...env, NO_PROXY: 'skip.example' }));
  assert.equal(explicit.proxyFor(new URL('ws://api.example.com/'))?.host, 'only.proxy:3128');
  assert.equal(explicit.proxyFor(new URL('wss://api.example.com/'))?.host, 'only.proxy:3128');
  assert.equal(explicit.proxyFor(new URL('wss://skip.example/')), undefined);
  assert.equal(safeProxy(new URL('http://u:p@only.proxy:3128')), 'http://[credentials]@only.proxy:3128');

  assert.equal(bypassesProxy(new URL('http://anything/'), '*'), true);
  assert.equal(bypassesProxy(new URL('http://example.com/'), ''), false);
  assert.equal(bypassesProxy(new URL('http://notexample.com/'), 'example.com'), false);
  assert.throws(() => proxyConfigFromEnv(undefined, { HTTPS_PROXY: 'socks5://x:1080' }), { code: ErrorCodes.CONFIG_INVALID });
  assert.equal((await EgressProxy.create(proxyConfigFromEnv(undefined, {}))).proxyFor(new URL('wss://api.example.com/')), undefined);
  // HTTP_PROXY alone applies to ws:// targets.
  assert.ok((await EgressProxy.create(proxyConfigFromEnv(undefined, { HTTP_PROXY: 'h.proxy:8080' }))).proxyFor(new URL('ws://api.example.com/')));
});

test('wss through the CONNECT proxy: TLS to the control plane inside the tunnel, certificate still verified', { skip: SKIP }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const proxy = await startTinyproxy(t);
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  const { local } = await startWolf(t);
  const target = `127.0.0.1:${(plane.server.address() as AddressInfo).port}`;
  const egress = await EgressProxy.create({ explicit: new URL(`http://${USER}:${PASSWORD}@127.0.0.1:${proxy.port}`), noProxy: '' });
  t.after(() => egress.destroy());
  const { runnerId } = startAgent(t, plane, local, {
    transport: {
      token: () => TOKEN,
      userAgent: 'wolf-revdial-client/test',
      rejectUnauthorized: true,
      ca: certs.caCert,
      connector: through(egress, certs.caCert),
    },
  });
  await plane.waitForRunner(runnerId, 10_000);
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.equal(proxy.connects(target), 2, 'control and data connection each tunnelled with CONNECT');
});

test('warm connections go through the CONNECT proxy too, and pick-ups use them', { skip: SKIP }, async (t) => {
  const proxy = await startTinyproxy(t);
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const target = `127.0.0.1:${(plane.server.address() as AddressInfo).port}`;
  const egress = await EgressProxy.create({ explicit: new URL(`http://${USER}:${PASSWORD}@127.0.0.1:${proxy.port}`), noProxy: '' });
  t.after(() => egress.destroy());
  let hits = 0;
  const warm = new ObserverEvents();
  const pool = new PreconnectPool({
    connector: through(egress),
    cap: 2,
    log: createLogger('silent'),
    observer: {
      warmSize: (n) => warm.emit('size', n),
      warmTaken: (hit) => {
        if (hit) hits++;
      },
    },
  });
  t.after(() => pool.close());
  const ready = warm.next('size');
  const { runnerId } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true, connector: pool },
    preconnect: pool,
  });
  await plane.waitForRunner(runnerId, 10_000);
  assert.equal(await ready, 1);
  assert.equal(proxy.connects(target), 2, 'the control connection and a warm one, both tunnelled');
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.equal(hits, 1, 'the pick-up took the warm connection');
});
