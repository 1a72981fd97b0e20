/**
 * A hook that throws never breaks a tunnel (issue 15, part 7): every observer
 * method throwing, or a log destination that throws on every line, and a
 * request through the tunnel still arrives whole; the agent stays connected.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import type { AgentObserver } from '../../src/agent/control/supervisor.js';
import { sha256Of, startAgent, startPlane, startWolf } from '../helpers/harness.js';

const SIZE = 2 * 1024 * 1024;

function throwingObserver(calls: Map<string, number>): AgentObserver {
  const hook = (name: string) => (): void => {
    calls.set(name, (calls.get(name) ?? 0) + 1);
    throw new Error(`${name} is broken`);
  };
  return {
    controlConnected: hook('controlConnected'),
    controlDisconnected: hook('controlDisconnected'),
    controlAttemptFailed: hook('controlAttemptFailed'),
    tunnelStarted: hook('tunnelStarted'),
    tunnelSetUp: hook('tunnelSetUp'),
    tunnelEnded: hook('tunnelEnded'),
    bytes: hook('bytes'),
  };
}

test('every metrics hook throwing: tunnels still carry their bytes, each hook reported once', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const calls = new Map<string, number>();
  const { agent, logs, runnerId } = startAgent(t, plane, local, { observer: throwingObserver(calls) });
  await plane.waitForRunner(runnerId, 10_000);
  for (let i = 0; i < 3; i++) {
    const res = await plane.request(runnerId, { path: `/bytes?size=${SIZE}&seed=hook-${i}` });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(await sha256Of(res), { bytes: SIZE, sha256: expectedDigest(SIZE, `hook-${i}`) });
  }
  assert.ok(agent.connected);
  for (const name of ['controlConnected', 'tunnelStarted', 'tunnelSetUp', 'bytes']) assert.ok((calls.get(name) ?? 0) > 0, `${name} was called`);
  // Reported, rate-limited: one line per hook however often it threw.
  const reported = logs.lines.filter((l) => l.msg.startsWith('a metrics hook'));
  assert.ok(reported.some((l) => l.hook === 'bytes'));
  assert.equal(reported.filter((l) => l.hook === 'bytes').length, 1, `${calls.get('bytes')} throws from bytes`);
});

test('a log destination that throws on every line: tunnels still carry their bytes', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  let writes = 0;
  const log = pino(
    { level: 'debug' },
    {
      write: () => {
        writes++;
        throw new Error('log sink is broken');
      },
    },
  );
  const stderrWrite = process.stderr.write.bind(process.stderr);
  t.after(() => {
    process.stderr.write = stderrWrite;
  });
  // The guard reports the first failure on stderr: keep it out of the test output.
  process.stderr.write = () => true;
  const { agent, runnerId } = startAgent(t, plane, local, { log });
  await plane.waitForRunner(runnerId, 10_000);
  for (let i = 0; i < 3; i++) {
    const res = await plane.request(runnerId, { path: `/bytes?size=${SIZE}&seed=log-${i}` });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(await sha256Of(res), { bytes: SIZE, sha256: expectedDigest(SIZE, `log-${i}`) });
  }
  process.stderr.write = stderrWrite;
  assert.ok(writes > 0, 'the agent did try to log');
  assert.ok(agent.connected);
});
