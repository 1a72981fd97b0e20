/**
 * Reconnecting after short outages (issue 15, part 5), with an injected clock
 * and a real listener. The agent runs in process on a ManualClock; the control
 * plane is a real server on loopback that is closed (every connection dropped)
 * and started again on the same port. The test moves the clock in 20 ms steps
 * and lets each dial the agent starts finish for real before the next step,
 * so the figures are the agent's own schedule, free of this machine's load.
 *
 *  - 20 restarts, up 1-4 s and down 0.5-6 s each ("a plane that restarts
 *    every few seconds"), with the default --reconnect (5 s): every time the
 *    agent is back within 1.5 s of the plane listening again;
 *  - a long outage still backs off: later waits grow toward the cap, jittered;
 *  - a rejected token is retried at the cap's pace, jittered.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { after, test } from 'node:test';
import { ControlPlane } from '../../dev/control-plane/server.js';
import { Agent } from '../../src/agent/control/supervisor.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { parseLocalAddress } from '../../src/agent/net/local-dialer.js';
import { LogCapture, ManualClock, TOKEN, readBody, startWolf } from '../helpers/harness.js';
import { percentile, prng, seedFromEnv } from './helpers/faults.js';
import { assertNoTokenLeaked, guardTokens } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const RESTARTS = 20;
const BACK_WITHIN_MS = 1_500;
const STEP_MS = 20;
const CAP_MS = 5_000;

test(
  `${RESTARTS} control-plane restarts every few seconds: back within ${BACK_WITHIN_MS} ms of the plane listening, every time; long outages back off`,
  { timeout: 120_000 },
  async (t) => {
    const seed = seedFromEnv();
    const random = prng(seed);
    t.diagnostic(`FAULTS_SEED=${seed}`);
    const { local } = await startWolf(t);
    let token = TOKEN;
    let plane = ControlPlane.withToken(TOKEN, { graceMs: 10_000 });
    const { port } = await plane.listen(0, '127.0.0.1');
    t.after(() => plane.close());

    const clock = new ManualClock(1_000_000);
    const events = new EventEmitter();
    let dials = 0;
    let outcomes = 0;
    const failures: { code: string; retryInMs: number }[] = [];
    const logs = new LogCapture('info');
    guardTokens('in-process agent (reconnect)', () => logs.raw);
    const runnerId = 'wolf-reconnect';
    const agent = new Agent({
      apiUrl: new URL(`http://127.0.0.1:${port}`),
      runnerId,
      local: parseLocalAddress(local),
      transport: {
        token: () => {
          dials++;
          return token;
        },
        userAgent: 'wolf-revdial-client/test',
        rejectUnauthorized: true,
      },
      log: logs.log,
      reconnectMaxMs: CAP_MS,
      pingIntervalMs: 15_000,
      pingTimeoutMs: 45_000,
      pickupTimeoutMs: 20_000,
      localDialTimeoutMs: 5_000,
      maxTunnels: 16,
      clock,
      random: prng(seed + 1),
      observer: {
        controlConnected: () => {
          outcomes++;
          events.emit('outcome');
        },
        controlDisconnected: () => events.emit('disconnected'),
        controlAttemptFailed: (code, _attempt, retryInMs) => {
          if (code === ErrorCodes.CONTROL_UNSTABLE) return;
          failures.push({ code, retryInMs });
          outcomes++;
          events.emit('outcome');
        },
      },
    });
    agent.start();
    t.after(() => agent.shutdown(0));

    const until = (pred: () => boolean): Promise<void> =>
      pred()
        ? Promise.resolve()
        : new Promise((resolve) => {
            const check = (): void => {
              if (!pred()) return;
              events.removeListener('outcome', check);
              events.removeListener('disconnected', check);
              resolve();
            };
            events.on('outcome', check);
            events.on('disconnected', check);
          });
    /** Moves the clock one step; a dial it started finishes (for real) before this resolves. */
    const step = async (ms = STEP_MS): Promise<void> => {
      const dialsBefore = dials;
      const outcomesBefore = outcomes;
      clock.tick(ms);
      await new Promise((r) => setImmediate(r));
      if (dials > dialsBefore) await until(() => outcomes > outcomesBefore);
    };
    const stepUntil = async (pred: () => boolean, maxMs: number): Promise<void> => {
      const end = clock.now() + maxMs;
      while (!pred() && clock.now() < end) await step();
    };
    const health = async (): Promise<void> => {
      const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
      assert.equal(res.statusCode, 200);
      await readBody(res);
    };

    await stepUntil(() => agent.connected, 5_000);
    assert.ok(agent.connected, 'first connection');
    await health();

    const backMs: number[] = [];
    const downMs: number[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      // Up for 1-4 s of the agent's time, then the plane goes away.
      await stepUntil(() => false, 1_000 + Math.round(random() * 3_000));
      const lost = until(() => !agent.connected);
      await plane.close();
      await lost;
      const down = 500 + Math.round(random() * 5_500);
      downMs.push(down);
      await stepUntil(() => false, down);
      plane = ControlPlane.withToken(TOKEN, { graceMs: 10_000 });
      await plane.listen(port, '127.0.0.1');
      const listeningAt = clock.now();
      await stepUntil(() => agent.connected, 10_000);
      const back = clock.now() - listeningAt;
      assert.ok(agent.connected, `restart ${i + 1}: not back within 10 s; log tail:\n${logs.raw.slice(-5).join('\n')}`);
      backMs.push(back);
      await health();
      assert.ok(back <= BACK_WITHIN_MS, `restart ${i + 1} (down ${down} ms): back ${back} ms after the plane listened again`);
    }
    t.diagnostic(
      `restarts=${RESTARTS} down(ms) mean=${Math.round(downMs.reduce((a, b) => a + b, 0) / RESTARTS)} max=${Math.max(...downMs)}; ` +
        `back after listen (agent clock, ms) p50=${percentile(backMs, 50)} p95=${percentile(backMs, 95)} max=${Math.max(...backMs)}`,
    );

    // A long outage, after a connection that was up 2 s (one that drops sooner
    // would not end the last outage): the waits grow toward the cap, jittered.
    await stepUntil(() => false, 2_000);
    const lost = until(() => !agent.connected);
    await plane.close();
    await lost;
    failures.length = 0;
    await stepUntil(() => false, 90_000);
    const waits = failures.map((f) => f.retryInMs);
    const early = waits.filter((_, i) => i < 5);
    const late = waits.slice(-8);
    t.diagnostic(`90 s outage: ${waits.length} attempts; first waits ${early.map(Math.round).join(', ')} ms; last ${late.map(Math.round).join(', ')} ms`);
    for (const w of early) assert.ok(w <= 1_000, `early wait ${w}`);
    for (const w of late) assert.ok(w >= CAP_MS / 2 && w <= CAP_MS, `late wait ${w}`);
    assert.ok(new Set(late.map(Math.round)).size >= 4, 'late waits are jittered');
    assert.ok(waits.length < 90_000 / 2_000, `${waits.length} attempts in 90 s: not backing off`);

    // A revoked token: retried at the cap's pace, jittered.
    token = 'revoked';
    plane = ControlPlane.withToken(TOKEN);
    await plane.listen(port, '127.0.0.1');
    failures.length = 0;
    await stepUntil(() => failures.filter((f) => f.code === ErrorCodes.AUTH_REJECTED).length >= 8, 120_000);
    const auth = failures.filter((f) => f.code === ErrorCodes.AUTH_REJECTED).map((f) => f.retryInMs);
    t.diagnostic(`after 401: waits ${auth.map(Math.round).join(', ')} ms`);
    assert.ok(auth.length >= 8);
    for (const w of auth) assert.ok(w >= CAP_MS / 2 && w <= CAP_MS, `wait after 401: ${w}`);
    assert.ok(new Set(auth.map(Math.round)).size >= 6, 'waits after 401 are jittered, not lockstep');
  },
);
