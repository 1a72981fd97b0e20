/**
 * Types for the prom-client modules metrics.ts loads one by one instead of
 * through the package index. The index also loads the Pushgateway (http,
 * https), the cluster aggregator (cluster) and Summary (tdigest, bintrees),
 * none of which the agent uses. prom-client has no "exports" map, so these
 * paths resolve in Node and esbuild alike, but it ships types for its index
 * only: each module here re-exports the index's own declaration, so the types
 * are exactly prom-client's. Each file is CommonJS with `module.exports =` the
 * class (or function), which is what a default import receives.
 */
declare module 'prom-client/lib/registry.js' {
  export { Registry as default } from 'prom-client';
}
declare module 'prom-client/lib/counter.js' {
  export { Counter as default } from 'prom-client';
}
declare module 'prom-client/lib/gauge.js' {
  export { Gauge as default } from 'prom-client';
}
declare module 'prom-client/lib/histogram.js' {
  export { Histogram as default } from 'prom-client';
}
declare module 'prom-client/lib/defaultMetrics.js' {
  export { collectDefaultMetrics as default } from 'prom-client';
}
