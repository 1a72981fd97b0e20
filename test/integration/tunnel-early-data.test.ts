/**
 * Bytes the control plane writes the moment a data connection opens must reach
 * Wolf. The plane's HTTP client writes its request right behind the 101, often
 * in the same TCP segment; ws emits such bytes on the next tick, before the
 * bridge exists, so unless the data WebSocket is handed over paused the request
 * is lost and the tunnel hangs (seen in `npm run bench` as ~1 in 6 requests).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';

test('a request written right behind the upgrade reaches Wolf, every time', async (t) => {
  const plane = await startPlane(t);
  const { wolf, local } = await startWolf(t);
  const { runnerId } = startAgent(t, plane, local);
  await plane.waitForRunner(runnerId, 10_000);
  const rounds = 200;
  for (let i = 0; i < rounds; i++) {
    const timeout = AbortSignal.timeout(10_000);
    const res = await plane.request(runnerId, { path: `/api/v1/system/health?i=${i}` }, timeout);
    assert.equal(res.statusCode, 200, `request ${i}`);
    const body = JSON.parse((await readBody(res)).toString('utf8')) as { status: string };
    assert.equal(body.status, 'ok');
  }
  assert.equal(wolf.requests, rounds);
});
