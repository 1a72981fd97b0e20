/**
 * The agent against the project's control plane and a stand-in Wolf, all on
 * loopback: the request path, the protocol's edge cases, and bad input from
 * every side. Each bad input must give a clear log line and leave the agent
 * serving.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import type { Dialer } from '../../dev/control-plane/dialer.js';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import type { TunnelResult } from '../../src/agent/control/supervisor.js';
import { LogCapture, TOKEN, readBody, sha256Of, startAgent, startPlane, startWolf } from '../helpers/harness.js';

async function health(plane: ControlPlane, runnerId: string): Promise<unknown> {
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  return JSON.parse((await readBody(res)).toString());
}

/** Resolves with the next dialer that connects for this runner. */
function nextDialer(plane: ControlPlane, runnerId: string, after?: Dialer): Promise<Dialer> {
  return new Promise((resolve) => {
    const current = plane.dialer(runnerId);
    if (current && current !== after) {
      resolve(current);
      return;
    }
    const on = (d: Dialer): void => {
      if (d.runnerId !== runnerId || d === after) return;
      plane.removeListener('dialer', on);
      resolve(d);
    };
    plane.on('dialer', on);
  });
}

function nextPickupFailed(plane: ControlPlane): Promise<{ connPath: string; err: string }> {
  return new Promise((resolve) => {
    plane.once('pickup-failed', (_runner: string, connPath: string, err: string) => resolve({ connPath, err }));
  });
}

test('connects, logs the milestones operators grep for, and carries a request', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local);
  await nextDialer(plane, runnerId);
  assert.deepEqual(await health(plane, runnerId), { status: 'ok', service: 'wolf-stand-in' });
  assert.ok(logs.find((l) => l.msg === 'Connected to control plane via RevDial'));
  assert.ok(logs.find((l) => l.msg === `RevDial listener ready, proxying connections to local Wolf API at ${local}`));
  await logs.waitFor((l) => l.level === 'debug' && l.msg === 'tunnel closed' && l.result === 'ok');
});

test('carries a 100 MiB download and a 32 MiB upload byte-exact', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { runnerId } = startAgent(t, plane, local);
  await nextDialer(plane, runnerId);
  const size = 100 * 1024 * 1024;
  const down = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=big` });
  assert.deepEqual(await sha256Of(down), { bytes: size, sha256: expectedDigest(size, 'big') });

  const { createHash, randomBytes } = await import('node:crypto');
  const body = randomBytes(32 * 1024 * 1024);
  const up = await plane.request(runnerId, { method: 'POST', path: '/upload', body });
  assert.deepEqual(JSON.parse((await readBody(up)).toString()), {
    bytes: body.length,
    sha256: createHash('sha256').update(body).digest('hex'),
  });
});

test('older control planes (connPath without revdial.req) and API URLs with a base path work', async (t) => {
  const plane = await startPlane(t, { legacyConnPath: true, basePath: '/helix' });
  const { local } = await startWolf(t, { socketPath: `/tmp/revdial-test-${process.pid}.sock` });
  const { runnerId } = startAgent(t, plane, local);
  await nextDialer(plane, runnerId);
  const results = await Promise.all([1, 2, 3].map(() => health(plane, runnerId)));
  assert.equal(results.length, 3);
});

test('local target down: clear pickup-failed, then service resumes without a restart', async (t) => {
  const plane = await startPlane(t);
  const { wolf, local } = await startWolf(t);
  const port = Number(local.split(':')[1]);
  await wolf.close();
  const { logs, runnerId } = startAgent(t, plane, local);
  await nextDialer(plane, runnerId);
  const failed = nextPickupFailed(plane);
  await assert.rejects(plane.request(runnerId, { path: '/api/v1/system/health' }), { code: 'PICKUP_FAILED' });
  const { connPath, err } = await failed;
  assert.match(connPath, /^\/revdial\?revdial\.dialer=[0-9a-f]{32}&revdial\.req=[0-9a-f]{32}$/);
  assert.ok(err.startsWith(`${ErrorCodes.LOCAL_DIAL_FAILED}:`), err);
  const line = await logs.waitFor((l) => l.code === ErrorCodes.LOCAL_DIAL_FAILED);
  assert.equal(line.level, 'warn');

  await wolf.listen(port, '127.0.0.1');
  assert.deepEqual(await health(plane, runnerId), { status: 'ok', service: 'wolf-stand-in' });
});

test('data endpoint answering 500 (stale dialer): pickup-failed echoes connPath exactly', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local);
  const dialer = await nextDialer(plane, runnerId);
  const stale = `/revdial?revdial.dialer=${'0'.repeat(32)}&revdial.req=${'1'.repeat(32)}`;
  const failed = nextPickupFailed(plane);
  dialer.sendRaw(`${JSON.stringify({ command: 'conn-ready', connPath: stale })}\n`);
  const { connPath, err } = await failed;
  assert.equal(connPath, stale);
  assert.ok(err.startsWith(`${ErrorCodes.HANDSHAKE_REJECTED}:`), err);
  assert.match(err, /HTTP 500/);
  await logs.waitFor((l) => l.code === ErrorCodes.HANDSHAKE_REJECTED && l.result === 'data_dial_failed');
  assert.equal(plane.dialer(runnerId), dialer, 'same control connection');
  await health(plane, runnerId);
});

test('a connPath naming another origin is refused with pickup-failed and never dialed', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  // A trap on loopback: the agent must never connect to it.
  let trapped = 0;
  const trap = net.createServer((s) => {
    trapped++;
    s.destroy();
  });
  await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => trap.close(() => r())));
  const trapPort = (trap.address() as net.AddressInfo).port;
  const { logs, runnerId } = startAgent(t, plane, local);
  const dialer = await nextDialer(plane, runnerId);
  for (const evil of [`ws://127.0.0.1:${trapPort}/revdial?x=1`, `//127.0.0.1:${trapPort}/revdial?x=1`, `/\\127.0.0.1:${trapPort}/revdial?x=1`]) {
    const failed = nextPickupFailed(plane);
    dialer.sendRaw(`${JSON.stringify({ command: 'conn-ready', connPath: evil })}\n`);
    const { connPath, err } = await failed;
    assert.equal(connPath, evil);
    assert.ok(err.startsWith(`${ErrorCodes.CONN_PATH_INVALID}:`), err);
  }
  // One warning per kind per interval (log-limiter.ts): the other two are counted, not logged yet.
  assert.equal(
    logs.count((l) => l.code === ErrorCodes.CONN_PATH_INVALID && l.level === 'warn'),
    1,
  );
  await health(plane, runnerId);
  assert.equal(trapped, 0);
});

test('unknown commands and blank lines are ignored; the connection stays', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local);
  const dialer = await nextDialer(plane, runnerId);
  dialer.sendRaw('{"command":"future-thing","connPath":"/x"}\n\n{"command":"keep-alive","extra":true}\n');
  await logs.waitFor((l) => l.msg === 'ignoring unknown control command' && l.command === 'future-thing');
  await health(plane, runnerId);
  assert.equal(plane.dialer(runnerId), dialer);
  assert.equal(
    logs.count((l) => l.msg.startsWith('Control connection lost')),
    0,
  );
});

for (const [name, send, code] of [
  ['text frame', (d: Dialer) => d.sendRaw('{"command":"keep-alive"}\n', false), ErrorCodes.PROTOCOL_TEXT_FRAME],
  [
    'endless line',
    (d: Dialer) => {
      for (let i = 0; i < 40; i++) d.sendRaw(Buffer.alloc(1024, 0x61));
    },
    ErrorCodes.PROTOCOL_LINE_TOO_LONG,
  ],
  ['invalid JSON', (d: Dialer) => d.sendRaw('{"command":"conn-ready",\u0001 oops\n'), ErrorCodes.PROTOCOL_INVALID_JSON],
] as const) {
  test(`${name} from the control plane: protocol error logged, reconnect, keeps serving`, async (t) => {
    const plane = await startPlane(t);
    const { local } = await startWolf(t);
    const { logs, runnerId } = startAgent(t, plane, local);
    const first = await nextDialer(plane, runnerId);
    const again = nextDialer(plane, runnerId, first);
    send(first);
    const line = await logs.waitFor((l) => l.code === code);
    assert.equal(line.level, 'warn');
    assert.match(line.msg, /^Control connection lost: /);
    if (code === ErrorCodes.PROTOCOL_INVALID_JSON) assert.match(line.msg, /oops/, 'shows a preview of the bad line');
    await again;
    await health(plane, runnerId);
  });
}

test('beyond --max-tunnels, conn-ready is refused at once; served again when tunnels close', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const results: TunnelResult[] = [];
  const { logs, runnerId } = startAgent(t, plane, local, {
    maxTunnels: 2,
    observer: { tunnelEnded: (r) => results.push(r) },
  });
  await nextDialer(plane, runnerId);
  const streams = await Promise.all([1, 2].map(() => plane.request(runnerId, { path: '/api/v1/events?keepaliveMs=50' })));
  const flood = await Promise.allSettled(Array.from({ length: 20 }, () => plane.request(runnerId, { path: '/api/v1/system/health' })));
  for (const r of flood) assert.equal(r.status === 'rejected' && (r.reason as { code?: string }).code, 'PICKUP_FAILED');
  assert.equal(results.filter((r) => r === 'refused_limit').length, 20);
  // One warning for the burst, not twenty.
  assert.equal(
    logs.count((l) => l.code === ErrorCodes.TUNNEL_LIMIT),
    1,
  );
  for (const s of streams) s.destroy();
  await logs.waitFor((l) => l.msg === 'tunnel closed' && l.result === 'ok');
  await new Promise<void>((resolve) => {
    const check = (): void => {
      if (results.filter((r) => r === 'ok').length >= 2) resolve();
      else setImmediate(check);
    };
    check();
  });
  await health(plane, runnerId);
});

test('token rejected: logged as an authentication failure, retried, and a rotated token gets in', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  let token = 'wrong-token';
  const { logs, runnerId } = startAgent(t, plane, local, { token: () => token, reconnectMaxMs: 100 });
  const first = await logs.waitFor((l) => l.code === ErrorCodes.AUTH_REJECTED);
  assert.equal(first.level, 'error');
  assert.match(first.msg, /HTTP 401/);
  await logs.waitFor((l) => l.code === ErrorCodes.AUTH_REJECTED && l !== first);
  token = TOKEN;
  await nextDialer(plane, runnerId);
  await health(plane, runnerId);
  assert.ok(
    logs.raw.every((line) => !line.includes(TOKEN) && !line.includes('wrong-token')),
    'no token in logs',
  );
});

test('a half-open control path is noticed within the ping timeout and the agent reconnects', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local, { pingIntervalMs: 100, pingTimeoutMs: 600 });
  const first = await nextDialer(plane, runnerId);
  const again = nextDialer(plane, runnerId, first);
  // The plane stops reading: no pong, no frame, and the socket stays open.
  const started = performance.now();
  first.stopReading();
  const line = await logs.waitFor((l) => l.code === ErrorCodes.PING_TIMEOUT, 5_000);
  const noticedMs = performance.now() - started;
  assert.ok(noticedMs >= 550 && noticedMs < 600 + 1000, `noticed after ${noticedMs.toFixed(0)} ms`);
  assert.equal(line.level, 'warn');
  await again;
  await health(plane, runnerId);
});

test('tunnels outlive the control connection: a stream keeps flowing across a reconnect', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local);
  const first = await nextDialer(plane, runnerId);
  const stream = await plane.request(runnerId, { path: '/api/v1/events?keepaliveMs=20' });
  const again = nextDialer(plane, runnerId, first);
  first.terminate();
  await logs.waitFor((l) => l.msg.startsWith('Control connection lost'));
  await again;
  // Bytes that Wolf writes after the reconnect still arrive.
  const after = performance.now();
  let text = '';
  for await (const chunk of stream) {
    text += (chunk as Buffer).toString();
    if (performance.now() > after && text.split(':keepalive').length > 5) break;
  }
  stream.destroy();
  assert.ok(text.includes(':keepalive'));
});

test('shutdown drains: open tunnels finish, the rest are cut after the grace period', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const logs = new LogCapture();
  const { agent, runnerId } = startAgent(t, plane, local, { log: logs.log });
  await nextDialer(plane, runnerId);
  const size = 8 * 1024 * 1024;
  const download = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=drain` });
  const endless = await plane.request(runnerId, { path: '/api/v1/events?keepaliveMs=20' });
  endless.resume();
  const downloaded = sha256Of(download);
  // The grace period must outlast the 8 MiB download on a loaded machine (300 ms did
  // not at a load average of 10 on 2 cores); only the endless stream is left to cut.
  const { cut } = await agent.shutdown(5000);
  assert.deepEqual(await downloaded, { bytes: size, sha256: expectedDigest(size, 'drain') });
  assert.equal(cut, 1, 'the endless event stream is cut');
  assert.equal(agent.activeTunnels, 0);
  assert.ok(logs.find((l) => l.msg === 'Grace period over; closing the tunnels still open'));
  assert.equal(plane.dialer(runnerId), undefined, 'control connection closed');
});

test('a slow reader on the control plane side holds Wolf back: the agent stops reading, bytes stay exact', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  let fromLocal = 0;
  const { runnerId } = startAgent(t, plane, local, {
    observer: {
      bytes: (direction, n) => {
        if (direction === 'from_local') fromLocal += n;
      },
    },
  });
  await nextDialer(plane, runnerId);
  const size = 64 * 1024 * 1024;
  const res = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=slow` });
  // The plane reads nothing for a while: what the agent takes from Wolf must stop
  // at its buffers (1 MiB high-water mark plus socket buffers), far short of 64 MiB.
  res.pause();
  let last = -1;
  while (fromLocal !== last) {
    last = fromLocal;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(fromLocal < 24 * 1024 * 1024, `agent read ${fromLocal} bytes from Wolf while nobody read them`);
  res.resume();
  assert.deepEqual(await sha256Of(res), { bytes: size, sha256: expectedDigest(size, 'slow') });
  assert.ok(fromLocal > size, 'the body and the response head went through');
});

test('Wolf that stopped reading and then closes: the tunnel ends at once, not at the backstop', async (t) => {
  const plane = await startPlane(t);
  // A Wolf that accepts, never reads, and closes when told.
  const sockets: net.Socket[] = [];
  const wolf = net.createServer((s) => {
    s.pause();
    sockets.push(s);
  });
  await new Promise<void>((r) => wolf.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => wolf.close(() => r())));
  let toLocal = 0;
  let endedAt = 0;
  const { runnerId } = startAgent(t, plane, `127.0.0.1:${(wolf.address() as net.AddressInfo).port}`, {
    closeBackstopMs: 20_000,
    observer: {
      bytes: (direction, n) => {
        if (direction === 'to_local') toLocal += n;
      },
      tunnelEnded: () => {
        endedAt = performance.now();
      },
    },
  });
  await nextDialer(plane, runnerId);
  const stream = await plane.dial(runnerId);
  stream.on('error', () => undefined);
  const slice = Buffer.alloc(32 * 1024, 0x61);
  for (let i = 0; i < 1024; i++) stream.write(slice); // 32 MiB offered
  // Wait until the agent has stopped taking bytes: Wolf's buffers are full and the bridge has paused.
  let last = -1;
  while (toLocal !== last) {
    last = toLocal;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(toLocal < 32 * 1024 * 1024, 'backpressure held the rest back');
  const closedAt = performance.now();
  for (const s of sockets) s.destroy();
  while (endedAt === 0) await new Promise((r) => setTimeout(r, 20));
  assert.ok(endedAt - closedAt < 3_000, `tunnel ended ${(endedAt - closedAt).toFixed(0)} ms after Wolf closed`);
  stream.destroy();
});
