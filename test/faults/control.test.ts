/**
 * Issue 5, figures 1, 2 and 7, against the real executable:
 *
 *  1. a control path blackholed after connect (a relay that stops forwarding
 *     but keeps both sockets open) is noticed within --ping-timeout + 1 s,
 *     and the agent serves again through a fresh connection;
 *  2. a streaming download keeps going, byte-exact, while the control
 *     connection is cut and re-established;
 *  7. with the local Wolf API down, requests fail at once with a clear
 *     `pickup-failed` reason; when it is back, service resumes with no restart.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { ControlPlane } from '../../dev/control-plane/server.js';
import type { Dialer } from '../../dev/control-plane/dialer.js';
import { StandInWolf, expectedDigest } from '../../dev/stand-in-wolf.js';
import { FaultRelay } from './helpers/fault-relay.js';
import { spawnProbedAgent } from './helpers/faults.js';
import { readBody, startPlane, startWolf } from '../helpers/harness.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

async function relayTo(t: { after: (fn: () => Promise<void>) => void }, plane: ControlPlane): Promise<FaultRelay> {
  const relay = new FaultRelay(Number(new URL(plane.url).port));
  await relay.listen();
  t.after(() => relay.close());
  return relay;
}

function nextDialer(plane: ControlPlane, runnerId: string, notThis?: Dialer): Promise<Dialer> {
  const live = plane.dialer(runnerId);
  if (live && live !== notThis) return Promise.resolve(live);
  return new Promise((resolve) => {
    const on = (d: Dialer): void => {
      if (d.runnerId !== runnerId || d === notThis) return;
      plane.removeListener('dialer', on);
      resolve(d);
    };
    plane.on('dialer', on);
  });
}

test('figure 1: a blackholed control path is noticed within --ping-timeout + 1 s and service resumes on a fresh connection', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const relay = await relayTo(t, plane);
  const pingTimeoutMs = 2_000;
  const agent = spawnProbedAgent(t, {
    HELIX_API_URL: relay.url,
    WOLF_ID: 'blackhole',
    WOLF_LOCAL_ADDR: local,
    REVDIAL_RECONNECT_MAX: '1',
    REVDIAL_PING_INTERVAL: '0.5',
    REVDIAL_PING_TIMEOUT: String(pingTimeoutMs / 1000),
  });
  const runnerId = 'wolf-blackhole';
  const firstDialer = await nextDialer(plane, runnerId);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  assert.equal((await plane.request(runnerId, { path: '/api/v1/system/health' })).statusCode, 200);

  const [control] = relay.control();
  assert.ok(control, 'control connection goes through the relay');
  const mark = agent.logs.lines.length;
  const blackholedAt = Date.now();
  relay.blackhole(control);
  assert.equal(control.client.destroyed, false, 'blackholing keeps the agent-side socket open');

  const lost = await agent.logs.waitFor((l) => l.msg.startsWith('Control connection lost'), 15_000, mark);
  const noticedMs = Date.now() - blackholedAt;
  assert.equal(lost.code, 'REVDIAL_PING_TIMEOUT');
  assert.ok(noticedMs <= pingTimeoutMs + 1_000, `noticed after ${noticedMs} ms`);
  // The relay closed nothing: the plane's side is still open (the path was
  // half-open, not cut). The agent-side socket is not checked here: the agent
  // itself has just closed it, and the relay may already have seen that.
  assert.equal(control.upstream.destroyed, false);

  const fresh = await nextDialer(plane, runnerId, firstDialer);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial', 10_000, mark);
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  const servingMs = Date.now() - blackholedAt;
  assert.notEqual(fresh, firstDialer);
  t.diagnostic(
    `figure 1: ping-timeout ${pingTimeoutMs} ms (interval 500 ms); noticed after ${noticedMs} ms; serving again ${servingMs} ms after the blackhole`,
  );
});

test('figure 2: a streaming download continues byte-exact while the control connection is cut and re-established', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const relay = await relayTo(t, plane);
  const agent = spawnProbedAgent(t, {
    HELIX_API_URL: relay.url,
    WOLF_ID: 'outlive',
    WOLF_LOCAL_ADDR: local,
    REVDIAL_RECONNECT_MAX: '1',
  });
  const runnerId = 'wolf-outlive';
  const firstDialer = await nextDialer(plane, runnerId);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  const afterFirstConnect = agent.logs.lines.length;

  const size = 6 * 1024 * 1024;
  const rate = 2 * 1024 * 1024; // about 3 s
  const started = Date.now();
  const res = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=outlive&rate=${rate}` });
  assert.equal(res.statusCode, 200);
  const hash = createHash('sha256');
  let received = 0;
  let cutAt = -1;
  let reconnectedAt = -1;
  const reconnected = nextDialer(plane, runnerId, firstDialer).then((d) => {
    reconnectedAt = Date.now();
    return d;
  });
  for await (const chunk of res) {
    hash.update(chunk as Buffer);
    received += (chunk as Buffer).length;
    if (cutAt === -1 && received >= size / 4) {
      const [control] = relay.control();
      assert.ok(control);
      assert.equal(relay.data().length, 1, 'one data connection in flight');
      cutAt = Date.now();
      relay.cut(control, { reset: true });
    }
  }
  const endedAt = Date.now();
  assert.equal(received, size);
  assert.equal(hash.digest('hex'), expectedDigest(size, 'outlive'));
  await reconnected;
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial', 10_000, afterFirstConnect);
  assert.ok(cutAt > 0);
  assert.ok(reconnectedAt < endedAt, 'the control connection came back while the download was still running');
  const lost = agent.logs.find((l) => l.msg.startsWith('Control connection lost'));
  assert.ok(lost, 'the agent saw the control connection go');
  assert.ok(Number(lost.tunnels) >= 1, 'with the tunnel open');
  // The fresh control connection serves too.
  assert.equal((await plane.request(runnerId, { path: '/api/v1/system/health' })).statusCode, 200);
  t.diagnostic(
    `figure 2: ${size / 1048576} MiB over ${endedAt - started} ms; control cut at +${cutAt - started} ms, back at +${reconnectedAt - started} ms; sha256 matched`,
  );
});

test('figure 7: local Wolf down gives clear pickup-failed reasons at once, and service resumes without a restart (TCP and unix socket)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'faults-local-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const kind of ['tcp', 'unix'] as const) {
    const plane = await startPlane(t);
    const socketPath = join(dir, 'wolf.sock');
    let wolf = new StandInWolf(kind === 'unix' ? { socketPath } : {});
    const local = await wolf.listen();
    const port = kind === 'tcp' ? Number(local.split(':').pop()) : 0;
    const agent = spawnProbedAgent(t, { HELIX_API_URL: plane.url, WOLF_ID: `local-${kind}`, WOLF_LOCAL_ADDR: local }, `agent (${kind})`);
    const runnerId = `wolf-local-${kind}`;
    const dialer = await nextDialer(plane, runnerId);
    await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
    assert.equal((await plane.request(runnerId, { path: '/api/v1/system/health' })).statusCode, 200);

    await wolf.close();
    const reasons: string[] = [];
    const onFailed = (_runner: string, _connPath: string, err: string): void => {
      reasons.push(err);
    };
    plane.on('pickup-failed', onFailed);
    const failMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      await assert.rejects(plane.request(runnerId, { path: '/api/v1/system/health' }), { code: 'PICKUP_FAILED' });
      failMs.push(Date.now() - t0);
    }
    plane.removeListener('pickup-failed', onFailed);
    assert.equal(reasons.length, 3);
    for (const reason of reasons) {
      assert.match(reason, /^REVDIAL_LOCAL_DIAL_FAILED: /);
      assert.ok(reason.includes(kind === 'unix' ? socketPath : `:${port}`), `reason names the address: ${reason}`);
    }
    // Refused at once: nowhere near the pick-up time limit.
    assert.ok(Math.max(...failMs) < 2_000, `failures took ${failMs.join(', ')} ms`);

    wolf = new StandInWolf(kind === 'unix' ? { socketPath } : {});
    await wolf.listen(port);
    t.after(() => wolf.close());
    const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
    assert.equal(res.statusCode, 200);
    await readBody(res);
    // Same process, same control connection: nothing was restarted.
    assert.equal(plane.dialer(runnerId), dialer);
    assert.equal(agent.child.exitCode, null);
    assert.equal(
      agent.logs.count((l) => l.msg.startsWith('Control connection lost')),
      0,
    );
    t.diagnostic(`figure 7 (${kind}): pickup-failed after ${failMs.join(', ')} ms; reason "${reasons[0]?.slice(0, 120)}"`);
  }
});
