/**
 * The local Wolf API: a TCP `host:port` or a unix socket. One dial per tunnel,
 * with its own time limit (the reference agent allows 5 s).
 */
import net from 'node:net';
import { type Clock, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError } from '../errors.js';
import { TCP_KEEPALIVE_DELAY_MS } from './connector.js';

export type LocalTarget = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/**
 * Accepts `host:port`, `[v6]:port`, `http://host:port`, `unix:///path`,
 * `unix:/path` and a bare absolute path. Throws a config error otherwise.
 */
export function parseLocalAddress(text: string): LocalTarget {
  const value = text.trim();
  if (value.startsWith('unix:')) {
    const path = value.replace(/^unix:(\/\/)?/, '');
    if (!path.startsWith('/')) throw badLocal(text, 'a unix socket needs an absolute path, e.g. unix:///var/run/wolf/wolf.sock');
    return { kind: 'unix', path };
  }
  if (value.startsWith('/')) return { kind: 'unix', path: value };
  let hostPort = value;
  if (/^https?:\/\//i.test(value)) {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw badLocal(text, 'not a valid URL');
    }
    if (url.protocol === 'https:') throw badLocal(text, 'Wolf serves plain HTTP locally; use http:// or host:port');
    if (url.pathname !== '/' || url.search) throw badLocal(text, 'give only the host and port, no path');
    hostPort = url.port ? url.host : `${url.host}:80`;
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s/]+):(\d{1,5})$/.exec(hostPort);
  if (!m) throw badLocal(text, 'expected host:port, http://host:port or unix:///path/to/wolf.sock');
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw badLocal(text, 'port must be 1-65535');
  const host = m[1]!.replace(/^\[|\]$/g, '');
  return { kind: 'tcp', host, port };
}

export function describeTarget(target: LocalTarget): string {
  if (target.kind === 'unix') return `unix://${target.path}`;
  return target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
}

function badLocal(text: string, why: string): RevdialError {
  return new RevdialError(ErrorCodes.CONFIG_INVALID, `invalid local Wolf address "${text}": ${why}`);
}

/** Errors after the hand-over are the bridge's to handle. */
function ignoreError(): void {
  /* the new owner's own 'error' listener reports them */
}

export interface LocalDialOptions {
  timeoutMs: number;
  clock?: Clock;
  signal?: AbortSignal;
  /**
   * Read into this buffer (shared by every socket that gets it) instead of a
   * fresh 64 KiB allocation per read: the bulk download path then allocates
   * once per chunk instead of twice. Each 'data' chunk is a view into the
   * buffer, valid only until the listener returns (the bridge hands it to
   * DataConnection.send, which masks it into a new frame before returning). The
   * socket is handed over paused, so nothing is read before a listener is
   * attached: call `resume()` once listening.
   */
  sharedReadBuffer?: Buffer;
}

/** Connects to the local target; rejects with a coded error after `timeoutMs`. */
export function dialLocal(target: LocalTarget, options: LocalDialOptions): Promise<net.Socket> {
  const clock = options.clock ?? systemClock;
  const { signal } = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const shared = options.sharedReadBuffer;
    const onread: net.OnReadOpts | undefined = shared
      ? {
          buffer: shared,
          callback: (n) => {
            socket.emit('data', shared.subarray(0, n));
            return true; // pause()/resume() still work: net stops and starts reading
          },
        }
      : undefined;
    const socket =
      target.kind === 'unix'
        ? net.connect({ path: target.path, ...(onread ? { onread } : {}) })
        : net.connect({
            host: target.host,
            port: target.port,
            noDelay: true,
            keepAlive: true,
            keepAliveInitialDelay: TCP_KEEPALIVE_DELAY_MS,
            ...(onread ? { onread } : {}),
          });
    if (shared) socket.pause();

    const settle = (err: unknown): void => {
      clock.clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeListener('connect', onConnect);
      socket.removeListener('error', onError);
      if (err === undefined) {
        // As for the data WebSocket: never hand out a socket without an 'error'
        // listener, or a reset while the pick-up waits would crash the process.
        socket.on('error', ignoreError);
        resolve(socket);
      } else {
        socket.destroy();
        // A coded error, or the abort signal's reason passed on as the caller gave it.
        // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
        reject(err);
      }
    };
    const onConnect = (): void => settle(undefined);
    const onError = (err: NodeJS.ErrnoException): void =>
      settle(
        new RevdialError(
          ErrorCodes.LOCAL_DIAL_FAILED,
          `local Wolf API at ${describeTarget(target)} unreachable (${err.code ?? err.message}): is Wolf running and is ${target.kind === 'unix' ? 'the socket path' : 'the address'} right?`,
          { cause: err },
        ),
      );
    const onAbort = (): void => settle(signal?.reason);
    const timer = clock.setTimeout(
      () =>
        settle(new RevdialError(ErrorCodes.LOCAL_DIAL_TIMEOUT, `local Wolf API at ${describeTarget(target)} did not accept within ${options.timeoutMs} ms`)),
      options.timeoutMs,
    );
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
