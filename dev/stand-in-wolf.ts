/**
 * A stand-in for the Wolf API, for the demo, tests and benchmarks: answers
 * like Wolf does (one request per connection, `Connection: close`), over TCP
 * or a unix socket, with endpoints that exercise a tunnel:
 *
 *   GET  /api/v1/system/health          small JSON
 *   GET  /api/v1/events?keepaliveMs=N   server-sent events, `:keepalive` every N ms
 *   GET  /bytes?size=N&seed=S           N deterministic bytes (see `expectedDigest`)
 *   GET  /bytes?...&rate=B              the same, paced at about B bytes per second (a slow stream)
 *   POST /upload                        answers {"bytes": n, "sha256": hex} of the body
 *   POST /echo                          streams the body back as it arrives (both directions at once)
 *   POST /stall                         accepts and never reads the body nor answers (a stalled Wolf)
 */
import { createHash } from 'node:crypto';
import { existsSync, unlinkSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream';

const BLOCK = 64 * 1024;

/** The deterministic content of `/bytes`: a 64 KiB block derived from the seed, repeated. */
export function patternBlock(seed: string): Buffer {
  const block = Buffer.allocUnsafe(BLOCK);
  let state = createHash('sha256').update(`wolf-stand-in:${seed}`).digest();
  for (let off = 0; off < BLOCK; off += state.length) {
    state.copy(block, off);
    state = createHash('sha256').update(state).digest();
  }
  return block;
}

/** What `/bytes?size=N&seed=S` must hash to, computed without the server. */
export function expectedDigest(size: number, seed: string): string {
  const block = patternBlock(seed);
  const hash = createHash('sha256');
  let left = size;
  while (left > 0) {
    const n = Math.min(left, BLOCK);
    hash.update(n === BLOCK ? block : block.subarray(0, n));
    left -= n;
  }
  return hash.digest('hex');
}

/** Reads a stream to its end: its sha256 (hex) and length, to compare with `expectedDigest`. */
export async function digestOf(stream: AsyncIterable<unknown>): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

export interface StandInWolfOptions {
  /** Listen on a unix socket instead of TCP. */
  socketPath?: string;
}

export class StandInWolf {
  readonly server: http.Server;
  readonly #options: StandInWolfOptions;
  requests = 0;
  /** Requests to `/stall` currently held open. */
  stalled = 0;

  constructor(options: StandInWolfOptions = {}) {
    this.#options = options;
    this.server = http.createServer(this.#onRequest);
    this.server.keepAliveTimeout = 0;
  }

  /** Listens; returns the address an agent's `--local` should name. */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    const path = this.#options.socketPath;
    if (path && existsSync(path)) unlinkSync(path);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      const done = (): void => {
        this.server.removeListener('error', reject);
        resolve();
      };
      if (path) this.server.listen(path, done);
      else this.server.listen(port, host, done);
    });
    if (path) return `unix://${path}`;
    const a = this.server.address() as AddressInfo;
    return `${a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    this.requests++;
    res.shouldKeepAlive = false;
    const url = new URL(req.url ?? '/', 'http://wolf');
    if (req.method === 'GET' && url.pathname === '/api/v1/system/health') {
      json(res, 200, { status: 'ok', service: 'wolf-stand-in' });
    } else if (req.method === 'GET' && url.pathname === '/api/v1/apps') {
      // Wolf's list of apps (what `doctor` asks for by default).
      json(res, 200, { success: true, apps: [] });
    } else if (req.method === 'GET' && url.pathname === '/api/v1/events') {
      this.#events(res, Number(url.searchParams.get('keepaliveMs') ?? 15_000));
    } else if (req.method === 'GET' && url.pathname === '/bytes') {
      const rate = Number(url.searchParams.get('rate') ?? 0);
      if (rate > 0) this.#slowBytes(res, Number(url.searchParams.get('size') ?? 0), url.searchParams.get('seed') ?? '0', rate);
      else this.#bytes(res, Number(url.searchParams.get('size') ?? 0), url.searchParams.get('seed') ?? '0');
    } else if (req.method === 'POST' && url.pathname === '/upload') {
      this.#upload(req, res);
    } else if (req.method === 'POST' && url.pathname === '/echo') {
      this.#echo(req, res);
    } else if (req.method === 'POST' && url.pathname === '/stall') {
      // Never read, never answer: TCP backpressure reaches whoever is sending.
      this.stalled++;
      res.on('close', () => this.stalled--);
    } else {
      json(res, 404, { error: 'not found' });
    }
  };

  #events(res: ServerResponse, keepaliveMs: number): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write(`data: ${JSON.stringify({ event: 'hello' })}\n\n`);
    const timer = setInterval(() => res.write(':keepalive\n\n'), Math.max(10, keepaliveMs));
    res.on('close', () => clearInterval(timer));
  }

  #bytes(res: ServerResponse, size: number, seed: string): void {
    if (!Number.isSafeInteger(size) || size < 0) {
      json(res, 400, { error: 'size must be a whole number' });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    const block = patternBlock(seed);
    let left = size;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, BLOCK);
        left -= n;
        if (!res.write(n === BLOCK ? block : block.subarray(0, n))) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  }

  /** `/bytes` paced in 16 KiB slices so the stream lasts about size/rate seconds. */
  #slowBytes(res: ServerResponse, size: number, seed: string, rate: number): void {
    if (!Number.isSafeInteger(size) || size < 0) {
      json(res, 400, { error: 'size must be a whole number' });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    const block = patternBlock(seed);
    const slice = 16 * 1024;
    const started = Date.now();
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    const pump = (): void => {
      timer = undefined;
      // Catch up to where the rate says we should be, then wait for the next slice.
      const due = Math.min(size, Math.floor(((Date.now() - started) / 1000) * rate) + slice);
      while (sent < due) {
        const off = sent % BLOCK;
        const n = Math.min(due - sent, BLOCK - off);
        sent += n;
        if (!res.write(block.subarray(off, off + n))) {
          res.once('drain', pump);
          return;
        }
      }
      if (sent >= size) res.end();
      else timer = setTimeout(pump, Math.max(1, Math.ceil((slice / rate) * 1000)));
    };
    res.on('close', () => clearTimeout(timer));
    pump();
  }

  #echo(req: IncomingMessage, res: ServerResponse): void {
    const length = req.headers['content-length'];
    res.writeHead(200, { 'content-type': 'application/octet-stream', ...(length ? { 'content-length': length } : {}) });
    // pipeline, not pipe: a client that goes away must not leave the request stream behind.
    pipeline(req, res, () => undefined);
  }

  #upload(req: IncomingMessage, res: ServerResponse): void {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => json(res, 200, { bytes, sha256: hash.digest('hex') }));
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}
