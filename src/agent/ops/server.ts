/**
 * The operations server (`--metrics-addr`, default 127.0.0.1:9464):
 *
 *   GET /healthz  200 while the process works: answering at all means the
 *                 event loop turns; the body reports its current lag.
 *   GET /readyz   200 only while a control connection is up, else 503 with
 *                 {"ready":false,"reason":"..."}. It follows the control
 *                 connection's state: a closed or reset connection flips it at
 *                 once, a blackholed path once --ping-timeout passes without a
 *                 frame or pong.
 *   GET /metrics  Prometheus text (metrics.ts).
 *
 * With no address given, several agents share a host (one per Wolf, one per
 * GPU): the default port 9464 taken, the next free one of 9464-9473 is used
 * (as cloudflared does for its metrics port), and the address served is
 * logged in one line. An address set explicitly fails loudly instead: a port
 * in use is then a coded startup error naming the address and the variable
 * to change, never a silently missing or moved endpoint.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { ErrorCodes, RevdialError } from '../errors.js';

// Not `import http from 'node:http'`: importing a built-in from an ES module
// builds its ES module facade, which reads every export, and http's lazy
// WebSocket, CloseEvent and MessageEvent getters then load Node's bundled
// undici: ~3 MiB of an idle agent's RSS (issue 6) for classes it never uses.
// getBuiltinModule hands over the plain exports, as `require` does (and as
// the packaged bundle, which is CommonJS, always did). The same cost shows
// as time in https://github.com/nodejs/node/issues/59686.
const http = process.getBuiltinModule('node:http');

export interface ListenAddress {
  host: string;
  port: number;
}

export const METRICS_ADDR_ENV = 'REVDIAL_METRICS_ADDR';

/** The default address, and how many ports from it are tried when it is taken (9464-9473). */
export const DEFAULT_METRICS_ADDR: ListenAddress = { host: '127.0.0.1', port: 9464 };
export const DEFAULT_METRICS_PORTS = 10;

/**
 * `host:port`, `[v6]:port`, or `:port` (every interface). Throws a plain
 * Error with the reason; config.ts turns it into a flag error.
 */
export function parseListenAddress(text: string): ListenAddress {
  const value = text.trim();
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s/]*):(\d{1,5})$/.exec(value);
  if (!m) throw new Error('expected host:port (e.g. 127.0.0.1:9464 or 0.0.0.0:9464), or off');
  const port = Number(m[2]);
  if (port > 65535) throw new Error('port must be 0-65535');
  const host = m[1] === '' ? '0.0.0.0' : m[1]!.replace(/^\[|\]$/g, '');
  return { host, port };
}

export function formatListenAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export interface Readiness {
  ready: boolean;
  reason?: string;
  /** Shown in /readyz's body; never changes its status (e.g. the registry heartbeat). */
  registry?: unknown;
  /** Shown in /readyz's body: which agent answers (`doctor` looks for its own runner id there). */
  runnerId?: string;
}

export interface OpsServerOptions {
  address: ListenAddress;
  /** Ports tried, from `address.port` up, while each is in use (1: that port only). */
  ports?: number;
  /** Asked on every /readyz. */
  readiness: () => Readiness;
  /** Renders /metrics. */
  metrics: () => Promise<{ contentType: string; body: string }>;
  log: Logger;
}

export class OpsServer {
  readonly server: Server;
  readonly #options: OpsServerOptions;
  readonly #loopDelay = monitorEventLoopDelay({ resolution: 20 });

  constructor(options: OpsServerOptions) {
    this.#options = options;
    this.server = http.createServer(this.#onRequest);
    // Probes are short; a scraper or probe that stalls must not hold a socket.
    this.server.requestTimeout = 10_000;
    this.server.headersTimeout = 5_000;
    this.server.keepAliveTimeout = 5_000;
  }

  /**
   * Listens on the address, or on the next port of the range while each is in
   * use; rejects with REVDIAL_OPS_LISTEN_FAILED (every port in use, bad host, ...).
   */
  async listen(): Promise<AddressInfo> {
    const { host, port } = this.#options.address;
    const ports = port === 0 ? 1 : Math.max(1, Math.min(this.#options.ports ?? 1, 65536 - port));
    for (let i = 0; ; i++) {
      try {
        await this.#listenOn(host, port + i);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EADDRINUSE' && i + 1 < ports) continue;
        const where = ports > 1 ? `${formatListenAddress({ host, port })}-${port + ports - 1}` : formatListenAddress({ host, port });
        const why = code === 'EADDRINUSE' ? (ports > 1 ? 'every port is in use' : 'the port is already in use') : (code ?? (err as Error).message);
        throw new RevdialError(
          ErrorCodes.OPS_LISTEN_FAILED,
          `cannot serve /healthz, /readyz and /metrics on ${where} (${why}): set ${METRICS_ADDR_ENV} or --metrics-addr to a free host:port, or to off`,
          { cause: err },
        );
      }
    }
    this.server.on('error', (err) => this.#options.log.warn({ err }, 'operations server error'));
    this.#loopDelay.enable();
    return this.server.address() as AddressInfo;
  }

  #listenOn(host: string, port: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      // Both listeners go on either outcome: a range of tries must not pile them up.
      const onError = (err: Error): void => {
        this.server.removeListener('listening', onListening);
        reject(err);
      };
      const onListening = (): void => {
        this.server.removeListener('error', onError);
        resolve();
      };
      this.server.once('error', onError);
      this.server.once('listening', onListening);
      this.server.listen(port, host);
    });
  }

  async close(): Promise<void> {
    this.#loopDelay.disable();
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(res, 405, 'application/json', JSON.stringify({ error: 'method not allowed' }), { allow: 'GET, HEAD' });
      return;
    }
    switch (path) {
      case '/healthz': {
        const lagMs = Math.round(this.#loopDelay.max / 1e6);
        this.#loopDelay.reset();
        send(res, 200, 'application/json', JSON.stringify({ status: 'ok', eventLoopMaxLagMs: lagMs }));
        return;
      }
      case '/readyz': {
        const r = this.#options.readiness();
        const body = {
          ...(r.ready ? { ready: true } : { ready: false, reason: r.reason ?? 'not ready' }),
          ...(r.registry !== undefined ? { registry: r.registry } : {}),
          ...(r.runnerId !== undefined ? { runnerId: r.runnerId } : {}),
        };
        send(res, r.ready ? 200 : 503, 'application/json', JSON.stringify(body));
        return;
      }
      case '/metrics':
        this.#options.metrics().then(
          ({ contentType, body }) => send(res, 200, contentType, body),
          (err: unknown) => {
            this.#options.log.warn({ err }, 'cannot render metrics');
            send(res, 500, 'text/plain', 'cannot render metrics\n');
          },
        );
        return;
      default:
        send(res, 404, 'application/json', JSON.stringify({ error: 'not found', paths: ['/healthz', '/readyz', '/metrics'] }));
    }
  };
}

function send(res: ServerResponse, status: number, type: string, body: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, {
    'content-type': type,
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    ...extra,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
