/**
 * The control plane's side of RevDial, written from PROTOCOL.md: accepts
 * control WebSockets at `[/base]/api/v1/revdial?runnerid=...`, keeps one
 * Dialer per runner id (last wins), accepts data WebSockets for them, and
 * offers `dial` / `request` to reach a runner's Wolf API through its agent.
 *
 * The tests and the demo use it; operators can run it to try an agent
 * locally (`node build/dev/control-plane/main.js`).
 */
import { EventEmitter } from 'node:events';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { WebSocketServer } from 'ws';
import { type Clock, systemClock } from '../../src/agent/clock.js';
import { DialError, Dialer } from './dialer.js';

export interface ControlPlaneOptions {
  /** Decides whether a bearer token may act as a runner id. */
  authorize: (token: string, runnerId: string | null) => boolean;
  basePath?: string;
  keepAliveIdleMs?: number;
  pingIntervalMs?: number;
  /** How long `dial` waits for the agent's data connection. */
  pickupTimeoutMs?: number;
  /** How long `dial` waits for a runner that is not connected (reconnect grace). */
  graceMs?: number;
  legacyConnPath?: boolean;
  /** Serve https/wss with this key and certificate (PEM). */
  tls?: { key: Buffer | string; cert: Buffer | string };
  clock?: Clock;
}

export type RouteHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

export interface TunnelRequest {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | Readable;
}

/**
 * Events: 'dialer' (dialer) when a runner connects, 'dialer-closed' (dialer),
 * 'protocol-error' (runnerId, reason), 'pickup-failed' (runnerId, connPath, err),
 * 'rejected' (status, reason) for refused upgrades.
 */
export class ControlPlane extends EventEmitter {
  readonly server: http.Server;
  readonly #wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024 });
  readonly #options: Required<Omit<ControlPlaneOptions, 'tls'>>;
  readonly #scheme: 'http' | 'https';
  readonly #byRunner = new Map<string, Dialer>();
  readonly #byId = new Map<string, Dialer>();
  readonly #routes: { method: string; prefix: string; handler: RouteHandler }[] = [];
  readonly #revdialPath: string;

  constructor(options: ControlPlaneOptions) {
    super();
    this.#options = {
      basePath: '',
      keepAliveIdleMs: 18_000,
      pingIntervalMs: 15_000,
      pickupTimeoutMs: 20_000,
      graceMs: 5_000,
      legacyConnPath: false,
      clock: systemClock,
      ...options,
    };
    this.#revdialPath = `${this.#options.basePath.replace(/\/+$/, '')}/api/v1/revdial`;
    this.#scheme = options.tls ? 'https' : 'http';
    this.server = options.tls ? https.createServer(options.tls, this.#onRequest) : http.createServer(this.#onRequest);
    this.server.on('upgrade', this.#onUpgrade);
  }

  /** A control plane that accepts exactly one token, for any runner id. */
  static withToken(token: string, options: Omit<ControlPlaneOptions, 'authorize'> = {}): ControlPlane {
    return new ControlPlane({ ...options, authorize: (t) => t === token });
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', reject);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  /** `http(s)://host:port[/base]`: what an agent's HELIX_API_URL should be. */
  get url(): string {
    const a = this.server.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.#scheme}://${host}:${a.port}${this.#options.basePath}`;
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    for (const client of this.#wss.clients) client.terminate();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** The live dialer for a runner, if connected. */
  dialer(runnerId: string): Dialer | undefined {
    const d = this.#byRunner.get(runnerId);
    return d && !d.closed ? d : undefined;
  }

  /** Waits until a runner is connected (or `timeoutMs` passes). */
  waitForRunner(runnerId: string, timeoutMs: number, signal?: AbortSignal): Promise<Dialer> {
    const live = this.dialer(runnerId);
    if (live) return Promise.resolve(live);
    const clock = this.#options.clock;
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clock.clearTimeout(timer);
        this.removeListener('dialer', onDialer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onDialer = (d: Dialer): void => {
        if (d.runnerId !== runnerId) return;
        done();
        resolve(d);
      };
      const onAbort = (): void => {
        done();
        reject(new DialError('ABORTED', 'wait aborted'));
      };
      const timer = clock.setTimeout(() => {
        done();
        reject(new DialError('DIALER_CLOSED', `runner ${runnerId} is not connected`));
      }, timeoutMs);
      this.on('dialer', onDialer);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Opens a data connection to a runner's Wolf API, waiting out a short reconnect. */
  async dial(runnerId: string, signal?: AbortSignal): Promise<Duplex> {
    const dialer = await this.waitForRunner(runnerId, this.#options.graceMs, signal);
    return dialer.dial(this.#options.pickupTimeoutMs, signal);
  }

  /** Sends one HTTP request to a runner's Wolf API through a fresh tunnel. */
  async request(runnerId: string, request: TunnelRequest, signal?: AbortSignal): Promise<IncomingMessage> {
    const stream = await this.dial(runnerId, signal);
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { host: 'wolf', ...request.headers };
      if (Buffer.isBuffer(request.body)) headers['content-length'] = String(request.body.length);
      const req = http.request({
        method: request.method ?? 'GET',
        path: request.path,
        headers,
        createConnection: () => stream,
        ...(signal ? { signal } : {}),
      });
      req.once('response', resolve);
      req.once('error', (err) => {
        stream.destroy();
        reject(err);
      });
      if (request.body === undefined) req.end();
      else if (Buffer.isBuffer(request.body)) writeInSlices(req, request.body);
      else request.body.pipe(req);
    });
  }

  /** Adds an HTTP route (e.g. the Wolf registry) beside the RevDial endpoint. */
  route(method: string, prefix: string, handler: RouteHandler): void {
    this.#routes.push({ method, prefix: `${this.#options.basePath}${prefix}`, handler });
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://control-plane');
    const route = this.#routes.find((r) => r.method === req.method && url.pathname.startsWith(r.prefix));
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('404 page not found\n');
      return;
    }
    Promise.resolve(route.handler(req, res, url)).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(err) }));
    });
  };

  #onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', () => undefined);
    const url = new URL(req.url ?? '/', 'http://control-plane');
    if (url.pathname !== this.#revdialPath) {
      this.#reject(socket, 404, 'text/plain', '404 page not found\n');
      return;
    }
    const runnerId = url.searchParams.get('runnerid');
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (!auth?.[1] || !this.#options.authorize(auth[1], runnerId)) {
      this.#reject(socket, 401, 'text/plain', 'authentication required');
      return;
    }
    const dialerId = url.searchParams.get('revdial.dialer');
    if (dialerId !== null) {
      const dialer = this.#byId.get(dialerId);
      if (!dialer || dialer.closed) {
        this.#reject(socket, 500, 'application/json', JSON.stringify({ error: 'revdial: unknown dialer' }));
        return;
      }
      const reqId = url.searchParams.get('revdial.req');
      this.#wss.handleUpgrade(req, socket, head, (ws) => dialer.acceptData(ws, reqId));
      return;
    }
    if (!runnerId) {
      this.#reject(socket, 400, 'text/plain', 'runnerid is required');
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      const dialer = new Dialer(ws, runnerId, {
        keepAliveIdleMs: this.#options.keepAliveIdleMs,
        pingIntervalMs: this.#options.pingIntervalMs,
        legacyConnPath: this.#options.legacyConnPath,
        clock: this.#options.clock,
      });
      // Last wins: the older connection stays open but is never dialed again.
      this.#byRunner.set(runnerId, dialer);
      this.#byId.set(dialer.id, dialer);
      dialer.on('protocol-error', (reason: string) => this.emit('protocol-error', runnerId, reason));
      dialer.on('pickup-failed', (connPath: string, err: string) => this.emit('pickup-failed', runnerId, connPath, err));
      dialer.once('close', () => {
        this.#byId.delete(dialer.id);
        if (this.#byRunner.get(runnerId) === dialer) this.#byRunner.delete(runnerId);
        this.emit('dialer-closed', dialer);
      });
      this.emit('dialer', dialer);
    });
  };

  #reject(socket: Duplex, status: number, type: string, body: string): void {
    this.emit('rejected', status, body);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nContent-Type: ${type}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
}

/**
 * Writes a body in 32 KiB slices, as the Go control plane's io.Copy does, so
 * each becomes one WebSocket message rather than one message for the whole body.
 */
function writeInSlices(req: http.ClientRequest, body: Buffer): void {
  const SLICE = 32 * 1024;
  let offset = 0;
  const pump = (): void => {
    while (offset < body.length) {
      const slice = body.subarray(offset, offset + SLICE);
      offset += slice.length;
      if (!req.write(slice)) {
        req.once('drain', pump);
        return;
      }
    }
    req.end();
  };
  pump();
}
