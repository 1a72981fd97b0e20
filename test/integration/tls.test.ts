/**
 * wss: real deployments reach the control plane over TLS. The agent verifies
 * the certificate (a private CA through --ca-file), refuses an unknown one, and
 * skips verification only when told to.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import { makeCerts } from '../helpers/certs.js';
import { TOKEN, agentEnv, readBody, sha256Of, spawnAgent, startAgent, startPlane, startWolf } from '../helpers/harness.js';

const certs = makeCerts();
after(() => certs.cleanup());

test('wss with the private CA trusted: control and data connections verified, bytes exact', async (t) => {
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  assert.match(plane.url, /^https:\/\//);
  const { local } = await startWolf(t);
  const { runnerId } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'test', rejectUnauthorized: true, ca: certs.caCert },
  });
  await plane.waitForRunner(runnerId, 10_000);
  const size = 8 * 1024 * 1024;
  const res = await plane.request(runnerId, { path: `/bytes?size=${size}&seed=tls` });
  assert.deepEqual(await sha256Of(res), { bytes: size, sha256: expectedDigest(size, 'tls') });
});

test('an unknown certificate is refused: nothing is sent, the agent keeps retrying', async (t) => {
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  let connected = 0;
  plane.on('dialer', () => connected++);
  const { local } = await startWolf(t);
  const { logs } = startAgent(t, plane, local);
  const first = await logs.waitFor((l) => l.code === ErrorCodes.TLS_UNTRUSTED);
  assert.equal(first.level, 'warn');
  await logs.waitFor((l) => l.code === ErrorCodes.TLS_UNTRUSTED && l !== first);
  assert.equal(connected, 0);
});

test('--insecure-skip-tls-verify connects to an unknown certificate', async (t) => {
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  const { local } = await startWolf(t);
  const { runnerId } = startAgent(t, plane, local, {
    transport: { token: () => TOKEN, userAgent: 'test', rejectUnauthorized: false },
  });
  await plane.waitForRunner(runnerId, 10_000);
  const res = await plane.request(runnerId, { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
});

test('the executable with --ca-file (REVDIAL_CA_FILE) connects over wss', async (t) => {
  const plane = await startPlane(t, { tls: { key: certs.key, cert: certs.cert } });
  const { local } = await startWolf(t);
  const agent = spawnAgent(
    t,
    agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'tls', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local, REVDIAL_CA_FILE: certs.caFile }),
  );
  await plane.waitForRunner('wolf-tls', 15_000);
  const res = await plane.request('wolf-tls', { path: '/api/v1/system/health' });
  assert.equal(res.statusCode, 200);
  await readBody(res);
  assert.ok(agent.logs.find((l) => l.msg === 'Connected to control plane via RevDial' && l.controlPlane === plane.url.replace('https:', 'wss:')));
  agent.child.kill('SIGTERM');
  assert.equal((await agent.exited).code, 0);
});
