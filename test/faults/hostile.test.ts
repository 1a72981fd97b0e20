/**
 * Issue 5, figure 8: a hostile or broken control plane. Property tests
 * (fast-check) feed the control reader random frame splits, random bytes,
 * oversized lines, text frames and malformed JSON:
 *
 *  - no exception escapes (only coded RevdialErrors, and the session turns
 *    them into a closed connection, never a throw),
 *  - memory stays bounded (a partial line never holds more than the limit),
 *  - well-formed messages still work: around unknown commands, blank lines
 *    and extra fields in the same session, and after a fatal error on the
 *    next connection (real sockets: garbage from the plane, then a request).
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { after, test } from 'node:test';
import fc from 'fast-check';
import type WebSocket from 'ws';
import { ControlSession, type SessionEnd } from '../../src/agent/control/session.js';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import { LineReader, parseControlLine } from '../../src/agent/control/framing.js';
import { LogCapture, ManualClock, readBody, startAgent, startPlane, startWolf } from '../helpers/harness.js';
import { assertNoTokenLeaked, guardTokens } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const RUNS = Number(process.env.FAULTS_PROPERTY_RUNS ?? 300);
const MAX_LINE = 1024;

/** Cuts `data` at the given fractions into frames (random frame splits). */
function split(data: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * data.length)))].sort((a, b) => a - b);
  const frames: Buffer[] = [];
  let start = 0;
  for (const p of points) {
    if (p <= start) continue;
    frames.push(data.subarray(start, p));
    start = p;
  }
  frames.push(data.subarray(start));
  return frames;
}

const wellFormed = fc.oneof(
  fc.constant({ command: 'keep-alive' }),
  fc.record({ command: fc.constant('conn-ready'), connPath: fc.string({ maxLength: 80 }).map((s) => `/revdial?revdial.dialer=${encodeURIComponent(s)}`) }),
  // Unknown commands and extra fields must be ignored, not fatal.
  fc.record({ command: fc.string({ maxLength: 20 }), extra: fc.anything({ maxDepth: 2 }) }),
);

test('LineReader: any split of a stream of lines gives the same lines; memory never exceeds the limit', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 20 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 30 }),
      (rawLines, cuts) => {
        const lines = rawLines.map((l) => Buffer.from(l.filter((b) => b !== 0x0a)));
        const stream = Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')]));
        const reader = new LineReader(MAX_LINE);
        const out: Buffer[] = [];
        for (const frame of split(stream, cuts)) {
          out.push(...reader.push(frame));
          assert.ok(reader.pendingBytes <= MAX_LINE);
        }
        assert.equal(reader.pendingBytes, 0);
        assert.deepEqual(
          out.map((b) => b.toString('hex')),
          lines.map((b) => b.toString('hex')),
        );
      },
    ),
    { numRuns: RUNS },
  );
});

test('LineReader: random bytes and oversized lines throw only REVDIAL_PROTOCOL_LINE_TOO_LONG, holding at most the limit', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.uint8Array({ maxLength: 2000 }),
          fc.integer({ min: 1, max: 64 * 1024 }).map((n) => new Uint8Array(n).fill(0x41)),
        ),
        { maxLength: 12 },
      ),
      (frames) => {
        const reader = new LineReader(MAX_LINE);
        for (const f of frames) {
          try {
            reader.push(Buffer.from(f));
          } catch (err) {
            assert.ok(err instanceof RevdialError);
            assert.equal(err.code, ErrorCodes.PROTOCOL_LINE_TOO_LONG);
            assert.equal(reader.pendingBytes, 0, 'a refused line is let go of');
          }
          assert.ok(reader.pendingBytes <= MAX_LINE);
        }
      },
    ),
    { numRuns: RUNS },
  );
});

test('parseControlLine: any bytes give a message, null, or REVDIAL_PROTOCOL_INVALID_JSON; never another exception', () => {
  const candidates = fc.oneof(
    fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
    fc.json().map((j) => Buffer.from(j)),
    // JSON.stringify returns undefined for undefined and functions, which its type does not say.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    fc.anything().map((v) => Buffer.from(JSON.stringify(v) ?? 'undefined')),
    fc.string().map((s) => Buffer.from(`{"command":${s}`)),
  );
  fc.assert(
    fc.property(candidates, (line) => {
      try {
        const msg = parseControlLine(line);
        if (msg !== null) {
          for (const v of Object.values(msg)) assert.equal(typeof v, 'string');
        }
      } catch (err) {
        assert.ok(err instanceof RevdialError, String(err));
        assert.equal(err.code, ErrorCodes.PROTOCOL_INVALID_JSON);
      }
    }),
    { numRuns: RUNS * 3 },
  );
});

/** Just enough of a `ws` WebSocket for a ControlSession. */
class FakeSocket extends EventEmitter {
  readonly OPEN = 1;
  readonly CLOSED = 3;
  readyState = 1;
  sent: Buffer[] = [];
  send(data: Buffer): void {
    this.sent.push(data);
  }
  ping(): void {
    /* this peer never answers */
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

function session(): { ws: FakeSocket; s: ControlSession; connReady: string[]; ended: () => SessionEnd | undefined } {
  const ws = new FakeSocket();
  const connReady: string[] = [];
  let end: SessionEnd | undefined;
  const s = new ControlSession(ws as unknown as WebSocket, {
    pingIntervalMs: 1_000,
    pingTimeoutMs: 5_000,
    maxLineBytes: MAX_LINE,
    closeBackstopMs: 1_000,
    clock: new ManualClock(),
    log: new LogCapture('silent').log,
    onConnReady: (p) => connReady.push(p),
  });
  void s.closed.then((e) => {
    end = e;
  });
  return { ws, s, connReady, ended: () => end };
}

test('ControlSession: well-formed messages in any frame split are all delivered, around ignored commands and blank lines', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(wellFormed, fc.constant('blank')), { maxLength: 30 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 40 }),
      async (msgs, cuts) => {
        const text = msgs.map((m) => (m === 'blank' ? '  \n' : `${JSON.stringify(m)}\n`)).join('');
        const expected: string[] = [];
        for (const m of msgs) {
          if (m !== 'blank' && m.command === 'conn-ready') expected.push('connPath' in m ? m.connPath : '');
        }
        const { ws, connReady, ended } = session();
        for (const frame of split(Buffer.from(text), cuts)) ws.emit('message', frame, true);
        await Promise.resolve();
        assert.equal(ended(), undefined, 'still open');
        assert.deepEqual(connReady, expected);
        ws.terminate();
      },
    ),
    { numRuns: RUNS },
  );
});

test('ControlSession: hostile input (random bytes, oversized lines, text frames, bad JSON) never throws; it ends the session with a protocol code', async () => {
  const hostile = fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 3000 }).map((a) => ({ data: Buffer.from(a), binary: true })),
    fc.integer({ min: MAX_LINE + 1, max: 200_000 }).map((n) => ({ data: Buffer.alloc(n, 0x7b), binary: true })),
    fc.string({ minLength: 1 }).map((s) => ({ data: Buffer.from(`${JSON.stringify({ command: 'keep-alive' })}\n${s}`), binary: false })),
    fc.string().map((s) => ({ data: Buffer.from(`{"command":"conn-ready","connPath":${s}\n`), binary: true })),
    // As above: JSON.stringify can return undefined.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    fc.anything().map((v) => ({ data: Buffer.from(`${JSON.stringify(v) ?? 'null'}\n`), binary: true })),
  );
  const codes = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(fc.array(wellFormed, { maxLength: 5 }), hostile, fc.array(wellFormed, { maxLength: 5 }), async (before, bad, afterBad) => {
      const { ws, connReady, ended } = session();
      const send = (data: Buffer, binary: boolean): void => {
        // An exception escaping here would crash the agent: it must not happen.
        ws.emit('message', data, binary);
      };
      for (const m of before) send(Buffer.from(`${JSON.stringify(m)}\n`), true);
      const beforeReady = connReady.length;
      send(bad.data, bad.binary);
      for (const m of afterBad) send(Buffer.from(`${JSON.stringify(m)}\n`), true);
      await Promise.resolve();
      const end = ended();
      if (end === undefined) {
        // Accepted as valid (it happened to be well-formed): the session is intact.
        assert.equal(ws.readyState, ws.OPEN);
        ws.terminate();
        return;
      }
      assert.ok(
        [ErrorCodes.PROTOCOL_TEXT_FRAME, ErrorCodes.PROTOCOL_LINE_TOO_LONG, ErrorCodes.PROTOCOL_INVALID_JSON].includes(end.error.code as never) ||
          end.error.code === ErrorCodes.CONTROL_CLOSED,
        end.error.code,
      );
      codes.set(end.error.code, (codes.get(end.error.code) ?? 0) + 1);
      // Nothing is dispatched from a dead session.
      assert.ok(connReady.length >= beforeReady);
    }),
    { numRuns: RUNS },
  );
  // The generators reached every fatal path.
  for (const code of [ErrorCodes.PROTOCOL_TEXT_FRAME, ErrorCodes.PROTOCOL_LINE_TOO_LONG, ErrorCodes.PROTOCOL_INVALID_JSON]) {
    assert.ok((codes.get(code) ?? 0) > 0, `${code} never produced`);
  }
});

function isFatal(data: Buffer, binary: boolean): boolean {
  if (!binary) return true;
  try {
    for (const line of new LineReader(4096).push(data)) parseControlLine(line);
    return false;
  } catch {
    return true;
  }
}

test('hostile control plane over real sockets: after each kind of garbage the agent reconnects and serves', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const { logs, runnerId } = startAgent(t, plane, local, { maxLineBytes: 4096, reconnectMaxMs: 200 });
  guardTokens('in-process agent (hostile plane)', () => logs.raw);
  const garbage = fc.sample(
    fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 500 }).map((a) => ({ data: Buffer.concat([Buffer.from(a), Buffer.from('\n')]), binary: true })),
      fc.constant({ data: Buffer.alloc(64 * 1024, 0x61), binary: true }),
      fc.string({ minLength: 1, maxLength: 50 }).map((s) => ({ data: Buffer.from(s), binary: false })),
      fc.string({ maxLength: 50 }).map((s) => ({ data: Buffer.from(`{"command":${JSON.stringify(s)},"connPath":7}\n`), binary: true })),
    ),
    { numRuns: 12, seed: 5 },
  );
  let served = 0;
  for (const bad of garbage) {
    const dialer = await plane.waitForRunner(runnerId, 10_000);
    const mark = logs.lines.length;
    await logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial', 10_000, Math.max(0, mark - 50));
    const closed = new Promise<void>((resolve) => dialer.once('close', () => resolve()));
    dialer.sendRaw(bad.data, bad.binary);
    // Some byte strings are valid lines (blank, or JSON with unknown fields):
    // then the session lives on. The agent's own framing code is the oracle.
    if (isFatal(bad.data, bad.binary)) {
      await closed;
      await logs.waitFor((l) => l.msg.startsWith('Control connection lost'), 5_000, mark);
    }
    const live = await plane.waitForRunner(runnerId, 10_000);
    await logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial', 10_000, mark);
    const res = await plane.request(runnerId, { path: '/api/v1/system/health' }).catch((err: unknown) => {
      throw new Error(
        `after ${JSON.stringify(bad.data.subarray(0, 200).toString('latin1'))} (binary ${bad.binary}): ${String(err)}; log:\n${logs.raw.slice(-5).join('\n')}`,
      );
    });
    assert.equal(res.statusCode, 200);
    await readBody(res);
    assert.ok(!live.closed);
    served++;
  }
  assert.equal(served, garbage.length);
  const codes = logs.lines.filter((l) => l.msg.startsWith('Control connection lost')).map((l) => l.code);
  t.diagnostic(
    `figure 8 (sockets): ${garbage.length} garbage deliveries, ${codes.length} fatal (${[...new Set(codes)].join(', ')}), all followed by a served request`,
  );
});
