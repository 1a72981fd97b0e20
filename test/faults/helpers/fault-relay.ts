/**
 * A TCP relay between the agent and the control plane that can inject the
 * faults real networks produce (frp's e2e suite has the same idea):
 *
 *   - pass through (default),
 *   - blackhole: stop forwarding in both directions but keep both sockets
 *     open, so neither end sees a FIN or RST (a genuine half-open path),
 *   - cut: drop one connection (FIN, or RST with `reset`),
 *   - latency: hold every chunk for `latencyMs` before forwarding it.
 *
 * Each relayed connection records the request line the agent sent, so a test
 * can tell the control connection (`?runnerid=`) from data connections
 * (`?revdial.dialer=`). Loopback only.
 */
import { EventEmitter } from 'node:events';
import net, { type AddressInfo } from 'node:net';

export interface RelayedConnection {
  readonly id: number;
  readonly openedAt: number;
  /** The agent's side. */
  readonly client: net.Socket;
  /** The control plane's side. */
  readonly upstream: net.Socket;
  /** First line the agent sent (`GET /api/v1/revdial?runnerid=... HTTP/1.1`), once seen. */
  requestLine: string | undefined;
  blackholed: boolean;
  closed: boolean;
  bytesUp: number;
  bytesDown: number;
}

/** Events: 'connection' (conn), 'request-line' (conn), 'close' (conn). */
export class FaultRelay extends EventEmitter {
  readonly server: net.Server;
  readonly connections: RelayedConnection[] = [];
  /** Added to every chunk in both directions; applies to chunks read from now on. */
  latencyMs = 0;
  /** When set, new connections are blackholed from their first byte. */
  blackholeNew = false;
  #seq = 0;
  #targetPort: number;
  readonly #targetHost: string;

  constructor(targetPort: number, targetHost = '127.0.0.1') {
    super();
    this.#targetPort = targetPort;
    this.#targetHost = targetHost;
    this.server = net.createServer(this.#onConnection);
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', reject);
        resolve();
      });
    });
    return (this.server.address() as AddressInfo).port;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** `http://127.0.0.1:<relay port>`: the agent's HELIX_API_URL. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Points new connections at another upstream port (a restarted control plane). */
  retarget(port: number): void {
    this.#targetPort = port;
  }

  /** Open connections whose request line matches. */
  open(match?: RegExp): RelayedConnection[] {
    return this.connections.filter((c) => !c.closed && (match === undefined || match.test(c.requestLine ?? '')));
  }

  /** Open control connections (`?runnerid=`). */
  control(): RelayedConnection[] {
    return this.open(/[?&]runnerid=/);
  }

  /** Open data connections (`?revdial.dialer=`). */
  data(): RelayedConnection[] {
    return this.open(/[?&]revdial\.dialer=/);
  }

  /** Stops forwarding on one connection; both sockets stay open. */
  blackhole(conn: RelayedConnection): void {
    conn.blackholed = true;
  }

  /** Drops one connection: FIN both ways, or RST with `reset`. */
  cut(conn: RelayedConnection, options: { reset?: boolean } = {}): void {
    conn.closed = true;
    if (options.reset) {
      conn.client.resetAndDestroy();
      conn.upstream.resetAndDestroy();
    } else {
      conn.client.destroy();
      conn.upstream.destroy();
    }
  }

  cutAll(options: { reset?: boolean } = {}): void {
    for (const c of this.open()) this.cut(c, options);
  }

  async close(): Promise<void> {
    this.cutAll();
    // Also the surviving end of a blackholed pair whose other end gave up.
    for (const c of this.connections) {
      c.client.destroy();
      c.upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #onConnection = (client: net.Socket): void => {
    const upstream = net.connect({ host: this.#targetHost, port: this.#targetPort, noDelay: true });
    client.setNoDelay(true);
    const conn: RelayedConnection = {
      id: ++this.#seq,
      openedAt: Date.now(),
      client,
      upstream,
      requestLine: undefined,
      blackholed: this.blackholeNew,
      closed: false,
      bytesUp: 0,
      bytesDown: 0,
    };
    this.connections.push(conn);
    let head = '';
    const onClose = (side: net.Socket): void => {
      if (!conn.closed) {
        conn.closed = true;
      }
      // A blackholed path carries no FIN or RST either: when one end gives up,
      // the other is left open, as behind a dead router (close() reaps it).
      if (conn.blackholed) {
        side.destroy();
      } else {
        client.destroy();
        upstream.destroy();
      }
      this.emit('close', conn);
    };
    // Errors end the pair; a relay never crashes the test process.
    client.on('error', () => onClose(client));
    upstream.on('error', () => onClose(upstream));
    client.once('close', () => onClose(client));
    upstream.once('close', () => onClose(upstream));
    this.#forward(conn, client, upstream, 'up', (chunk) => {
      if (conn.requestLine !== undefined) return;
      head += chunk.subarray(0, 2048).toString('latin1');
      const eol = head.indexOf('\r\n');
      if (eol !== -1 || head.length > 4096) {
        conn.requestLine = eol === -1 ? head : head.slice(0, eol);
        this.emit('request-line', conn);
      }
    });
    this.#forward(conn, upstream, client, 'down');
    this.emit('connection', conn);
  };

  /** Forwards `from` → `to` with backpressure, latency and the blackhole switch. */
  #forward(conn: RelayedConnection, from: net.Socket, to: net.Socket, dir: 'up' | 'down', peek?: (chunk: Buffer) => void): void {
    // Chunks wait here while latency applies, in order.
    const queue: { at: number; chunk: Buffer | null }[] = [];
    let timer: NodeJS.Timeout | undefined;
    const flush = (): void => {
      timer = undefined;
      const now = Date.now();
      // Everything due goes out in one write, as a delaying router would
      // deliver it: one segment the receiver reads at once.
      const due: Buffer[] = [];
      let end = false;
      while (queue.length > 0 && queue[0]!.at <= now) {
        const { chunk } = queue.shift()!;
        if (chunk === null) end = true;
        else due.push(chunk);
      }
      if (!conn.blackholed && !to.destroyed) {
        if (due.length > 0 && !to.write(due.length === 1 ? due[0]! : Buffer.concat(due))) {
          from.pause();
          to.once('drain', () => from.resume());
        }
        if (end) to.end();
      }
      if (queue.length > 0) timer = setTimeout(flush, queue[0]!.at - now);
    };
    from.on('data', (chunk: Buffer) => {
      peek?.(chunk);
      // A blackholed path swallows bytes, as a dead router would: nothing is
      // delivered and nothing is refused, so neither side's TCP notices.
      if (conn.blackholed) return;
      if (dir === 'up') conn.bytesUp += chunk.length;
      else conn.bytesDown += chunk.length;
      if (this.latencyMs <= 0 && queue.length === 0) {
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
        return;
      }
      queue.push({ at: Date.now() + this.latencyMs, chunk });
      timer ??= setTimeout(flush, this.latencyMs);
    });
    from.on('end', () => {
      if (conn.blackholed) return;
      if (queue.length === 0) to.end();
      else queue.push({ at: Date.now() + this.latencyMs, chunk: null });
    });
    from.once('close', () => {
      if (timer) clearTimeout(timer);
    });
  }
}
