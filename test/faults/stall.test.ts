/**
 * Issue 5, figure 6: a stalled local target, against the real executable.
 * Wolf accepts a request and never reads its body (`POST /stall`); the
 * control plane offers far more than any buffer should hold. Backpressure
 * must reach the control plane: the plane's writes stop completing, the
 * agent's memory stays where it was, and another tunnel of the same agent
 * keeps its speed.
 *
 * How it gets there (src/bridge.ts): `local.write()` returning false pauses
 * the data WebSocket, ws pauses its socket, the kernel buffers on both hops
 * fill, and the plane's `ws.send` callbacks (which complete its stream's
 * writes) stop firing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { after, test } from 'node:test';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import { spawnProbedAgent } from './helpers/faults.js';
import { sha256Of, startPlane, startWolf } from '../helpers/harness.js';
import { memory } from '../helpers/proc-stats.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const MiB = 1024 * 1024;
/** What the plane offers to the stalled target. */
const OFFER = 512 * MiB;
/**
 * What may leave the plane before the stall holds: the kernel buffers of two
 * loopback hops (on this kernel up to 4 MiB send + 32 MiB autotuned receive
 * each) plus the agent's own per-tunnel buffering (about one socket read).
 * A broken pause would let all 512 MiB through.
 */
const ACCEPTED_BOUND = 96 * MiB;
/** Agent RSS may grow by this much while the stall lasts (a broken pause buffers the offer: 100s of MiB). */
const RSS_GROWTH_BOUND_KIB = 48 * 1024;
/** The other tunnel keeps at least this share of its unstalled speed. */
const SPEED_SHARE = 0.25;
const DOWNLOAD = 48 * MiB;
/** The offer counts as stalled once no write completed for this long. */
const QUIET_MS = 1_500;

async function timedDownload(plane: ControlPlane, runnerId: string, seed: string): Promise<{ ms: number; mibPerS: number }> {
  const started = performance.now();
  const res = await plane.request(runnerId, { path: `/bytes?size=${DOWNLOAD}&seed=${seed}` });
  assert.equal(res.statusCode, 200);
  const got = await sha256Of(res);
  const ms = performance.now() - started;
  assert.equal(got.bytes, DOWNLOAD, `download ${seed}`);
  assert.equal(got.sha256, expectedDigest(DOWNLOAD, seed), `download ${seed}`);
  return { ms, mibPerS: DOWNLOAD / MiB / (ms / 1000) };
}

function best(a: { ms: number; mibPerS: number }, b: { ms: number; mibPerS: number }): { ms: number; mibPerS: number } {
  return a.mibPerS >= b.mibPerS ? a : b;
}

/**
 * Writes `OFFER` bytes into the tunnel at once, as a plane ignoring
 * backpressure would (slices of one buffer: the plane itself holds only
 * references), and counts the writes that complete, i.e. that ws handed
 * to the kernel.
 */
function offer(stream: Duplex): { completed: () => number } {
  const SLICE = 32 * 1024;
  const block = randomBytes(MiB);
  let completed = 0;
  for (let off = 0; off < OFFER; off += SLICE) {
    stream.write(block.subarray(off % MiB, (off % MiB) + SLICE), (err) => {
      if (!err) completed += SLICE;
    });
  }
  return { completed: () => completed };
}

/** Resolves once `completed()` has not moved for QUIET_MS; rejects if everything went through. */
function plateau(completed: () => number, timeoutMs = 30_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let last = -1;
    let since = Date.now();
    const started = Date.now();
    const timer = setInterval(() => {
      const now = completed();
      if (now >= OFFER) {
        clearInterval(timer);
        reject(new Error(`all ${OFFER / MiB} MiB offered went through: no backpressure`));
      } else if (now !== last) {
        last = now;
        since = Date.now();
      } else if (now > 0 && Date.now() - since >= QUIET_MS) {
        clearInterval(timer);
        resolve(now);
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`the offer never settled (${now} bytes accepted)`));
      }
    }, 100);
  });
}

test(
  `figure 6: a target that never reads: the plane's ${OFFER / MiB} MiB stop at the plane, the agent's memory stays put, another tunnel keeps its speed`,
  { timeout: 120_000 },
  async (t) => {
    const plane = await startPlane(t);
    const { wolf, local } = await startWolf(t);
    const agent = spawnProbedAgent(t, {
      HELIX_API_URL: plane.url,
      WOLF_ID: 'stall',
      WOLF_LOCAL_ADDR: local,
      REVDIAL_METRICS_ADDR: 'off',
    });
    const runnerId = 'wolf-stall';
    const pid = agent.child.pid;
    assert.ok(pid);
    await plane.waitForRunner(runnerId, 10_000);
    await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');

    // Baseline: the same download with nothing stalled. Best of two on each side,
    // so one hiccup of a shared CI machine does not decide the comparison.
    const baseline = best(await timedDownload(plane, runnerId, 'baseline-1'), await timedDownload(plane, runnerId, 'baseline-2'));
    const before = memory(pid);

    // The stall: a request whose body Wolf never reads, then the offer.
    const stalledRequest = new Promise<void>((resolve) => wolf.server.once('request', () => resolve()));
    const stream = await plane.dial(runnerId);
    stream.on('error', () => undefined);
    t.after(() => stream.destroy());
    stream.write(`POST /stall HTTP/1.1\r\nHost: wolf\r\nContent-Type: application/octet-stream\r\nContent-Length: ${OFFER}\r\n\r\n`);
    await stalledRequest;
    assert.equal(wolf.stalled, 1);
    const { completed } = offer(stream);
    const accepted = await plateau(completed);
    const held = memory(pid);
    const waiting = stream.writableLength;

    // Another tunnel of the same agent, while the stall holds.
    const during = best(await timedDownload(plane, runnerId, 'during-1'), await timedDownload(plane, runnerId, 'during-2'));
    const acceptedAfter = completed();
    const end = memory(pid);

    // Still stalled, still the one request: nothing moved while the other tunnel ran.
    assert.equal(wolf.stalled, 1);
    assert.equal(acceptedAfter, accepted, 'the stalled tunnel accepted nothing more while the other downloads ran');
    assert.ok(accepted < ACCEPTED_BOUND, `${accepted} bytes left the plane`);
    assert.ok(waiting >= OFFER - ACCEPTED_BOUND, `the plane still holds ${waiting} bytes unsent`);
    const growthKiB = Math.max(held.rssKiB, end.rssKiB) - before.rssKiB;
    assert.ok(growthKiB < RSS_GROWTH_BOUND_KIB, `agent RSS grew ${growthKiB} KiB during the stall`);
    const share = during.mibPerS / baseline.mibPerS;
    assert.ok(share >= SPEED_SHARE, `the other tunnel ran at ${(share * 100).toFixed(0)}% of its unstalled speed`);
    assert.equal(agent.child.exitCode, null);

    t.diagnostic(
      `figure 6: offered ${OFFER / MiB} MiB to a target that never reads; ${(accepted / MiB).toFixed(1)} MiB left the plane, then writes stopped completing (${(waiting / MiB).toFixed(1)} MiB waiting in the plane's stream, unchanged through the other downloads)`,
    );
    t.diagnostic(
      `figure 6: agent RSS ${(before.rssKiB / 1024).toFixed(1)} MiB before the stall, ${(held.rssKiB / 1024).toFixed(1)} MiB stalled, ${(end.rssKiB / 1024).toFixed(1)} MiB after the other downloads (peak ${(end.peakRssKiB / 1024).toFixed(1)} MiB, growth bound ${RSS_GROWTH_BOUND_KIB / 1024} MiB)`,
    );
    t.diagnostic(
      `figure 6: other tunnel, ${DOWNLOAD / MiB} MiB byte-exact, best of 2: ${baseline.mibPerS.toFixed(0)} MiB/s unstalled (${baseline.ms.toFixed(0)} ms), ${during.mibPerS.toFixed(0)} MiB/s beside the stall (${during.ms.toFixed(0)} ms): ${(share * 100).toFixed(0)}% (bound ${SPEED_SHARE * 100}%)`,
    );
  },
);
