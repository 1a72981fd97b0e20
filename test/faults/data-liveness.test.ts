/**
 * Silent data tunnels, against the real executable: with `--ping-interval 1
 * --ping-timeout 3`, a data connection whose path goes silent (blackholed:
 * no FIN, no RST, nothing delivered either way) is closed within 6 s, its
 * `--max-tunnels` slot freed and the close counted; a tunnel that is merely
 * quiet (Wolf takes 20 s to answer) stays up and delivers its answer whole,
 * because the control plane answers the agent's pings meanwhile. Every socket
 * the agent holds (control, data, local Wolf) has TCP keep-alive on, as the
 * kernel reports it (`ss -o`).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { spawnProbedAgent } from './helpers/faults.js';
import { FaultRelay, type RelayedConnection } from './helpers/fault-relay.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';
import { startPlane } from '../helpers/harness.js';
import { freePort, get, sample } from '../helpers/ops.js';

after(() => {
  assertNoTokenLeaked();
});

const SLOW_MS = 20_000;
const CLOSE_WITHIN_MS = 6_000;

/** `ss -tnoH` lines of established TCP sockets whose peer port is `port`; undefined where ss is missing. */
function socketsTo(port: number): string[] | undefined {
  try {
    const out = execFileSync('ss', ['-tnoH', 'state', 'established', `( dport = :${port} )`], { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.trim() !== '');
  } catch {
    return undefined;
  }
}

test(
  `with --ping-interval 1 --ping-timeout 3 a blackholed data tunnel is closed within ${CLOSE_WITHIN_MS / 1000} s; a ${SLOW_MS / 1000}-second answer arrives whole`,
  { timeout: 90_000 },
  async (t) => {
    // Wolf: /slow answers after SLOW_MS, /events streams a comment every 500 ms.
    const body = randomBytes(1024 * 1024);
    let eventsClosedAt = 0;
    let slowArrived!: () => void;
    const slowAtWolf = new Promise<void>((resolve) => {
      slowArrived = resolve;
    });
    const wolf = http.createServer((req, res) => {
      if (req.url === '/slow') {
        slowArrived();
        const timer = setTimeout(() => {
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
          res.end(body);
        }, SLOW_MS);
        res.on('close', () => clearTimeout(timer));
      } else {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: hello\n\n');
        const timer = setInterval(() => res.write(':keepalive\n\n'), 500);
        res.on('close', () => {
          clearInterval(timer);
          eventsClosedAt = Date.now();
        });
      }
    });
    wolf.keepAliveTimeout = 0;
    await new Promise<void>((r) => wolf.listen(0, '127.0.0.1', r));
    t.after(() => {
      wolf.closeAllConnections();
      return new Promise<void>((r) => wolf.close(() => r()));
    });
    const wolfPort = (wolf.address() as AddressInfo).port;

    const plane = await startPlane(t);
    const relay = new FaultRelay(Number(new URL(plane.url).port));
    await relay.listen();
    t.after(() => relay.close());
    const metricsPort = await freePort();
    const agent = spawnProbedAgent(t, {
      HELIX_API_URL: relay.url,
      WOLF_ID: 'liveness',
      WOLF_LOCAL_ADDR: `127.0.0.1:${wolfPort}`,
      REVDIAL_METRICS_ADDR: `127.0.0.1:${metricsPort}`,
      REVDIAL_PING_INTERVAL: '1',
      REVDIAL_PING_TIMEOUT: '3',
      REVDIAL_MAX_TUNNELS: '2',
    });
    const runnerId = 'wolf-liveness';
    await plane.waitForRunner(runnerId, 10_000);
    await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');

    // The quiet tunnel: Wolf answers after SLOW_MS.
    const slowStarted = Date.now();
    const slow = plane.request(runnerId, { path: '/slow' }, AbortSignal.timeout(SLOW_MS + 20_000)).then(async (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of res) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      return { status: res.statusCode, bytes, sha256: hash.digest('hex'), ms: Date.now() - slowStarted };
    });

    // The silent one: an event stream whose path is blackholed once it flows.
    await slowAtWolf;
    const before = new Set(relay.data());
    const events = await plane.request(runnerId, { path: '/events' });
    events.on('error', () => undefined);
    events.resume();
    const fresh = relay.data().filter((c) => !before.has(c));
    assert.equal(fresh.length, 1, 'one new data connection: the event stream');
    const conn = fresh[0]!;
    const closed = new Promise<number>((resolve) => {
      const onClose = (c: RelayedConnection): void => {
        if (c !== conn) return;
        relay.removeListener('close', onClose);
        resolve(Date.now());
      };
      relay.on('close', onClose);
    });
    const blackholedAt = Date.now();
    relay.blackhole(conn);
    // Bounded, so that an agent that never closes it fails here rather than at the test's time limit.
    let giveUp: NodeJS.Timeout | undefined;
    const closedAt = await Promise.race([closed, new Promise<number>((resolve) => (giveUp = setTimeout(() => resolve(Infinity), CLOSE_WITHIN_MS + 5_000)))]);
    clearTimeout(giveUp);
    const tookMs = closedAt - blackholedAt;
    assert.ok(tookMs <= CLOSE_WITHIN_MS, `the blackholed tunnel was closed after ${tookMs} ms (Infinity: not within ${CLOSE_WITHIN_MS + 5_000} ms)`);
    assert.ok(tookMs >= 2_000, `closed after ${tookMs} ms: not before the path had been silent for the timeout`);
    const line = await agent.logs.waitFor((l) => l.code === 'REVDIAL_DATA_PING_TIMEOUT');
    assert.equal(line.level, 'warn');
    // Wolf's side of that tunnel is let go too.
    const deadline = Date.now() + 2_000;
    while (eventsClosedAt === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(eventsClosedAt > 0, 'the local Wolf connection of the silent tunnel was closed');

    // Keep-alive on every socket the agent holds: control + data (peer: the relay) and Wolf.
    const toRelay = socketsTo(relay.port);
    if (toRelay === undefined) {
      t.diagnostic('ss not available: TCP keep-alive not checked');
    } else {
      // A socket shows its keep-alive timer while no other timer (retransmit) runs: sample a few times.
      const seen = new Map<string, boolean>();
      for (let i = 0; i < 20; i++) {
        for (const l of [...(socketsTo(relay.port) ?? []), ...(socketsTo(wolfPort) ?? [])]) {
          const key = l.split(/\s+/).slice(2, 4).join(' ');
          seen.set(key, (seen.get(key) ?? false) || l.includes('timer:(keepalive'));
        }
        if (seen.size >= 3 && [...seen.values()].every(Boolean)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(seen.size >= 3, `sockets seen: ${[...seen.keys()].join('; ')}`);
      for (const [socket, on] of seen) assert.ok(on, `TCP keep-alive on ${socket}`);
    }

    // The slot is free again: a third request fits under --max-tunnels 2 beside the slow one.
    const third = await plane.request(runnerId, { path: '/events' });
    assert.equal(third.statusCode, 200);
    third.destroy();

    const got = await slow;
    assert.equal(got.status, 200);
    assert.equal(got.bytes, body.length);
    assert.equal(got.sha256, createHash('sha256').update(body).digest('hex'), 'the slow answer arrived whole');
    assert.ok(got.ms >= SLOW_MS, `answered after ${got.ms} ms`);

    const metrics = (await get(metricsPort, '/metrics')).body;
    assert.equal(sample(metrics, 'revdial_tunnels_total', { result: 'ping_timeout' }), 1);
    assert.equal(agent.child.exitCode, null);
    t.diagnostic(
      `blackholed data tunnel closed ${tookMs} ms after its path went silent (bound ${CLOSE_WITHIN_MS} ms); the ${SLOW_MS / 1000} s answer arrived whole after ${got.ms} ms`,
    );
  },
);
