/**
 * Warm connections ahead of need (net/preconnect.ts) and cheap TLS
 * (net/tls-context.ts), against real sockets on loopback: servers that close
 * idle connections at once or after a while, a middlebox that drops a warm
 * connection unnoticed, a token rotated while connections are warm, session
 * resumption seen from the server, a CA bundle changed on disk, and SIGTERM
 * with warm connections open. Ages run on a manual clock.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { writeFileSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import { after, test, type TestContext } from 'node:test';
import tls, { type TLSSocket } from 'node:tls';
import { ErrorCodes } from '../../src/agent/errors.js';
import { type ControlPlaneConnector, DirectConnector } from '../../src/agent/net/connector.js';
import { PreconnectPool, type PreconnectObserver, type WarmDropReason } from '../../src/agent/net/preconnect.js';
import { TlsSettings } from '../../src/agent/net/tls-context.js';
import { makeCerts } from '../helpers/certs.js';
import { LogCapture, ManualClock, TOKEN, agentEnv, readBody, spawnAgent, startAgent, startPlane, startWolf } from '../helpers/harness.js';

const certs = makeCerts();
const otherCerts = makeCerts();
after(() => {
  certs.cleanup();
  otherCerts.cleanup();
});

/** A PreconnectObserver whose events tests can await. */
class PoolEvents extends EventEmitter implements PreconnectObserver {
  size = 0;
  hits = 0;
  misses = 0;
  readonly dropped: WarmDropReason[] = [];

  warmSize(size: number): void {
    this.size = size;
    this.emit('size', size);
  }
  warmTaken(hit: boolean): void {
    if (hit) this.hits++;
    else this.misses++;
  }
  warmDropped(reason: WarmDropReason): void {
    this.dropped.push(reason);
    this.emit('dropped', reason);
  }

  /** Resolves once `pred` holds (checked now and after every event). */
  until(pred: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!pred()) return;
        clearTimeout(timer);
        this.removeListener('size', check);
        this.removeListener('dropped', check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.removeListener('size', check);
        this.removeListener('dropped', check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.on('size', check);
      this.on('dropped', check);
    });
  }
}

interface Front {
  url: string;
  /** Connections accepted so far. */
  accepted: () => number;
  /** Connections open now that never sent a byte. */
  idle: () => Socket[];
  /** Closes every connection that has not sent a byte (an idle timeout firing). */
  closeIdle: () => void;
  /** Forgets the connections that have not sent a byte: their first byte gets a reset (a NAT or load balancer that dropped them). */
  forgetIdle: () => void;
  events: EventEmitter;
}

/**
 * A TCP relay in front of `target` (or a bare server when `target` is 0) that
 * plays the middleboxes: `closeIdleAfterMs` closes a connection that sent
 * nothing for that long; `forgetIdle()` makes the quiet ones get a reset,
 * without forwarding, when they first speak.
 */
async function startFront(t: TestContext, target: number, options: { closeIdleAfterMs?: number } = {}): Promise<Front> {
  const sockets = new Set<Socket>();
  const quiet = new Set<Socket>();
  const forgotten = new Set<Socket>();
  const events = new EventEmitter();
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted++;
    sockets.add(client);
    quiet.add(client);
    client.on('error', () => undefined);
    client.once('close', () => {
      sockets.delete(client);
      quiet.delete(client);
      events.emit('closed', client);
    });
    const timer = options.closeIdleAfterMs === undefined ? undefined : setTimeout(() => client.destroy(), options.closeIdleAfterMs);
    client.once('data', (first: Buffer) => {
      quiet.delete(client);
      clearTimeout(timer);
      if (forgotten.has(client)) {
        client.resetAndDestroy();
        events.emit('reset');
        return;
      }
      if (target === 0) return;
      const upstream = net.connect(target, '127.0.0.1');
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      upstream.write(first);
      client.pipe(upstream).pipe(client);
    });
    events.emit('accepted', client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    accepted: () => accepted,
    idle: () => [...quiet],
    closeIdle: () => {
      for (const s of quiet) s.destroy();
    },
    forgetIdle: () => {
      for (const s of quiet) forgotten.add(s);
    },
    events,
  };
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}

function makePool(
  t: TestContext,
  options: { cap?: number; clock?: ManualClock; tls?: TlsSettings; connector?: ControlPlaneConnector } = {},
): { pool: PreconnectPool; events: PoolEvents; logs: LogCapture } {
  const events = new PoolEvents();
  const logs = new LogCapture();
  const pool = new PreconnectPool({
    connector: options.connector ?? new DirectConnector({ tls: options.tls ?? new TlsSettings({ rejectUnauthorized: true }) }),
    cap: options.cap ?? 4,
    log: logs.log,
    observer: events,
    ...(options.clock ? { clock: options.clock } : {}),
  });
  t.after(() => pool.close());
  return { pool, events, logs };
}

test('an idle host keeps one warm connection; it is replaced before it is 30 s old', async (t) => {
  const front = await startFront(t, 0);
  const clock = new ManualClock(1_000_000);
  const { pool, events } = makePool(t, { clock });
  pool.start(new URL(front.url.replace('http:', 'ws:')));
  await events.until(() => events.size === 1, 'one warm connection');
  assert.equal(pool.target, 1, 'no demand yet: one');
  assert.equal(front.accepted(), 1);
  const first = front.idle()[0];
  assert.ok(first);
  const firstClosed = once(first, 'close');

  clock.tick(19_999);
  assert.deepEqual(events.dropped, [], 'not replaced before 20 s');
  clock.tick(10_001);
  assert.deepEqual(events.dropped, ['aged'], 'replaced by 30 s');
  await firstClosed;
  await events.until(() => events.size === 1 && front.accepted() === 2, 'a fresh one in its place');
});

test('demand sizes the pool: a burst raises the target, up to the cap', async (t) => {
  const front = await startFront(t, 0);
  const clock = new ManualClock(1_000_000);
  const { pool, events } = makePool(t, { clock, cap: 3 });
  const url = new URL(front.url.replace('http:', 'ws:'));
  pool.start(url);
  await events.until(() => events.size === 1, 'one warm connection');
  const taken: Socket[] = [];
  t.after(() => taken.forEach((s) => s.destroy()));
  for (let i = 0; i < 5; i++) {
    const { socket } = await pool.connect(url, AbortSignal.timeout(5_000));
    taken.push(socket);
  }
  assert.equal(events.hits + events.misses, 5);
  assert.ok(events.hits >= 1, 'the first took the warm one');
  assert.equal(pool.target, 3, 'five pick-ups in one second, capped at 3');
  await events.until(() => events.size === 3, 'three warm connections');
  // 31 s later the burst has left the window: back to one (the rest age out, not refilled).
  clock.tick(31_000);
  assert.equal(pool.target, 1);
});

test('refills on their way count against the target: no handshake is paid for a socket the pool then closes unused', async (t) => {
  const front = await startFront(t, 0);
  const port = portOf(front.url);
  const sockets: Socket[] = [];
  t.after(() => sockets.forEach((s) => s.destroy()));
  // Refills (fresh: true) wait until the test lets them through: a long round trip.
  const gates: (() => void)[] = [];
  const connector: ControlPlaneConnector = {
    connect: async (_url, _signal, opts) => {
      if (opts?.fresh === true) await new Promise<void>((resolve) => gates.push(resolve));
      const socket = net.connect(port, '127.0.0.1');
      sockets.push(socket);
      await once(socket, 'connect');
      return { socket, warm: false };
    },
  };
  const clock = new ManualClock(1_000_000);
  const { pool, events } = makePool(t, { cap: 4, clock, connector });
  const url = new URL(front.url.replace('http:', 'ws:'));
  pool.start(url);
  assert.equal(gates.length, 1, 'an idle host: one refill');
  clock.tick(100);
  gates.shift()?.();
  await events.until(() => events.size === 1, 'the first warm connection (it took 100 ms)');

  for (let i = 0; i < 20; i++) await pool.connect(url, AbortSignal.timeout(5_000));
  assert.equal(pool.target, 4, 'twenty pick-ups in one second, capped at 4');
  assert.equal(gates.length, 4, 'four refills on their way, not one per pick-up');

  // The demand stops and what was on its way arrives: every one is kept.
  clock.tick(2_000);
  for (const open of gates.splice(0)) open();
  await events.until(() => events.size === 4, 'four warm connections (the cap)');
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(events.dropped, [], 'none closed unused');
  assert.equal(sockets.filter((s) => s.destroyed).length, 0, 'no socket destroyed');
  assert.equal(gates.length, 0, 'nothing more dialled');
});

test('a server that closes warm connections at once: the pool backs off, no storm', async (t) => {
  const front = await startFront(t, 0, { closeIdleAfterMs: 0 });
  const { pool, events, logs } = makePool(t);
  pool.start(new URL(front.url.replace('http:', 'ws:')));
  await events.until(() => events.dropped.filter((r) => r === 'closed').length >= 2, 'two closed by the server', 15_000);
  const line = await logs.waitFor((l) => l.code === ErrorCodes.CONNECT_FAILED && l.msg.startsWith('Warm connection to'));
  assert.equal(line.level, 'warn');
  assert.equal(
    logs.count((l) => l.level === 'warn'),
    1,
    'one warning for the streak, not one per attempt',
  );
  // Back-off (1 s doubling): over the time it took, only a handful of attempts.
  assert.ok(front.accepted() <= 4, `${front.accepted()} connections`);
});

test('a server that closes idle connections after N seconds: warm connections are replaced sooner from then on', async (t) => {
  const front = await startFront(t, 0);
  const clock = new ManualClock(1_000_000);
  const { pool, events, logs } = makePool(t, { clock });
  pool.start(new URL(front.url.replace('http:', 'ws:')));
  await events.until(() => events.size === 1, 'one warm connection');
  assert.equal(pool.maxAgeMs, 20_000);
  clock.tick(8_000);
  front.closeIdle(); // the server's idle timeout: 8 s
  await logs.waitFor((l) => l.msg.includes('closed a warm connection after 8000 ms idle'));
  assert.equal(pool.maxAgeMs, 4_800);
  await events.until(() => events.size === 1 && front.accepted() === 2, 'refilled');
  clock.tick(4_800 + 2_400);
  assert.deepEqual(events.dropped, ['closed', 'aged'], 'the new one is replaced before 8 s');
});

test('a warm connection that receives data is dropped', async (t) => {
  const server = net.createServer((c) => c.end('HTTP/1.1 408 Request Timeout\r\n\r\n'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const { pool, events, logs } = makePool(t);
  pool.start(new URL(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`));
  await events.until(() => events.dropped.length >= 1, 'dropped');
  assert.ok(['unexpected_data', 'closed'].includes(events.dropped[0] as string));
  assert.equal(pool.size, 0);
  if (events.dropped[0] === 'unexpected_data') await logs.waitFor((l) => l.msg.startsWith('A warm connection received data'));
});

test('through the agent: pick-ups take warm connections; a rotated token goes with the next upgrade', async (t) => {
  let valid = TOKEN;
  const seen: string[] = [];
  const plane = await startPlane(t, {
    authorize: (tok) => {
      seen.push(tok);
      return tok === valid;
    },
  });
  const front = await startFront(t, portOf(plane.url));
  const { local } = await startWolf(t);
  const events = new PoolEvents();
  const logs = new LogCapture();
  const pool = new PreconnectPool({
    connector: new DirectConnector({ tls: new TlsSettings({ rejectUnauthorized: true }) }),
    cap: 4,
    log: logs.log,
    observer: events,
  });
  let token = TOKEN;
  const { runnerId } = startAgent(t, plane, local, {
    apiUrl: new URL(front.url),
    transport: { token: () => token, userAgent: 'test', rejectUnauthorized: true, connector: pool },
    preconnect: pool,
  });
  await plane.waitForRunner(runnerId, 10_000);
  await events.until(() => events.size >= 1, 'a warm connection');
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.equal(events.hits, 1, 'the pick-up used the warm connection');

  await events.until(() => events.size >= 1, 'warm again');
  // Rotate while the connection is warm: the next upgrade must carry the new token.
  token = 'rotated-token-0123456789';
  valid = token;
  seen.length = 0;
  const again = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(again.statusCode, 200);
  await readBody(again);
  assert.deepEqual(seen, [token], 'the data upgrade carried the rotated token');
  assert.equal(events.hits, 2, 'on a connection warmed with the old token in force');
});

test('a warm connection a middlebox forgot: the pick-up retries on a fresh one and the request succeeds', async (t) => {
  const plane = await startPlane(t);
  const front = await startFront(t, portOf(plane.url));
  const { local } = await startWolf(t);
  const events = new PoolEvents();
  const pool = new PreconnectPool({
    connector: new DirectConnector({ tls: new TlsSettings({ rejectUnauthorized: true }) }),
    cap: 2,
    log: new LogCapture().log,
    observer: events,
  });
  const results: string[] = [];
  const { runnerId, logs } = startAgent(t, plane, local, {
    apiUrl: new URL(front.url),
    transport: { token: () => TOKEN, userAgent: 'test', rejectUnauthorized: true, connector: pool },
    preconnect: pool,
    observer: { tunnelEnded: (r) => results.push(r) },
  });
  await plane.waitForRunner(runnerId, 10_000);
  await events.until(() => events.size >= 1, 'a warm connection');
  front.forgetIdle();
  const reset = once(front.events, 'reset');
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  await reset;
  assert.ok(events.hits >= 1);
  await logs.waitFor((l) => l.code === ErrorCodes.DATA_SOCKET_STALE && l.msg.startsWith('Warm connection was dead at use'));
  assert.ok(!results.includes('data_dial_failed'), `results: ${results.join(',')}`);
});

test('TLS: one context for every connection, and the data connections resume the session', async (t) => {
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  const reused: boolean[] = [];
  plane.server.on('secureConnection', (s: TLSSocket) => reused.push(s.isSessionReused()));
  const { local } = await startWolf(t);
  const { runnerId } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'test', rejectUnauthorized: true, ca: certs.caCert },
  });
  await plane.waitForRunner(runnerId, 10_000);
  for (let i = 0; i < 3; i++) {
    const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
    assert.equal(res.statusCode, 200);
    await readBody(res);
  }
  assert.equal(reused.length, 4, 'control connection and three data connections');
  assert.equal(reused[0], false, 'the first handshake is a full one');
  assert.deepEqual(reused.slice(1), [true, true, true], 'every later one resumed');
});

for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
  test(`TLS session resumption with ${version}: the second connection is resumed and still verified`, { timeout: 20_000 }, async (t) => {
    const server = tls.createServer({ key: certs.key, cert: certs.cert, minVersion: 'TLSv1.2' }, (s) => s.on('error', () => undefined));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    t.after(() => new Promise((resolve) => server.close(resolve)));
    const url = new URL(`wss://localhost:${(server.address() as AddressInfo).port}/`);
    const settings = new TlsSettings({ rejectUnauthorized: true, ca: certs.caCert, maxVersion: version });
    const connector = new DirectConnector({ tls: settings });
    const first = (await connector.connect(url, AbortSignal.timeout(5_000))).socket;
    assert.ok(first instanceof tls.TLSSocket);
    assert.equal(first.getProtocol(), version);
    assert.equal(first.isSessionReused(), false);
    assert.equal(first.alpnProtocol, false, 'the server chose no ALPN protocol (it offers none)');
    // TLS 1.3 tickets come after the handshake, read like data: read, and wait for one.
    first.resume();
    if (!settings.hasSession('localhost', url.port ? Number(url.port) : 443)) await once(first, 'session');
    const second = (await connector.connect(url, AbortSignal.timeout(5_000))).socket;
    assert.ok(second instanceof tls.TLSSocket);
    const resumed = second.isSessionReused();
    const authorized = second.authorized;
    first.destroy();
    second.destroy();
    assert.equal(resumed, true);
    assert.equal(authorized, true);
    assert.equal(settings.contextBuilds, 1, 'one secure context for both');
  });
}

test('a changed --ca-file rebuilds the context; a broken one keeps the old', async (t) => {
  const server = tls.createServer({ key: otherCerts.key, cert: otherCerts.cert }, (s) => s.on('error', () => undefined));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const url = new URL(`wss://127.0.0.1:${(server.address() as AddressInfo).port}/`);
  const caFile = `${certs.caFile}.bundle`;
  writeFileSync(caFile, certs.caCert);
  const clock = new ManualClock(1_000_000);
  const reloads: boolean[] = [];
  const settings = new TlsSettings({ caFile, ca: certs.caCert, rejectUnauthorized: true, clock, onCaReload: (e) => reloads.push(e.ok) });
  const connector = new DirectConnector({ tls: settings });
  await assert.rejects(connector.connect(url, AbortSignal.timeout(5_000)), { code: ErrorCodes.TLS_UNTRUSTED });
  assert.equal(settings.contextBuilds, 1);

  writeFileSync(caFile, otherCerts.caCert);
  // Within a second of the last look the file is not looked at again.
  await assert.rejects(connector.connect(url, AbortSignal.timeout(5_000)), { code: ErrorCodes.TLS_UNTRUSTED });
  clock.tick(1_000);
  const { socket } = await connector.connect(url, AbortSignal.timeout(5_000));
  socket.destroy();
  assert.equal(settings.contextBuilds, 2);
  assert.deepEqual(reloads, [true]);

  writeFileSync(caFile, 'not a certificate');
  clock.tick(1_000);
  const again = await connector.connect(url, AbortSignal.timeout(5_000));
  again.socket.destroy();
  assert.deepEqual(reloads, [true, false], 'told, and the last good CA kept');
  assert.equal(settings.contextBuilds, 2);
});

test('SIGTERM with warm connections open: they are closed at once and the agent exits 0', async (t) => {
  const plane = await startPlane(t);
  const open = new Set<Socket>();
  plane.server.on('connection', (s: Socket) => {
    open.add(s);
    s.once('close', () => open.delete(s));
  });
  const { local } = await startWolf(t);
  const agent = spawnAgent(
    t,
    agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'warm', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local, REVDIAL_PRECONNECT: '4', REVDIAL_GRACE_PERIOD: '30' }),
  );
  await plane.waitForRunner('wolf-warm', 15_000);
  await agent.logs.waitFor((l) => l.msg.startsWith('Keeping up to 4 warm connections'));
  // The control connection and at least one warm one.
  while (open.size < 2) await once(plane.server, 'connection');
  const started = Date.now();
  agent.child.kill('SIGTERM');
  const { code } = await agent.exited;
  assert.equal(code, 0);
  for (let s = [...open][0]; s !== undefined; s = [...open][0]) await once(s, 'close');
  // Nothing to drain: the 30 s grace period does not apply to warm connections.
  assert.ok(Date.now() - started < 10_000, `exited after ${Date.now() - started} ms`);
});
