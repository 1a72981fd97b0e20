/**
 * The placement HTTP API over real loopback sockets, with an in-process agent:
 * tokens, codes, and the proxy through the holder's tunnel (paths, queries,
 * bodies with and without Content-Length, headers that must not reach Wolf).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createFleet } from '../../dev/control-plane/fleet.js';
import type { Placement } from '../../dev/control-plane/placements.js';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import { call, field } from '../helpers/control-plane.js';
import { LogCapture, TOKEN, startAgent, startWolf } from '../helpers/harness.js';

async function setup(t: import('node:test').TestContext, local?: string) {
  const fleet = createFleet({ authorize: (tok) => tok === TOKEN, log: new LogCapture('warn').log, graceMs: 500 });
  await fleet.plane.listen(0, '127.0.0.1');
  t.after(() => fleet.close());
  const target = local ?? (await startWolf(t)).local;
  startAgent(t, fleet.plane, target, { runnerId: 'wolf-api-a' });
  await fleet.plane.waitForRunner('wolf-api-a', 10_000);
  fleet.registry.register({ name: 'api-a', max_sandboxes: 2 });
  return { fleet, base: fleet.plane.url };
}

/** A raw request, for chunked bodies and exact headers. */
function raw(base: string, method: string, path: string, headers: Record<string, string>, chunks: Buffer[]): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, { method, headers }, (res: IncomingMessage) => {
      const got: Buffer[] = [];
      res.on('data', (c: Buffer) => got.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(got) }));
    });
    req.on('error', reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

test('placement endpoints: 401 without the token, 400 on a bad body, 404 on unknown ids, 503 when full', async (t) => {
  const { base } = await setup(t);
  for (const [method, path] of [
    ['POST', '/api/v1/placements'],
    ['GET', '/api/v1/placements'],
    ['DELETE', '/api/v1/placements/plc-x'],
    ['GET', '/api/v1/placements/plc-x/proxy/api/v1/system/health'],
  ] as const) {
    const r = await call(base, method, path, 'wrong');
    assert.equal(r.status, 401, `${method} ${path}`);
    assert.equal(field(r.body, 'code'), 'REVDIAL_AUTH_REJECTED');
  }
  for (const bad of ['nope', { gpu_type: 5 }]) {
    const r = await call(base, 'POST', '/api/v1/placements', TOKEN, bad);
    assert.equal(r.status, 400);
    assert.equal(field(r.body, 'code'), 'REVDIAL_REGISTRY_REQUEST_INVALID');
  }
  const first = await call(base, 'POST', '/api/v1/placements', TOKEN, {});
  assert.equal(first.status, 201);
  assert.equal(field(first.body, 'instance_name'), 'api-a');
  assert.equal(field(first.body, 'runner_id'), 'wolf-api-a');
  const id = String(field(first.body, 'id'));
  assert.equal(field((await call(base, 'GET', `/api/v1/placements/${id}`, TOKEN)).body, 'id'), id);
  assert.equal(((await call(base, 'GET', '/api/v1/placements', TOKEN)).body as Placement[]).length, 1);
  // Capacity 2.
  assert.equal((await call(base, 'POST', '/api/v1/placements', TOKEN)).status, 201);
  const full = await call(base, 'POST', '/api/v1/placements', TOKEN, {});
  assert.equal(full.status, 503);
  assert.equal(field(full.body, 'code'), 'REVDIAL_NO_INSTANCE_AVAILABLE');
  assert.deepEqual(field(full.body, 'details'), { gpuType: null, registered: 1, online: 1, matchingGpu: 1, withCapacity: 0 });
  const noGpu = await call(base, 'POST', '/api/v1/placements', TOKEN, { gpu_type: 'amd' });
  assert.equal(field(field(noGpu.body, 'details'), 'matchingGpu'), 0);

  for (const [method, path] of [
    ['GET', '/api/v1/placements/plc-unknown'],
    ['DELETE', '/api/v1/placements/plc-unknown'],
    ['GET', '/api/v1/placements/plc-unknown/proxy/api/v1/system/health'],
  ] as const) {
    const r = await call(base, method, path, TOKEN);
    assert.equal(r.status, 404, `${method} ${path}`);
    assert.equal(field(r.body, 'code'), 'REVDIAL_PLACEMENT_NOT_FOUND');
  }
  assert.deepEqual((await call(base, 'DELETE', `/api/v1/placements/${id}`, TOKEN)).body, { status: 'ok' });
  assert.equal((await call(base, 'DELETE', `/api/v1/placements/${id}`, TOKEN)).status, 404);
});

test('the proxy carries path, query and bodies (with and without Content-Length) through the tunnel', async (t) => {
  const { base } = await setup(t);
  const id = String(field((await call(base, 'POST', '/api/v1/placements', TOKEN, {})).body, 'id'));
  const auth = { authorization: `Bearer ${TOKEN}` };

  const size = 300_000;
  const dl = await raw(base, 'GET', `/api/v1/placements/${id}/proxy/bytes?size=${size}&seed=multi`, auth, []);
  assert.equal(dl.status, 200);
  assert.equal(createHash('sha256').update(dl.body).digest('hex'), expectedDigest(size, 'multi'));

  const payload = randomBytes(200_000);
  const want = createHash('sha256').update(payload).digest('hex');
  const sized = await raw(base, 'POST', `/api/v1/placements/${id}/proxy/upload`, { ...auth, 'content-length': String(payload.length) }, [payload]);
  assert.deepEqual(JSON.parse(sized.body.toString('utf8')), { bytes: payload.length, sha256: want });
  // Chunked: buffered by the plane, sent to Wolf with a Content-Length.
  const chunked = await raw(base, 'POST', `/api/v1/placements/${id}/proxy/upload`, { ...auth, 'transfer-encoding': 'chunked' }, [
    payload.subarray(0, 1000),
    payload.subarray(1000),
  ]);
  assert.deepEqual(JSON.parse(chunked.body.toString('utf8')), { bytes: payload.length, sha256: want });
  const notFound = await raw(base, 'GET', `/api/v1/placements/${id}/proxy/no/such/path`, auth, []);
  assert.equal(notFound.status, 404);
});

test('the proxy does not hand the control plane token or hop-by-hop headers to Wolf', async (t) => {
  let seen: IncomingMessage['headers'] = {};
  let seenUrl = '';
  const echo = http.createServer((req, res) => {
    seen = req.headers;
    seenUrl = req.url ?? '';
    res.writeHead(200, { 'content-type': 'application/json', connection: 'close' }).end('{}');
  });
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => echo.close(() => resolve())));
  const { base } = await setup(t, `127.0.0.1:${(echo.address() as AddressInfo).port}`);
  const id = String(field((await call(base, 'POST', '/api/v1/placements', TOKEN, {})).body, 'id'));
  const r = await raw(
    base,
    'GET',
    `/api/v1/placements/${id}/proxy/api/v1/apps?x=1`,
    { authorization: `Bearer ${TOKEN}`, 'x-trace': 'abc', 'proxy-authorization': 'Basic zzz' },
    [],
  );
  assert.equal(r.status, 200);
  assert.equal(seenUrl, '/api/v1/apps?x=1');
  assert.equal(seen['x-trace'], 'abc');
  assert.equal(seen.authorization, undefined);
  assert.equal(seen['proxy-authorization'], undefined);
  // Wolf needs Content-Length: a chunked body arrives with one.
  const posted = await raw(base, 'POST', `/api/v1/placements/${id}/proxy/api/v1/apps`, { authorization: `Bearer ${TOKEN}`, 'transfer-encoding': 'chunked' }, [
    Buffer.from('ab'),
    Buffer.from('cde'),
  ]);
  assert.equal(posted.status, 200);
  assert.equal(seen['content-length'], '5');
  assert.equal(seen['transfer-encoding'], undefined);
});
