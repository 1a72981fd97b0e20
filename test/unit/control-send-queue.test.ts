/**
 * session.ts: what the agent sends on the control connection is bounded.
 * Past the high-water mark the session stops reading (no more conn-ready is
 * taken in, even from a frame already read), resumes in order once the queue
 * drains, drops messages past the hard bound, and drops the connection with
 * REVDIAL_CONTROL_SEND_STALLED when the queue does not drain in time.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import type WebSocket from 'ws';
import { ControlSession, type SessionEnd } from '../../src/agent/control/session.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { LogCapture, ManualClock } from '../helpers/harness.js';

/** A ws stand-in whose peer reads nothing until told to. */
class StalledSocket extends EventEmitter {
  readonly OPEN = 1;
  readonly CLOSED = 3;
  readyState = 1;
  isPaused = false;
  bufferedAmount = 0;
  #queue: { bytes: number; cb?: () => void }[] = [];
  send(data: Buffer, _opts: unknown, cb?: () => void): void {
    this.bufferedAmount += data.length;
    this.#queue.push({ bytes: data.length, ...(cb ? { cb } : {}) });
  }
  /** The peer reads `bytes` (everything when omitted); callbacks fire as ws's do. */
  drain(bytes = Infinity): void {
    while (this.#queue.length > 0 && bytes > 0) {
      const item = this.#queue.shift()!;
      bytes -= item.bytes;
      this.bufferedAmount -= item.bytes;
      item.cb?.();
    }
  }
  pause(): void {
    this.isPaused = true;
  }
  resume(): void {
    this.isPaused = false;
  }
  ping(): void {
    /* the peer answers nothing */
  }
  close(): void {
    this.terminate();
  }
  terminate(): void {
    if (this.readyState === this.CLOSED) return;
    this.readyState = this.CLOSED;
    this.emit('close', 1006, Buffer.alloc(0));
  }
}

function connReady(n: number): Buffer {
  return Buffer.from(`${JSON.stringify({ command: 'conn-ready', connPath: `/revdial?revdial.dialer=${String(n).padStart(32, '0')}` })}\n`);
}

function setup(answer: boolean) {
  const ws = new StalledSocket();
  const clock = new ManualClock();
  const logs = new LogCapture('info');
  const seen: string[] = [];
  let end: SessionEnd | undefined;
  const s: ControlSession = new ControlSession(ws as unknown as WebSocket, {
    pingIntervalMs: 1_000,
    pingTimeoutMs: 5_000,
    maxLineBytes: 4096,
    closeBackstopMs: 1_000,
    clock,
    log: logs.log,
    sendHighWaterBytes: 8 * 1024,
    maxSendQueueBytes: 32 * 1024,
    sendStallMs: 3_000,
    onConnReady: (connPath) => {
      seen.push(connPath);
      // The agent refuses each one, as it does under a flood.
      if (answer) s.send({ command: 'pickup-failed', connPath, err: `REVDIAL_TUNNEL_LIMIT: ${'x'.repeat(100)}` });
    },
  });
  void s.closed.then((e) => {
    end = e;
  });
  return { ws, clock, logs, seen, s, ended: () => end };
}

test('a peer that does not read: reading pauses at the high-water mark, mid-frame, and resumes in order when it drains', () => {
  const { ws, seen, s, ended } = setup(true);
  // One frame of 500 conn-ready, as a flood arrives.
  ws.emit('message', Buffer.concat(Array.from({ length: 500 }, (_, i) => connReady(i))), true);
  assert.ok(s.sendBlocked);
  assert.ok(ws.isPaused, 'the socket stopped reading');
  const taken = seen.length;
  assert.ok(taken < 100, `took in ${taken} requests past the high-water mark`);
  assert.ok(ws.bufferedAmount <= 8 * 1024 + 512);
  // ws may still emit what it had read: held, not dispatched.
  ws.emit('message', connReady(1000), true);
  assert.equal(seen.length, taken);
  // The peer reads everything: the rest comes through in order.
  const blocked = (): boolean => s.sendBlocked;
  while (blocked() || ws.bufferedAmount > 0) ws.drain();
  assert.equal(seen.length, 501);
  assert.deepEqual(
    seen.map((p) => Number(/dialer=(\d+)/.exec(p)?.[1])),
    [...Array.from({ length: 500 }, (_, i) => i), 1000],
  );
  assert.equal(ws.isPaused, false);
  assert.equal(ended(), undefined);
});

test('a peer that never reads: the connection is dropped with REVDIAL_CONTROL_SEND_STALLED; memory stays at the bound', async () => {
  const { ws, clock, s, ended, logs } = setup(true);
  for (let i = 0; i < 2_000; i++) ws.emit('message', connReady(i), true);
  assert.ok(ws.bufferedAmount <= 32 * 1024, `${ws.bufferedAmount} bytes queued`);
  // Messages sent by other paths (a pick-up that failed later) past the hard bound are dropped.
  for (let i = 0; i < 1_000; i++) s.send({ command: 'pickup-failed', connPath: `/revdial?${i}`, err: 'x'.repeat(200) });
  assert.ok(ws.bufferedAmount <= 32 * 1024, `${ws.bufferedAmount} bytes queued`);
  assert.ok(s.droppedMessages > 0);
  clock.tick(2_999);
  assert.equal(ended(), undefined);
  clock.tick(1);
  await Promise.resolve();
  assert.equal(ended()?.error.code, ErrorCodes.CONTROL_SEND_STALLED);
  assert.ok(logs.lines.length <= 3, `${logs.lines.length} log lines`);
});

test('a peer that reads slowly but steadily is not dropped', () => {
  const { ws, clock, seen, ended } = setup(true);
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 100; i++) ws.emit('message', connReady(round * 100 + i), true);
    clock.tick(1_000);
    ws.drain(); // the peer catches up once a second
  }
  assert.equal(ended(), undefined);
  assert.equal(seen.length, 5_000);
});
