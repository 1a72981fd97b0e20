/**
 * backoff.ts: a short outage is retried at a steady jittered pace (every wait
 * at most 2 × min, so the agent is back within that of the plane listening
 * again); a long one backs off, growing and jittered, up to the cap; a crash
 * loop (connections that drop at once) does not end the outage; a rejected
 * token waits the cap, jittered.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ReconnectBackoff } from '../../src/agent/control/backoff.js';
import { prng } from '../faults/helpers/faults.js';

const options = { minMs: 500, maxMs: 5_000, fastWindowMs: 10_000, healthyAfterMs: 1_000 };

/** Waits handed out over an outage of `outageMs` in which every attempt fails. */
function outage(b: ReconnectBackoff, start: number, outageMs: number): number[] {
  const waits: number[] = [];
  let now = start;
  while (now - start < outageMs) {
    const w = b.next(now);
    waits.push(w);
    now += w;
  }
  return waits;
}

test('a short outage: every wait between min and 2 × min', () => {
  const b = new ReconnectBackoff({ ...options, random: prng(1) });
  b.started(0);
  const waits = outage(b, 0, 9_000);
  assert.ok(waits.length >= 9);
  for (const w of waits) assert.ok(w >= 500 && w <= 1_000, String(w));
});

test('a plane that restarts every few seconds: each outage starts at the steady pace again', () => {
  const b = new ReconnectBackoff({ ...options, random: prng(2) });
  b.started(0);
  let now = 0;
  for (let round = 0; round < 50; round++) {
    now += 2_000; // up 2 s
    b.disconnected(now, 2_000);
    for (const w of outage(b, now, 3_000)) {
      assert.ok(w <= 1_000, `round ${round}: waited ${w} ms`);
      now += w;
    }
  }
});

test('a long outage grows, jittered, to the cap; a crash loop does not reset it', () => {
  const b = new ReconnectBackoff({ ...options, random: prng(3) });
  b.started(0);
  const waits = outage(b, 0, 120_000);
  const late = waits.slice(-10);
  for (const w of late) assert.ok(w >= 2_500 && w <= 5_000, String(w));
  assert.ok(new Set(late.map((w) => Math.round(w))).size > 5, 'jittered, not one fixed wait');
  // Connections that drop within healthyAfterMs keep the outage going.
  let now = 120_000;
  for (let i = 0; i < 10; i++) {
    b.disconnected(now, 50);
    const w = b.next(now);
    assert.ok(w >= 2_500, `crash loop wait ${w}`);
    now += w + 50;
  }
  // One that stays up ends it.
  b.disconnected(now, 1_000);
  assert.ok(b.next(now) <= 1_000);
});

test('after a rejected token: the cap, jittered over its upper half', () => {
  const b = new ReconnectBackoff({ ...options, random: prng(4) });
  const waits = Array.from({ length: 200 }, () => b.afterAuthFailure());
  for (const w of waits) assert.ok(w >= 2_500 && w <= 5_000, String(w));
  const buckets = new Set(waits.map((w) => Math.floor(w / 250)));
  assert.ok(buckets.size >= 9, `only ${buckets.size} of 10 buckets used: lockstep`);
});

test('a cap below the steady pace is respected', () => {
  const b = new ReconnectBackoff({ minMs: 100, maxMs: 200, fastWindowMs: 10_000, healthyAfterMs: 1_000, random: prng(5) });
  b.started(0);
  for (const w of outage(b, 0, 60_000)) assert.ok(w >= 100 && w <= 200, String(w));
});
