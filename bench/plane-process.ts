/**
 * The control-plane side of `npm run bench`, in its own process:
 *
 * - the project's ControlPlane (dev/control-plane/server.ts), which the agent
 *   under test connects to;
 * - a plain HTTP "tunnel front" on loopback: every request it receives is sent
 *   through `plane.request(runnerId, ...)`, i.e. through a fresh tunnel (a new
 *   conn-ready and data connection per request, as the production plane does),
 *   so `wrk` can drive tunnels;
 * - a "direct front" that proxies the same way but over a fresh TCP connection
 *   straight to the stand-in Wolf: the same proxy work without the tunnel, so
 *   the difference between the two is what the tunnel costs;
 * - IPC commands for the bulk transfers and the idle tunnels, each checksum-verified.
 *
 * Environment: BENCH_TOKEN (the runner token), BENCH_RUNNER_ID, BENCH_WOLF (host:port),
 * BENCH_WOLF_SOCKET (optional: the stand-in's unix socket, which the no-tunnel
 * paths then use, as the agent does). For the WAN mode (bench/wan/): BENCH_PLANE_HOST
 * (the control plane's listen address, default 127.0.0.1), BENCH_TLS_KEY and
 * BENCH_TLS_CERT (PEM files: serve https/wss). A request to the tunnel front with an
 * `x-bench-runner` header goes to that runner id instead of BENCH_RUNNER_ID (several
 * agents side by side); the `bulk` command takes a `runnerId` the same way.
 */
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ControlPlane } from '../dev/control-plane/server.js';
import { digestOf, expectedDigest, patternBlock } from '../dev/stand-in-wolf.js';
import { serve } from './ipc.js';

const token = process.env.BENCH_TOKEN ?? '';
const runnerId = process.env.BENCH_RUNNER_ID ?? '';
const [wolfHost = '127.0.0.1', wolfPortText = '0'] = (process.env.BENCH_WOLF ?? '').split(':');
const wolfPort = Number(wolfPortText);
if (!token || !runnerId || !wolfPort) throw new Error('BENCH_TOKEN, BENCH_RUNNER_ID and BENCH_WOLF are required');
const wolfSocket = process.env.BENCH_WOLF_SOCKET;
/** Where the no-tunnel paths reach the stand-in Wolf: the same transport the agent is given. */
const wolfTarget: http.RequestOptions = wolfSocket ? { socketPath: wolfSocket } : { host: wolfHost, port: wolfPort };

const tlsKey = process.env.BENCH_TLS_KEY;
const tlsCert = process.env.BENCH_TLS_CERT;
const plane = ControlPlane.withToken(token, tlsKey && tlsCert ? { tls: { key: readFileSync(tlsKey), cert: readFileSync(tlsCert) } } : {});
await plane.listen(0, process.env.BENCH_PLANE_HOST ?? '127.0.0.1');

/** Hop-by-hop headers are the proxy's own business. */
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer']);

function forwardHeaders(headers: IncomingMessage['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || HOP.has(k) || k === 'host') continue;
    out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

function relay(upstream: IncomingMessage, res: ServerResponse): void {
  const headers: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(upstream.headers)) if (v !== undefined && !HOP.has(k)) headers[k] = v;
  res.writeHead(upstream.statusCode ?? 502, headers);
  upstream.pipe(res);
}

function fail(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify({ error: err instanceof Error ? err.message : String(err) });
  res.writeHead(502, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

async function bodyOf(req: IncomingMessage): Promise<Buffer | undefined> {
  if (req.method === 'GET' || req.method === 'HEAD') {
    req.resume();
    return undefined;
  }
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** One fresh tunnel per request. */
const tunnelFront = http.createServer((req, res) => {
  bodyOf(req)
    .then((body) =>
      plane.request(typeof req.headers['x-bench-runner'] === 'string' ? req.headers['x-bench-runner'] : runnerId, {
        method: req.method ?? 'GET',
        path: req.url ?? '/',
        headers: forwardHeaders(req.headers),
        ...(body ? { body } : {}),
      }),
    )
    .then(
      (upstream) => relay(upstream, res),
      (err: unknown) => fail(res, err),
    );
});

/** One fresh connection straight to Wolf per request: the same proxy, no tunnel. */
const directFront = http.createServer((req, res) => {
  bodyOf(req).then(
    (body) => {
      const headers: Record<string, string> = { ...forwardHeaders(req.headers), host: 'wolf' };
      if (body) headers['content-length'] = String(body.length);
      const up = http.request({ ...wolfTarget, method: req.method, path: req.url, headers, agent: false });
      up.once('response', (upstream) => relay(upstream, res));
      up.once('error', (err) => fail(res, err));
      up.end(body);
    },
    (err: unknown) => fail(res, err),
  );
});

for (const s of [tunnelFront, directFront]) {
  s.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
}

/** Deterministic bytes, the same as the stand-in's `/bytes`, as an upload body. */
function patternStream(size: number, seed: string): Readable {
  const block = patternBlock(seed);
  let left = size;
  return new Readable({
    highWaterMark: block.length,
    read() {
      while (left > 0) {
        const n = Math.min(left, block.length);
        left -= n;
        if (!this.push(n === block.length ? block : block.subarray(0, n))) return;
      }
      this.push(null);
    },
  });
}

function directRequest(method: string, path: string, headers: Record<string, string> = {}): http.ClientRequest {
  return http.request({ ...wolfTarget, method, path, headers: { host: 'wolf', ...headers }, agent: false });
}

function responseOf(req: http.ClientRequest): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
}

/** One GET: straight to the stand-in Wolf, or through a fresh tunnel. */
async function get(path: string, direct: boolean, runner = runnerId): Promise<IncomingMessage> {
  if (!direct) return plane.request(runner, { path });
  const req = directRequest('GET', path);
  req.end();
  return responseOf(req);
}

const digests = new Map<string, string>();
function digestFor(size: number, seed: string): string {
  const key = `${size}/${seed}`;
  let d = digests.get(key);
  if (d === undefined) {
    d = expectedDigest(size, seed);
    digests.set(key, d);
  }
  return d;
}

/**
 * The no-tunnel baseline of an upload. On a loaded machine the stand-in's
 * socket has been seen to close under a 128 MiB body (write EPIPE), with no
 * agent on the path; the baseline is then taken again once, and said on stderr.
 */
async function directUpload(size: number, seed: string, headers: Record<string, string>): Promise<IncomingMessage> {
  for (let attempt = 1; ; attempt++) {
    const req = directRequest('POST', '/upload', headers);
    const answered = responseOf(req);
    answered.catch(() => undefined);
    try {
      await pipeline(patternStream(size, seed), req);
      return await answered;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (attempt > 1 || (code !== 'EPIPE' && code !== 'ECONNRESET')) throw err;
      process.stderr.write(`bench: direct upload to the stand-in Wolf failed (${code}), taking the baseline again\n`);
    }
  }
}

interface BulkResult {
  ms: number;
  bytes: number;
  sha256: string;
  expected: string;
  ok: boolean;
}

async function bulk(args: Record<string, unknown>): Promise<BulkResult> {
  const size = Number(args.size);
  const seed = String(args.seed);
  const direct = args.via === 'direct';
  const runner = typeof args.runnerId === 'string' ? args.runnerId : runnerId;
  const expected = digestFor(size, seed); // before the clock starts
  const started = process.hrtime.bigint();
  let got: { bytes: number; sha256: string };
  if (args.direction === 'down') {
    const path = `/bytes?size=${size}&seed=${encodeURIComponent(seed)}`;
    const res = await get(path, direct, runner);
    if (res.statusCode !== 200) throw new Error(`download: HTTP ${res.statusCode}`);
    got = await digestOf(res);
  } else {
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(size) };
    let res: IncomingMessage;
    if (direct) {
      res = await directUpload(size, seed, headers);
    } else {
      res = await plane.request(runner, { method: 'POST', path: '/upload', headers, body: patternStream(size, seed) });
    }
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    if (res.statusCode !== 200) throw new Error(`upload: HTTP ${res.statusCode}`);
    got = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { bytes: number; sha256: string };
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  return { ms, bytes: got.bytes, sha256: got.sha256, expected, ok: got.sha256 === expected && got.bytes === size };
}

/** Open event streams: each one holds a tunnel (or a direct connection) open and idle. */
const idle: IncomingMessage[] = [];

async function openIdle(args: Record<string, unknown>): Promise<number> {
  const count = Number(args.count);
  const direct = args.via === 'direct';
  const path = '/api/v1/events?keepaliveMs=3600000';
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++;
      const res = await get(path, direct);
      if (res.statusCode !== 200) throw new Error(`event stream: HTTP ${res.statusCode}`);
      res.resume();
      idle.push(res);
    }
  };
  await Promise.all(Array.from({ length: Math.min(32, count) }, worker));
  return idle.length;
}

function closeIdle(): number {
  const n = idle.length;
  for (const res of idle.splice(0)) res.destroy();
  return n;
}

serve({
  waitRunner: async (args) => {
    await plane.waitForRunner(typeof args.runnerId === 'string' ? args.runnerId : runnerId, Number(args.timeoutMs ?? 10_000));
    return true;
  },
  bulk,
  openIdle,
  closeIdle,
});

const port = (s: http.Server): number => (s.address() as AddressInfo).port;
process.send?.({
  ready: true,
  pid: process.pid,
  apiUrl: plane.url,
  tunnelFront: `http://127.0.0.1:${port(tunnelFront)}`,
  directFront: `http://127.0.0.1:${port(directFront)}`,
});
