/**
 * log-limiter.ts: one line per kind per interval, the rest counted and
 * reported when the interval ends; kinds are independent.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogLimiter } from '../../src/agent/log-limiter.js';
import { LogCapture, ManualClock } from '../helpers/harness.js';

test('a flood of one kind gives one line per interval, with the count of those held back', () => {
  const clock = new ManualClock();
  const logs = new LogCapture();
  const limiter = new LogLimiter({ intervalMs: 10_000, clock });
  for (let i = 0; i < 50_000; i++) limiter.warn(logs.log, 'refuse', { code: 'REVDIAL_TUNNEL_LIMIT' }, 'Refusing tunnel');
  assert.equal(logs.lines.length, 1);
  assert.equal(logs.lines[0]?.suppressed, undefined);
  clock.tick(10_000);
  assert.equal(logs.lines.length, 2);
  const [, summary] = logs.lines;
  assert.ok(summary);
  assert.equal(summary.suppressed, 49_999);
  assert.equal(summary.code, 'REVDIAL_TUNNEL_LIMIT');
  assert.match(summary.msg, /49999 more like this in the last 10 s/);
  // The flood goes on: still one line per interval.
  for (let i = 0; i < 1000; i++) limiter.warn(logs.log, 'refuse', { code: 'REVDIAL_TUNNEL_LIMIT' }, 'Refusing tunnel');
  assert.equal(logs.lines.length, 2);
  clock.tick(10_000);
  assert.equal(logs.lines.length, 3);
  assert.equal(logs.lines[2]?.suppressed, 1000);
  // Quiet for an interval: the kind is forgotten and the next line is written at once.
  clock.tick(10_000);
  assert.equal(limiter.kinds, 0);
  limiter.warn(logs.log, 'refuse', {}, 'Refusing tunnel');
  assert.equal(logs.lines.length, 4);
});

test('kinds are limited separately; flush writes the pending counts', () => {
  const clock = new ManualClock();
  const logs = new LogCapture();
  const limiter = new LogLimiter({ intervalMs: 5_000, clock });
  for (let i = 0; i < 3; i++) {
    limiter.warn(logs.log, 'a', {}, 'a');
    limiter.warn(logs.log, 'b', {}, 'b');
  }
  assert.deepEqual(
    logs.lines.map((l) => l.msg),
    ['a', 'b'],
  );
  limiter.flush();
  assert.deepEqual(
    logs.lines.map((l) => [l.msg, l.suppressed]),
    [
      ['a', undefined],
      ['b', undefined],
      ['a (2 more like this in the last 5 s)', 2],
      ['b (2 more like this in the last 5 s)', 2],
    ],
  );
  assert.equal(clock.pending, 0, 'no timer left behind');
});
