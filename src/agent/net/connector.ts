/**
 * The transport under every WebSocket to the control plane: a connected
 * socket to its origin (TCP, or TLS verified with the handshake done),
 * through the egress proxy when one applies. The WebSocket upgrade runs on
 * top, so the token is read per upgrade, never here.
 *
 * `DirectConnector` dials; `PreconnectPool` (preconnect.ts) keeps a few of its
 * sockets ready and hands those out first.
 */
import { type Socket, connect as netConnect } from 'node:net';
import { type TLSSocket, connect as tlsConnect } from 'node:tls';
import { ErrorCodes, RevdialError } from '../errors.js';
import { safeOrigin } from './endpoints.js';
import type { EgressProxy } from './proxy.js';
import type { TlsSettings } from './tls-context.js';

/**
 * TCP keep-alive probes start after this long idle on every socket the agent
 * holds (control plane and local Wolf); the kernel's default is 2 hours.
 */
export const TCP_KEEPALIVE_DELAY_MS = 30_000;

export interface ConnectResult {
  socket: Socket;
  /** It came from the preconnect pool: it may turn out dead at use (see `isStaleWarmSocket`). */
  warm: boolean;
}

export interface ControlPlaneConnector {
  /**
   * A connected socket to the control plane's origin (TCP, or TLS verified,
   * handshake done), through the egress proxy when one applies. `warm` says
   * it came from the preconnect pool (it may turn out dead at use: the caller
   * then retries once with `{ fresh: true }`).
   */
  connect(url: URL, signal: AbortSignal, opts?: { fresh?: boolean }): Promise<ConnectResult>;
}

/**
 * The data connection's first exchange failed because the socket was already
 * dead (the peer or a middlebox dropped it while it sat warm): no answer came
 * at all. On a warm socket that is retried once on a fresh one; the request
 * the control plane is waiting on never sees it.
 */
export function isStaleWarmSocket(err: unknown): boolean {
  return err instanceof RevdialError && err.code === ErrorCodes.DATA_SOCKET_STALE;
}

/** Certificate verification failures from Node's TLS layer (OpenSSL's codes and Node's ERR_TLS_*). */
export function isCertificateError(err: { code?: string }): boolean {
  const code = err.code ?? '';
  return /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code) || code.startsWith('ERR_TLS_CERT');
}

export interface DirectConnectorOptions {
  /** TLS for wss/https targets; one instance shared by every connection. */
  tls: TlsSettings;
  /** The egress decision; `undefined` dials directly. */
  proxy?: EgressProxy | undefined;
}

/** `host` (brackets stripped from IPv6) and port of a ws/wss/http/https URL. */
export function targetOf(url: URL): { host: string; port: number; secure: boolean } {
  const secure = url.protocol === 'wss:' || url.protocol === 'https:';
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return { host, port: Number(url.port || (secure ? 443 : 80)), secure };
}

export class DirectConnector implements ControlPlaneConnector {
  readonly #tls: TlsSettings;
  readonly #proxy: EgressProxy | undefined;

  constructor(options: DirectConnectorOptions) {
    this.#tls = options.tls;
    this.#proxy = options.proxy;
  }

  get tls(): TlsSettings {
    return this.#tls;
  }

  async connect(url: URL, signal: AbortSignal): Promise<ConnectResult> {
    signal.throwIfAborted();
    const target = targetOf(url);
    // Through the proxy: a CONNECT tunnel first (errors already name the proxy).
    const tunnel = this.#proxy?.proxyFor(url) ? await this.#proxy.tunnel(url, signal) : undefined;
    try {
      const socket = target.secure
        ? await this.#tlsConnect(url, target.host, target.port, tunnel, signal)
        : await plainConnect(url, target.host, target.port, tunnel, signal);
      socket.setNoDelay(true);
      // A peer that vanished without FIN or RST (a rebooted NAT, a dead host) is
      // found by the kernel, not left to the 2-hour default.
      socket.setKeepAlive(true, TCP_KEEPALIVE_DELAY_MS);
      return { socket, warm: false };
    } catch (err) {
      tunnel?.destroy();
      throw err;
    }
  }

  #tlsConnect(url: URL, host: string, port: number, tunnel: Socket | undefined, signal: AbortSignal): Promise<TLSSocket> {
    const tls = this.#tls;
    const options = tls.connectOptions(host, port);
    const offered = options.session !== undefined;
    const socket = tlsConnect(tunnel ? { ...options, socket: tunnel } : options);
    // Every ticket the server sends replaces the last: the next connection offers the newest.
    socket.on('session', (session: Buffer) => tls.rememberSession(host, port, session));
    return settleConnect(socket, 'secureConnect', signal, (err) => {
      // A session the server will not take makes it fall back to a full
      // handshake, not fail; still, a handshake that failed with one offered
      // must not keep offering it.
      if (offered) tls.forgetSession(host, port);
      return connectError(url, err);
    });
  }
}

function plainConnect(url: URL, host: string, port: number, tunnel: Socket | undefined, signal: AbortSignal): Promise<Socket> {
  if (tunnel) return Promise.resolve(tunnel);
  return settleConnect(netConnect({ host, port }), 'connect', signal, (err) => connectError(url, err));
}

/**
 * Resolves with `socket` on `event`, or rejects with `onError`'s coded error
 * (or the abort reason) and destroys it; every listener it added is removed
 * on either path.
 */
function settleConnect<S extends Socket>(
  socket: S,
  event: 'connect' | 'secureConnect',
  signal: AbortSignal,
  onError: (err: NodeJS.ErrnoException) => Error,
): Promise<S> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | undefined): void => {
      socket.removeListener(event, onReady);
      socket.removeListener('error', onSocketError);
      signal.removeEventListener('abort', onAbort);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onReady = (): void => done(undefined);
    const onSocketError = (err: NodeJS.ErrnoException): void => done(onError(err));
    const onAbort = (): void => done(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
    socket.once(event, onReady);
    socket.on('error', onSocketError);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** A TCP or TLS failure as the operator should read it. */
export function connectError(url: URL, err: NodeJS.ErrnoException): RevdialError {
  if (err instanceof RevdialError) return err;
  const where = safeOrigin(url);
  if (isCertificateError(err)) {
    return new RevdialError(
      ErrorCodes.TLS_UNTRUSTED,
      `control plane at ${where} presented a certificate this agent does not trust (${err.code}: ${err.message}): for a private CA set --ca-file / REVDIAL_CA_FILE; check the host name in HELIX_API_URL`,
      { cause: err },
    );
  }
  return new RevdialError(
    ErrorCodes.CONNECT_FAILED,
    `cannot reach control plane at ${where} (${err.code ?? err.message}): check HELIX_API_URL, DNS, TLS and the network path`,
    { cause: err },
  );
}
