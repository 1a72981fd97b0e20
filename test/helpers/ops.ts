/**
 * Helpers for the operations tests: an observer whose hooks can be awaited,
 * a GET on loopback, and a reader for Prometheus text.
 */
import { EventEmitter } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import type { AgentObserver, TunnelResult } from '../../src/agent/control/supervisor.js';

/** An AgentObserver that emits each hook as an event, with `next(name)` to await one. */
export class ObserverEvents extends EventEmitter implements AgentObserver {
  controlConnected(): void {
    this.emit('controlConnected');
  }
  controlDisconnected(code: string): void {
    this.emit('controlDisconnected', code);
  }
  controlAttemptFailed(code: string): void {
    this.emit('controlAttemptFailed', code);
  }
  tunnelEnded(result: TunnelResult): void {
    this.emit('tunnelEnded', result);
  }

  /** The next emission of `name` (its first argument), or a rejection after `timeoutMs`. */
  next<T = unknown>(name: string, timeoutMs = 10_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeListener(name, on);
        reject(new Error(`no ${name} within ${timeoutMs} ms`));
      }, timeoutMs);
      const on = (value: T): void => {
        clearTimeout(timer);
        resolve(value);
      };
      this.once(name, on);
    });
  }
}

export async function get(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample in Prometheus text; `undefined` when absent. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (m?.[1] !== name) continue;
    const have = (m[2] ?? '').split(',').filter(Boolean).sort().join(',');
    if (have === want) return Number(m[3]);
  }
  return undefined;
}

/** A port that was free a moment ago (for programs that cannot listen on 0 and report it). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Resolves once something accepts TCP connections on the port (bounded: `timeoutMs`). */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A TCP relay in front of a server that can blackhole the path: stop
 * forwarding in both directions without closing, as a dead NAT or a pulled
 * cable does (frp's end-to-end suite does the same).
 */
export class BlackholeRelay {
  readonly server: net.Server;
  #blackholed = false;
  readonly #sockets = new Set<net.Socket>();

  constructor(target: { host: string; port: number }) {
    this.server = net.createServer((client) => {
      const upstream = net.connect(target);
      this.#sockets.add(client).add(upstream);
      const forward = (from: net.Socket, to: net.Socket): void => {
        from.on('data', (chunk: Buffer) => {
          if (!this.#blackholed) to.write(chunk);
        });
        from.on('close', () => to.destroy());
        from.on('error', () => to.destroy());
      };
      forward(client, upstream);
      forward(upstream, client);
    });
  }

  async listen(t: TestContext): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    t.after(() => this.close());
    return (this.server.address() as AddressInfo).port;
  }

  blackhole(): void {
    this.#blackholed = true;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
