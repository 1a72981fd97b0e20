/**
 * Issue 5, figure 9: 200 agents (one process, real timers) lose the control
 * plane at the same moment. Their reconnect attempts must be spread out by
 * jitter, not synchronized. Each agent's first attempt time is taken from
 * the observer (`controlAttemptFailed` reports the delay backoff.ts chose) and,
 * for the connection itself, from the plane's 'dialer' event; the
 * distribution is reported in 5%-of-cap buckets.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Dialer } from '../../dev/control-plane/dialer.js';
import { parseLocalAddress } from '../../src/agent/net/local-dialer.js';
import { Agent } from '../../src/agent/control/supervisor.js';
import { LogCapture, TOKEN, startPlane, startWolf } from '../helpers/harness.js';
import { percentile } from './helpers/faults.js';
import { assertNoTokenLeaked, guardTokens } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const AGENTS = 200;

function histogram(values: number[], bucketMs: number): Map<number, number> {
  const h = new Map<number, number>();
  for (const v of values) {
    const b = Math.floor(v / bucketMs) * bucketMs;
    h.set(b, (h.get(b) ?? 0) + 1);
  }
  return new Map([...h.entries()].sort((a, b) => a[0] - b[0]));
}

for (const capMs of [1_000, 200]) {
  test(`figure 9: ${AGENTS} agents dropped at once (--reconnect ${capMs / 1000}) come back spread out`, { timeout: 60_000 }, async (t) => {
    const plane = await startPlane(t);
    const { local } = await startWolf(t);
    const dialers = new Map<string, Dialer>();
    const reconnectedAt = new Map<string, number>();
    let droppedAt = Infinity;
    plane.on('dialer', (d: Dialer) => {
      if (Date.now() >= droppedAt && !reconnectedAt.has(d.runnerId)) reconnectedAt.set(d.runnerId, Date.now());
      dialers.set(d.runnerId, d);
    });
    const scheduled = new Map<string, number>();
    const chosen = new Map<string, number>();
    const agents: Agent[] = [];
    for (let i = 0; i < AGENTS; i++) {
      const runnerId = `wolf-spread-${i}`;
      const logs = new LogCapture('warn');
      guardTokens(`agent ${runnerId}`, () => logs.raw);
      const agent = new Agent({
        apiUrl: new URL(plane.url),
        runnerId,
        local: parseLocalAddress(local),
        transport: { token: () => TOKEN, userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true },
        log: logs.log,
        reconnectMaxMs: capMs,
        pingIntervalMs: 5_000,
        pingTimeoutMs: 15_000,
        pickupTimeoutMs: 5_000,
        localDialTimeoutMs: 2_000,
        maxTunnels: 4,
        observer: {
          controlAttemptFailed: (_code, _attempt, retryInMs) => {
            if (Date.now() < droppedAt || scheduled.has(runnerId)) return;
            scheduled.set(runnerId, Date.now() + retryInMs);
            chosen.set(runnerId, retryInMs);
          },
        },
      });
      agents.push(agent);
      agent.start();
    }
    t.after(() => Promise.all(agents.map((a) => a.shutdown(0))));
    // Everyone connected (and listening) before the drop.
    const deadline = Date.now() + 30_000;
    while ((dialers.size < AGENTS || agents.some((a) => !a.connected)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(dialers.size, AGENTS);

    droppedAt = Date.now();
    for (const d of dialers.values()) d.terminate();
    while (reconnectedAt.size < AGENTS && Date.now() < droppedAt + 20_000) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(reconnectedAt.size, AGENTS, 'every agent came back');

    const bucketMs = capMs / 20;
    const firstAttempt = [...scheduled.values()].map((at) => at - droppedAt);
    const arrival = [...reconnectedAt.values()].map((at) => at - droppedAt);
    const show = (values: number[]): string => [...histogram(values, bucketMs)].map(([b, n]) => `${b}-${b + bucketMs}ms:${n}`).join(' ');
    t.diagnostic(`first attempt after the drop (scheduled), ${bucketMs} ms buckets: ${show(firstAttempt)}`);
    t.diagnostic(`reconnected (plane saw it), ${bucketMs} ms buckets: ${show(arrival)}`);
    t.diagnostic(`arrival p5=${percentile(arrival, 5)} p50=${percentile(arrival, 50)} p95=${percentile(arrival, 95)} max=${Math.max(...arrival)} ms`);
    // The delays the agents chose (pure jitter, free of this process's own
    // scheduling of 200 closes, which spreads the scheduled times a little anyway).
    const delays = [...chosen.values()];
    assert.equal(delays.length, AGENTS);
    t.diagnostic(`delays chosen, ${bucketMs} ms buckets: ${show(delays)}`);
    const worst = Math.max(...histogram(delays, bucketMs).values()) / AGENTS;
    const spread = percentile(delays, 95) - percentile(delays, 5);
    t.diagnostic(`largest ${bucketMs} ms bucket holds ${(worst * 100).toFixed(1)}% of the delays; p5-p95 spread ${spread} ms`);
    // Uniform jitter over half the cap puts ~10% in each bucket; lock-step puts 100% in one.
    assert.ok(worst <= 0.2, `${(worst * 100).toFixed(1)}% of agents in one ${bucketMs} ms bucket: synchronized`);
    assert.ok(spread >= capMs / 4, `delays spread over only ${spread} ms`);
    assert.ok(Math.max(...delays) <= capMs, `a delay of ${Math.max(...delays)} ms exceeds the cap`);
  });
}
