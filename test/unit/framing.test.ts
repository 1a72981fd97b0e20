import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCodes } from '../../src/agent/errors.js';
import { LineReader, MAX_SENT_LINE_BYTES, encodeControlMessage, parseControlLine } from '../../src/agent/control/framing.js';

const lines = (r: LineReader, ...chunks: string[]): string[] => chunks.flatMap((c) => r.push(Buffer.from(c)).map((b) => b.toString()));

test('lines are reassembled across messages, whatever the split', () => {
  const text = '{"command":"keep-alive"}\n{"command":"conn-ready","connPath":"/revdial?a=1"}\n';
  for (let size = 1; size <= text.length; size++) {
    const r = new LineReader(4096);
    const chunks: string[] = [];
    for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
    assert.deepEqual(lines(r, ...chunks), ['{"command":"keep-alive"}', '{"command":"conn-ready","connPath":"/revdial?a=1"}']);
    assert.equal(r.pendingBytes, 0);
  }
});

test('several lines in one message, and a partial tail kept for the next', () => {
  const r = new LineReader(4096);
  assert.deepEqual(lines(r, 'a\nb\nc'), ['a', 'b']);
  assert.equal(r.pendingBytes, 1);
  assert.deepEqual(lines(r, 'd\n'), ['cd']);
});

test('a line beyond the cap is a protocol error and memory stays bounded', () => {
  const r = new LineReader(100);
  r.push(Buffer.alloc(60, 0x61));
  assert.throws(() => r.push(Buffer.alloc(60, 0x61)), { code: ErrorCodes.PROTOCOL_LINE_TOO_LONG });
  assert.equal(r.pendingBytes, 0);
  // A complete line over the cap inside one chunk is refused too.
  assert.throws(() => r.push(Buffer.from(`${'x'.repeat(101)}\n`)), { code: ErrorCodes.PROTOCOL_LINE_TOO_LONG });
  // A line of exactly the cap is fine.
  assert.deepEqual(lines(r, `${'y'.repeat(100)}\n`), ['y'.repeat(100)]);
});

test('parseControlLine: objects with string fields; blank lines skipped; everything else is invalid', () => {
  assert.deepEqual(parseControlLine(Buffer.from('{"command":"conn-ready","connPath":"/x","extra":1}')), {
    command: 'conn-ready',
    connPath: '/x',
  });
  assert.deepEqual(parseControlLine(Buffer.from('{"command":"keep-alive"}\r')), { command: 'keep-alive' });
  assert.equal(parseControlLine(Buffer.from('   ')), null);
  for (const bad of ['{nope', '[1,2]', '"text"', '5', 'null', '{"command":5}', '{"connPath":{}}']) {
    assert.throws(() => parseControlLine(Buffer.from(bad)), { code: ErrorCodes.PROTOCOL_INVALID_JSON }, bad);
  }
});

test('encodeControlMessage omits empty fields and ends with a newline', () => {
  assert.equal(
    encodeControlMessage({ command: 'pickup-failed', connPath: '/revdial?x=1', err: '' })?.toString(),
    '{"command":"pickup-failed","connPath":"/revdial?x=1"}\n',
  );
  assert.equal(encodeControlMessage({ command: 'keep-alive' })?.toString(), '{"command":"keep-alive"}\n');
});

test('what the agent sends stays well under the Go reader limit: err is cut, connPath kept whole', () => {
  const connPath = `/revdial?revdial.dialer=${'a'.repeat(32)}&revdial.req=${'b'.repeat(32)}`;
  const line = encodeControlMessage({ command: 'pickup-failed', connPath, err: `boom ${'e'.repeat(10_000)}\nsecond line` });
  assert.ok(line);
  // The second half guards the constant itself, should someone raise it.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
  assert.ok(line.length <= MAX_SENT_LINE_BYTES && MAX_SENT_LINE_BYTES < 4096);
  assert.equal(line.indexOf(0x0a), line.length - 1, 'exactly one newline, at the end');
  const parsed = JSON.parse(line.toString()) as { connPath: string; err: string };
  assert.equal(parsed.connPath, connPath);
  assert.ok(parsed.err.startsWith('boom ') && parsed.err.endsWith('…'));
  // A connPath that cannot fit at all is not sent rather than cut.
  assert.equal(encodeControlMessage({ command: 'pickup-failed', connPath: `/revdial?${'z'.repeat(5000)}`, err: 'x' }), null);
});
