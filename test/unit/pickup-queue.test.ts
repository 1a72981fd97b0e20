/**
 * pickup-queue.ts: at most `concurrency` run at once, at most `maxQueued`
 * wait, the rest are refused; a slot frees when its run settles, in order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PickupQueue } from '../../src/agent/control/pickup-queue.js';

test('a burst: 4 run, 8 wait, the rest refused; every accepted item runs, oldest first', async () => {
  const release: (() => void)[] = [];
  const started: number[] = [];
  let peak = 0;
  const q = new PickupQueue<number>({
    concurrency: 4,
    maxQueued: 8,
    run: (n) => {
      started.push(n);
      peak = Math.max(peak, q.running);
      return new Promise<void>((resolve) => release.push(resolve));
    },
  });
  const accepted = Array.from({ length: 1000 }, (_, i) => q.push(i));
  assert.equal(accepted.filter(Boolean).length, 12);
  assert.deepEqual(accepted.slice(0, 12), Array(12).fill(true));
  assert.equal(q.running, 4);
  assert.equal(q.queued, 8);
  while (release.length > 0) {
    release.shift()?.();
    await new Promise((r) => setImmediate(r));
  }
  assert.deepEqual(
    started,
    Array.from({ length: 12 }, (_, i) => i),
  );
  assert.equal(peak, 4);
  assert.equal(q.running, 0);
  assert.equal(q.queued, 0);
});

test('a run that throws or rejects frees its slot; takeAll empties the queue', async () => {
  const q = new PickupQueue<number>({
    concurrency: 1,
    maxQueued: 3,
    run: (n) => {
      if (n === 0) throw new Error('boom');
      return n === 1 ? Promise.reject(new Error('no')) : new Promise(() => undefined);
    },
  });
  assert.ok(q.push(0)); // throws at once: slot freed on the next tick
  assert.ok(q.push(1));
  assert.ok(q.push(2));
  await new Promise((r) => setImmediate(r));
  assert.equal(q.running, 1); // 2 hangs
  assert.ok(q.push(3));
  assert.ok(q.push(4));
  assert.deepEqual(q.takeAll(), [3, 4]);
  assert.equal(q.queued, 0);
});
