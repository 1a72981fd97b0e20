/**
 * The packaged executable masks with src/agent/net/js-mask.ts in place of the bufferutil
 * add-on: every byte must come out as RFC 6455 section 5.3 defines it, for any
 * length, key, source position and output offset (unaligned ones included).
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { mask, unmask } from '../../src/agent/net/js-mask.js';

/** RFC 6455 5.3: octet i of the output is octet i of the input XOR octet i mod 4 of the key. */
function reference(source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number): void {
  for (let i = 0; i < length; i++) output[offset + i] = source[i]! ^ key[i % 4]!;
}

const params = fc.record({
  data: fc.uint8Array({ minLength: 0, maxLength: 300 }),
  key: fc.uint8Array({ minLength: 4, maxLength: 4 }),
  sourceAt: fc.nat(7),
  offset: fc.nat(15),
  fill: fc.integer({ min: 0, max: 255 }),
});

test('mask writes what RFC 6455 defines, at any length, key and alignment, and nothing else', () => {
  fc.assert(
    fc.property(params, ({ data, key, sourceAt, offset, fill }) => {
      // The source as a view at an odd place in a larger buffer, like a slice of a read buffer.
      const backing = Buffer.alloc(data.length + sourceAt + 3, 0xee);
      backing.set(data, sourceAt);
      const source = backing.subarray(sourceAt, sourceAt + data.length);
      const got = Buffer.alloc(offset + data.length + 5, fill);
      const want = Buffer.alloc(offset + data.length + 5, fill);
      mask(source, key, got, offset, data.length);
      reference(source, key, want, offset, data.length);
      assert.deepEqual(got, want);
      assert.deepEqual(source, Buffer.from(data), 'the source is left as it was');
    }),
    { numRuns: 2000 },
  );
});

test('unmask undoes mask in place', () => {
  fc.assert(
    fc.property(params, ({ data, key }) => {
      const buffer = Buffer.from(data);
      mask(buffer, key, buffer, 0, buffer.length);
      unmask(buffer, key);
      assert.deepEqual(buffer, Buffer.from(data));
    }),
    { numRuns: 500 },
  );
});

test('a 256 KiB frame with a 14-byte header offset matches the reference', () => {
  const data = Buffer.alloc(256 * 1024 + 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
  const key = Buffer.from([0x9a, 0x00, 0xff, 0x31]);
  const got = Buffer.alloc(data.length + 14);
  const want = Buffer.alloc(data.length + 14);
  mask(data, key, got, 14, data.length);
  reference(data, key, want, 14, data.length);
  assert.ok(got.equals(want));
});
