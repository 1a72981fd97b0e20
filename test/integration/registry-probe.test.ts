/**
 * probeRegistry (src/agent/registry/http.ts): the read-only check that the
 * registry endpoints of a mode answer, against the project's control plane
 * with both generations, one without a registry, a wrong token and a hung
 * endpoint.
 */
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { test } from 'node:test';
import { Agent as UndiciAgent } from 'undici';
import { createFleet } from '../../dev/control-plane/fleet.js';
import { systemClock } from '../../src/agent/clock.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { type ProbeOptions, probeRegistry } from '../../src/agent/registry/http.js';
import { LogCapture, TOKEN, startPlane } from '../helpers/harness.js';

function options(url: string, dispatcher: UndiciAgent, extra: Partial<ProbeOptions>): ProbeOptions {
  return {
    mode: 'sandboxes',
    apiUrl: new URL(url),
    token: () => TOKEN,
    userAgent: 'wolf-revdial-client/test',
    dispatcher,
    clock: systemClock,
    ...extra,
  };
}

test('probeRegistry: both generations answer on the fleet plane, and say whether this host is listed; nothing changes', async (t) => {
  const fleet = createFleet({ authorize: (tok) => tok === TOKEN, log: new LogCapture('warn').log });
  await fleet.plane.listen(0, '127.0.0.1');
  t.after(() => fleet.close());
  const dispatcher = new UndiciAgent();
  t.after(() => dispatcher.close());
  fleet.hosts.connected('hydra-probe-1');
  fleet.registry.register({ name: 'probe-w' });

  let r = await probeRegistry(options(fleet.plane.url, dispatcher, { sandboxId: 'probe-1' }));
  assert.deepEqual([r.ok, r.status, r.listed], [true, 200, true]);
  assert.match(r.detail, /GET .*\/api\/v1\/sandboxes answered HTTP 200: 1 host, probe-1 listed/);
  r = await probeRegistry(options(fleet.plane.url, dispatcher, { sandboxId: 'other' }));
  assert.deepEqual([r.ok, r.listed], [true, false]);
  r = await probeRegistry(options(fleet.plane.url, dispatcher, { mode: 'wolf-instances', name: 'probe-w' }));
  assert.deepEqual([r.ok, r.listed], [true, true]);
  assert.equal(fleet.hosts.get('probe-1')?.last_seen, null, 'a probe is not a heartbeat');

  r = await probeRegistry(options(fleet.plane.url, dispatcher, { token: () => 'wrong' }));
  assert.deepEqual([r.ok, r.status, r.code], [false, 401, ErrorCodes.AUTH_REJECTED]);
});

test('probeRegistry: no registry (404), a refused connection and a hung endpoint are coded, never thrown', async (t) => {
  const plane = await startPlane(t);
  const held: ServerResponse[] = [];
  plane.route('GET', '/api/v1/wolf-instances', (_req, res) => {
    held.push(res);
  });
  t.after(() => {
    for (const res of held) res.destroy();
  });
  const dispatcher = new UndiciAgent();
  t.after(() => dispatcher.close());

  let r = await probeRegistry(options(plane.url, dispatcher, {}));
  assert.deepEqual([r.ok, r.status, r.code], [false, 404, ErrorCodes.REGISTRY_FAILED]);
  assert.match(r.detail, /REVDIAL_REGISTRY/);

  r = await probeRegistry(options(plane.url, dispatcher, { mode: 'wolf-instances', timeoutMs: 200 }));
  assert.deepEqual([r.ok, r.code], [false, ErrorCodes.REGISTRY_TIMEOUT]);

  r = await probeRegistry(options('http://127.0.0.1:1', dispatcher, {}));
  assert.deepEqual([r.ok, r.code], [false, ErrorCodes.REGISTRY_FAILED]);
  assert.match(r.detail, /ECONNREFUSED/);
});
