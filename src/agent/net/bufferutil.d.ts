/**
 * The `bufferutil` add-on (native WebSocket masking) ships no types. In the
 * packaged executable, scripts/bundle.mjs puts js-mask.ts in its place, which
 * has the same two functions as named exports and no default export.
 */
declare module 'bufferutil' {
  export function mask(source: Uint8Array, mask: Uint8Array, output: Uint8Array, offset: number, length: number): void;
  export function unmask(buffer: Uint8Array, mask: Uint8Array): void;
  const bufferutil: { mask: typeof mask; unmask: typeof unmask } | undefined;
  export default bufferutil;
}
