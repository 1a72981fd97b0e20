/**
 * Shutdown has a hard deadline (issue 15, part 7), against the real
 * executable: the control plane stops answering (a blackholed path: nothing
 * forwarded, no FIN, no RST) while a tunnel is open, then SIGTERM with
 * --grace-period 2. The polite close of the control connection gets no
 * answer and the tunnel never ends by itself; the process must still exit 0
 * within the grace period plus one second.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { FaultRelay } from './helpers/fault-relay.js';
import { spawnProbedAgent } from './helpers/faults.js';
import { startPlane, startWolf } from '../helpers/harness.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const GRACE_MS = 2_000;

test('a peer that stops answering during shutdown: exit 0 within --grace-period + 1 s', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const relay = new FaultRelay(Number(new URL(plane.url).port));
  await relay.listen();
  t.after(() => relay.close());
  const agent = spawnProbedAgent(t, {
    HELIX_API_URL: relay.url,
    WOLF_ID: 'deadline',
    WOLF_LOCAL_ADDR: local,
    REVDIAL_GRACE_PERIOD: String(GRACE_MS / 1000),
  });
  const runnerId = 'wolf-deadline';
  await plane.waitForRunner(runnerId, 10_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  // A slow endless download keeps a tunnel open.
  const res = await plane.request(runnerId, { path: `/bytes?size=${1024 * 1048576}&seed=deadline&rate=${64 * 1024}` });
  res.on('error', () => undefined);
  res.resume();
  assert.equal(relay.data().length, 1, 'one tunnel open');
  // The plane stops answering on every path.
  for (const c of relay.open()) relay.blackhole(c);
  const signalledAt = Date.now();
  agent.child.kill('SIGTERM');
  const exit = await agent.exited;
  const tookMs = Date.now() - signalledAt;
  t.diagnostic(`exit ${JSON.stringify(exit)} ${tookMs} ms after SIGTERM (grace ${GRACE_MS} ms); last lines:\n${agent.logs.raw.slice(-3).join('\n')}`);
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(tookMs <= GRACE_MS + 1_000, `exited ${tookMs} ms after SIGTERM`);
  assert.ok(agent.logs.find((l) => l.msg === 'Grace period over; closing the tunnels still open'));
});
