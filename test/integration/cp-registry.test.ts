/**
 * The registry endpoints of PROTOCOL.md over real HTTP on loopback: paths,
 * bodies, bearer tokens, 401 / 404 / 400 with codes, registering again.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { installRegistryApi } from '../../dev/control-plane/registry-api.js';
import { Registry } from '../../dev/control-plane/registry.js';
import { ControlPlane } from '../../dev/control-plane/server.js';
import { FakeClock, call, field } from '../helpers/control-plane.js';

const TOKEN = 'registry-test-token';

async function setup(t: import('node:test').TestContext, basePath = '') {
  const clock = new FakeClock();
  const registry = new Registry({ clock });
  const plane = ControlPlane.withToken(TOKEN, { basePath });
  installRegistryApi(plane, registry, { authorize: (token) => token === TOKEN, basePath });
  await plane.listen(0, '127.0.0.1');
  t.after(() => plane.close());
  return { clock, registry, plane, base: plane.url };
}

const body = { name: 'wolf-1', address: '10.0.0.5:8080', gpu_type: 'nvidia', max_sandboxes: 4 };

test('register answers 200 with the instance, online, no sandboxes', async (t) => {
  const { base, clock } = await setup(t);
  const r = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  assert.equal(r.status, 200);
  assert.match(String(field(r.body, 'id')), /^[0-9a-f-]{36}$/);
  assert.equal(field(r.body, 'status'), 'online');
  assert.equal(field(r.body, 'connected_sandboxes'), 0);
  assert.equal(field(r.body, 'max_sandboxes'), 4);
  assert.equal(field(r.body, 'gpu_type'), 'nvidia');
  assert.equal(field(r.body, 'name'), 'wolf-1');
  assert.equal(field(r.body, 'address'), '10.0.0.5:8080');
  assert.equal(field(r.body, 'last_heartbeat'), new Date(clock.now()).toISOString());
});

test('every endpoint answers 401 without a token or with a wrong one, before any lookup', async (t) => {
  const { base } = await setup(t);
  const reg = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  const id = String(field(reg.body, 'id'));
  const calls: [string, string, unknown?][] = [
    ['POST', '/api/v1/wolf-instances/register', body],
    ['POST', '/api/v1/wolf-instances/register', 'not json'],
    ['POST', `/api/v1/wolf-instances/${id}/heartbeat`],
    ['POST', '/api/v1/wolf-instances/no-such-id/heartbeat'],
    ['GET', '/api/v1/wolf-instances'],
    ['DELETE', `/api/v1/wolf-instances/${id}`],
    ['DELETE', '/api/v1/wolf-instances/no-such-id'],
  ];
  for (const token of [null, 'wrong-token']) {
    for (const [method, path, b] of calls) {
      const r = await call(base, method, path, token, b);
      assert.equal(r.status, 401, `${method} ${path} with ${token ?? 'no token'}`);
      assert.equal(field(r.body, 'code'), 'REVDIAL_AUTH_REJECTED');
    }
  }
  // Nothing was changed by the refused calls.
  const list = await call(base, 'GET', '/api/v1/wolf-instances', TOKEN);
  assert.equal((list.body as unknown[]).length, 1);
});

test('heartbeat answers {"status":"ok"} and moves last_heartbeat; unknown id is 404', async (t) => {
  const { base, clock, registry } = await setup(t);
  const reg = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  const id = String(field(reg.body, 'id'));
  clock.tick(30_000);
  const hb = await call(base, 'POST', `/api/v1/wolf-instances/${id}/heartbeat`, TOKEN);
  assert.equal(hb.status, 200);
  assert.deepEqual(hb.body, { status: 'ok' });
  assert.equal(registry.get(id)?.last_heartbeat, new Date(clock.now()).toISOString());
  // A body on the heartbeat is accepted and ignored.
  const withBody = await call(base, 'POST', `/api/v1/wolf-instances/${id}/heartbeat`, TOKEN, { connected_sandboxes: 3 });
  assert.equal(withBody.status, 200);
  const missing = await call(base, 'POST', '/api/v1/wolf-instances/00000000-0000-0000-0000-000000000000/heartbeat', TOKEN);
  assert.equal(missing.status, 404);
  assert.equal(field(missing.body, 'code'), 'REVDIAL_INSTANCE_NOT_FOUND');
});

test('list answers an array of instances; GET by id answers one', async (t) => {
  const { base } = await setup(t);
  await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, { name: 'wolf-2', gpu_type: 'amd', max_sandboxes: 2 });
  const list = await call(base, 'GET', '/api/v1/wolf-instances', TOKEN);
  assert.equal(list.status, 200);
  assert.ok(Array.isArray(list.body));
  assert.deepEqual(
    (list.body as unknown[]).map((i) => field(i, 'name')),
    ['wolf-1', 'wolf-2'],
  );
  for (const i of list.body as unknown[]) {
    for (const f of ['id', 'name', 'address', 'status', 'last_heartbeat', 'connected_sandboxes', 'max_sandboxes', 'gpu_type']) {
      assert.ok(f in (i as object), `field ${f}`);
    }
  }
  const one = await call(base, 'GET', `/api/v1/wolf-instances/${String(field((list.body as unknown[])[1], 'id'))}`, TOKEN);
  assert.equal(field(one.body, 'name'), 'wolf-2');
  assert.equal(field(one.body, 'address'), '');
});

test('delete answers {"status":"ok"} and removes the instance; then heartbeat and delete are 404', async (t) => {
  const { base } = await setup(t);
  const reg = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  const id = String(field(reg.body, 'id'));
  const del = await call(base, 'DELETE', `/api/v1/wolf-instances/${id}`, TOKEN);
  assert.equal(del.status, 200);
  assert.deepEqual(del.body, { status: 'ok' });
  assert.deepEqual((await call(base, 'GET', '/api/v1/wolf-instances', TOKEN)).body, []);
  const hb = await call(base, 'POST', `/api/v1/wolf-instances/${id}/heartbeat`, TOKEN);
  assert.equal(hb.status, 404);
  assert.equal(field(hb.body, 'code'), 'REVDIAL_INSTANCE_NOT_FOUND');
  const again = await call(base, 'DELETE', `/api/v1/wolf-instances/${id}`, TOKEN);
  assert.equal(again.status, 404);
  assert.equal(field(again.body, 'code'), 'REVDIAL_INSTANCE_NOT_FOUND');
});

test('registering the same name again keeps the id and the sandbox count, updates the rest', async (t) => {
  const { base, registry } = await setup(t);
  const first = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  const id = String(field(first.body, 'id'));
  registry.adjustSandboxes(id, 1);
  registry.setStatus(id, 'offline', 'test');
  const second = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, { ...body, max_sandboxes: 8, address: '10.0.0.6:8080' });
  assert.equal(second.status, 200);
  assert.equal(field(second.body, 'id'), id);
  assert.equal(field(second.body, 'connected_sandboxes'), 1);
  assert.equal(field(second.body, 'max_sandboxes'), 8);
  assert.equal(field(second.body, 'address'), '10.0.0.6:8080');
  assert.equal(field(second.body, 'status'), 'online');
  assert.equal(registry.list().length, 1);
});

test('after deregistration the same name registers as a new instance (the 404-heartbeat path)', async (t) => {
  const { base } = await setup(t);
  const first = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  await call(base, 'DELETE', `/api/v1/wolf-instances/${String(field(first.body, 'id'))}`, TOKEN);
  const second = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  assert.equal(second.status, 200);
  assert.notEqual(field(second.body, 'id'), field(first.body, 'id'));
});

test('a bad register body is 400 REVDIAL_REGISTRY_REQUEST_INVALID; max_sandboxes defaults to 10', async (t) => {
  const { base } = await setup(t);
  for (const bad of [
    'not json',
    [],
    { address: 'x' },
    { name: 'a b' },
    { name: 'w', max_sandboxes: 0 },
    { name: 'w', max_sandboxes: 1.5 },
    { name: 'w', gpu_type: 5 },
  ]) {
    const r = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, bad);
    assert.equal(r.status, 400, JSON.stringify(bad));
    assert.equal(field(r.body, 'code'), 'REVDIAL_REGISTRY_REQUEST_INVALID');
  }
  const ok = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, { name: 'bare' });
  assert.equal(ok.status, 200);
  assert.equal(field(ok.body, 'max_sandboxes'), 10);
  assert.equal(field(ok.body, 'gpu_type'), '');
});

test('the endpoints live under the control plane base path; other paths are 404', async (t) => {
  const { base } = await setup(t, '/helix');
  const r = await call(base, 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  assert.equal(r.status, 200);
  const elsewhere = await call(base.replace(/\/helix$/, ''), 'POST', '/api/v1/wolf-instances/register', TOKEN, body);
  assert.equal(elsewhere.status, 404);
  const odd = await call(base, 'GET', '/api/v1/wolf-instancesX', TOKEN);
  assert.equal(odd.status, 404);
  const deep = await call(base, 'GET', '/api/v1/wolf-instances/a/b/c', TOKEN);
  assert.equal(deep.status, 404);
});

test('the runner id handed to authorize is wolf-<name>', async (t) => {
  const seen: (string | null)[] = [];
  const registry = new Registry({ clock: new FakeClock() });
  const plane = ControlPlane.withToken(TOKEN);
  installRegistryApi(plane, registry, {
    authorize: (token, runnerId) => {
      seen.push(runnerId);
      return token === TOKEN && runnerId !== 'wolf-forbidden';
    },
  });
  await plane.listen(0, '127.0.0.1');
  t.after(() => plane.close());
  const ok = await call(plane.url, 'POST', '/api/v1/wolf-instances/register', TOKEN, { name: 'gpu-7' });
  assert.equal(ok.status, 200);
  await call(plane.url, 'POST', `/api/v1/wolf-instances/${String(field(ok.body, 'id'))}/heartbeat`, TOKEN);
  const refused = await call(plane.url, 'POST', '/api/v1/wolf-instances/register', TOKEN, { name: 'forbidden' });
  assert.equal(refused.status, 401);
  assert.deepEqual(seen, ['wolf-gpu-7', 'wolf-gpu-7', 'wolf-forbidden']);
});
