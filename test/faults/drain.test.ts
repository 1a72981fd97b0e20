/**
 * Issue 5, figure 4: SIGTERM under load, against the real executable. With
 * 20 downloads of several MiB in flight: every one completes byte-exact, a
 * request arriving after the signal is refused at once (the agent leaves the
 * control plane at once and never opens another tunnel), the process exits 0
 * within the grace period, and a second signal exits immediately.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import { spawnProbedAgent } from './helpers/faults.js';
import { sha256Of, startPlane, startWolf } from '../helpers/harness.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const DOWNLOADS = 20;
const SIZE = 4 * 1024 * 1024;
const RATE = 2 * 1024 * 1024; // each lasts about 2 s

test(`figure 4: SIGTERM with ${DOWNLOADS} downloads of ${SIZE / 1048576} MiB in flight: all complete, later requests refused at once, exit 0 within the grace period`, async (t) => {
  const plane = await startPlane(t, { graceMs: 100 });
  const { wolf, local } = await startWolf(t);
  const graceMs = 15_000;
  const agent = spawnProbedAgent(t, {
    HELIX_API_URL: plane.url,
    WOLF_ID: 'drain',
    WOLF_LOCAL_ADDR: local,
    REVDIAL_GRACE_PERIOD: String(graceMs / 1000),
  });
  const runnerId = 'wolf-drain';
  const dialer = await plane.waitForRunner(runnerId, 10_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  const responses = await Promise.all(
    Array.from({ length: DOWNLOADS }, (_, i) => plane.request(runnerId, { path: `/bytes?size=${SIZE}&seed=drain-${i}&rate=${RATE}` })),
  );
  const digests = responses.map((r) => sha256Of(r));
  const requestsBefore = wolf.requests;

  const dialerClosed = new Promise<number>((resolve) => dialer.once('close', () => resolve(Date.now())));
  const signalledAt = Date.now();
  agent.child.kill('SIGTERM');
  await agent.logs.waitFor((l) => l.msg.startsWith('Received SIGTERM'));
  const leftAfterMs = (await dialerClosed) - signalledAt;

  const t0 = Date.now();
  await assert.rejects(plane.request(runnerId, { path: '/api/v1/system/health' }), { code: 'DIALER_CLOSED' });
  const refusedMs = Date.now() - t0;

  const results = await Promise.all(digests);
  results.forEach((r, i) => {
    assert.equal(r.bytes, SIZE, `download ${i}`);
    assert.equal(r.sha256, expectedDigest(SIZE, `drain-${i}`), `download ${i}`);
  });
  const exit = await agent.exited;
  const exitMs = Date.now() - signalledAt;
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(exitMs < graceMs, `exited after ${exitMs} ms`);
  assert.equal(wolf.requests, requestsBefore, 'no tunnel opened after the signal');
  const stopped = agent.logs.find((l) => l.msg === 'Stopped');
  assert.equal(stopped?.cut, 0);
  t.diagnostic(
    `figure 4: control connection closed ${leftAfterMs} ms after SIGTERM; a new request refused in ${refusedMs} ms (plane grace 100 ms); ${DOWNLOADS}x${SIZE / 1048576} MiB byte-exact; exit 0 after ${exitMs} ms (grace ${graceMs} ms), cut 0`,
  );
});

test('figure 4: a second SIGTERM during the drain exits at once (143), without waiting for the tunnels', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const agent = spawnProbedAgent(t, { HELIX_API_URL: plane.url, WOLF_ID: 'drain2', WOLF_LOCAL_ADDR: local, REVDIAL_GRACE_PERIOD: '30' });
  await plane.waitForRunner('wolf-drain2', 10_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  // Streams that would take far longer than the test.
  const responses = await Promise.all(
    Array.from({ length: 3 }, (_, i) => plane.request('wolf-drain2', { path: `/bytes?size=${64 * 1048576}&seed=s${i}&rate=${256 * 1024}` })),
  );
  for (const r of responses) {
    r.on('error', () => undefined);
    r.resume();
  }
  agent.child.kill('SIGTERM');
  await agent.logs.waitFor((l) => l.msg.startsWith('Received SIGTERM'));
  const secondAt = Date.now();
  agent.child.kill('SIGTERM');
  const exit = await agent.exited;
  const tookMs = Date.now() - secondAt;
  assert.deepEqual(exit, { code: 143, signal: null });
  assert.ok(tookMs < 1_000, `exited ${tookMs} ms after the second signal`);
  t.diagnostic(`figure 4: second SIGTERM → exit 143 after ${tookMs} ms with 3 tunnels open`);
});
