import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { describeTarget, dialLocal, parseLocalAddress } from '../../src/agent/net/local-dialer.js';
import { ManualClock } from '../helpers/harness.js';

test('local address forms', () => {
  assert.deepEqual(parseLocalAddress('localhost:8080'), { kind: 'tcp', host: 'localhost', port: 8080 });
  assert.deepEqual(parseLocalAddress('http://127.0.0.1:47989'), { kind: 'tcp', host: '127.0.0.1', port: 47989 });
  assert.deepEqual(parseLocalAddress('http://wolf'), { kind: 'tcp', host: 'wolf', port: 80 });
  assert.deepEqual(parseLocalAddress('[::1]:8080'), { kind: 'tcp', host: '::1', port: 8080 });
  assert.deepEqual(parseLocalAddress('unix:///var/run/wolf/wolf.sock'), { kind: 'unix', path: '/var/run/wolf/wolf.sock' });
  assert.deepEqual(parseLocalAddress('unix:/var/run/wolf/wolf.sock'), { kind: 'unix', path: '/var/run/wolf/wolf.sock' });
  assert.deepEqual(parseLocalAddress('/var/run/wolf/wolf.sock'), { kind: 'unix', path: '/var/run/wolf/wolf.sock' });
  assert.equal(describeTarget(parseLocalAddress('[::1]:8080')), '[::1]:8080');
  assert.equal(describeTarget(parseLocalAddress('/run/w.sock')), 'unix:///run/w.sock');
  for (const bad of ['localhost', 'localhost:0', 'localhost:70000', 'https://h:1', 'http://h:1/api', 'unix://relative', 'a b:1', '']) {
    assert.throws(() => parseLocalAddress(bad), { code: ErrorCodes.CONFIG_INVALID }, bad);
  }
});

test('a refused local dial fails with LOCAL_DIAL_FAILED', async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  await assert.rejects(dialLocal({ kind: 'tcp', host: '127.0.0.1', port }, { timeoutMs: 5000 }), {
    code: ErrorCodes.LOCAL_DIAL_FAILED,
  });
  await assert.rejects(dialLocal({ kind: 'unix', path: '/nonexistent/wolf.sock' }, { timeoutMs: 5000 }), {
    code: ErrorCodes.LOCAL_DIAL_FAILED,
  });
});

test('a local dial that does not finish in time fails with LOCAL_DIAL_TIMEOUT and leaves no timer', async (t) => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const { port } = server.address() as net.AddressInfo;
  const clock = new ManualClock();
  const dial = dialLocal({ kind: 'tcp', host: '127.0.0.1', port }, { timeoutMs: 5000, clock });
  // The connect cannot complete before the event loop turns; the clock fires first.
  clock.tick(5000);
  await assert.rejects(dial, { code: ErrorCodes.LOCAL_DIAL_TIMEOUT });
  assert.equal(clock.pending, 0);
});

test('an aborted local dial rejects with the abort reason', async () => {
  const ac = new AbortController();
  const reason = new Error('stop');
  ac.abort(reason);
  await assert.rejects(dialLocal({ kind: 'tcp', host: '127.0.0.1', port: 9 }, { timeoutMs: 5000, signal: ac.signal }), reason);
});
