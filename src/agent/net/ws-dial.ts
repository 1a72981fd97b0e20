/**
 * Opens a client WebSocket to the control plane (control or data connection)
 * and turns every way it can fail into a coded error an operator can act on.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import { randomFillSync } from 'node:crypto';
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { type Clock, systemClock } from '../clock.js';
import { safeOrigin } from './endpoints.js';
import { ErrorCodes, HandshakeRejectedError, RevdialError } from '../errors.js';
import { type ControlPlaneConnector, DirectConnector, connectError } from './connector.js';
import { TlsSettings } from './tls-context.js';

/** What every connection to the control plane shares: credentials, TLS, proxy. */
export interface ControlPlaneTransport {
  /** Called for each dial (at upgrade time), so a rotated token file is picked up by the next upgrade. */
  token: () => string;
  userAgent: string;
  /**
   * Where sockets come from (TLS, proxy, warm pool: connector.ts). Without
   * one, a direct connector is made once per transport from `ca` and
   * `rejectUnauthorized`.
   */
  connector?: ControlPlaneConnector | undefined;
  ca?: Buffer | undefined;
  rejectUnauthorized: boolean;
}

const defaultConnectors = new WeakMap<ControlPlaneTransport, ControlPlaneConnector>();

/** The transport's connector, or a direct one made once for it. */
export function connectorOf(transport: ControlPlaneTransport): ControlPlaneConnector {
  if (transport.connector) return transport.connector;
  let connector = defaultConnectors.get(transport);
  if (!connector) {
    connector = new DirectConnector({ tls: new TlsSettings({ ca: transport.ca, rejectUnauthorized: transport.rejectUnauthorized }) });
    defaultConnectors.set(transport, connector);
  }
  return connector;
}

export interface DialOptions {
  transport: ControlPlaneTransport;
  handshakeTimeoutMs: number;
  maxPayload: number;
  clock?: Clock;
  signal?: AbortSignal;
  /**
   * Pause the WebSocket the moment it opens, so no message is emitted before
   * the caller has attached its 'message' listener; the caller must `resume()`.
   * Without it, bytes the peer sends right behind the 101 (they may even share
   * its TCP segment) are emitted on the next tick, to no listener, and lost.
   */
  pauseOnOpen?: boolean;
  /** Ask the connector for a fresh socket, never a warm one (the retry after a stale warm socket). */
  fresh?: boolean;
}

/** How much of a refusal's body goes into the error (and the log). */
export const BODY_PREVIEW_BYTES = 256;

const MASK_POOL_BYTES = 8192;
const maskPool = Buffer.allocUnsafe(MASK_POOL_BYTES);
let maskOffset = MASK_POOL_BYTES;

/**
 * ws's own masking keys, drawn from a pool of random bytes the same way,
 * except that an all-zero key is drawn again: ws sends a frame with a zero
 * key unmasked by reference instead of copying it into the frame (sender.js
 * `frame()`). Only the control connection runs on ws now and it sends fresh
 * buffers, so nothing relies on that copy today; the rule stays so that no
 * caller can be surprised by it. One key in 2^32 is skipped: the keys stay
 * unpredictable. (test/unit/ws-behaviour.test.ts holds what the agent relies on in ws.)
 */
function generateMask(mask: Buffer): void {
  do {
    if (maskOffset === MASK_POOL_BYTES) {
      randomFillSync(maskPool);
      maskOffset = 0;
    }
    maskPool.copy(mask, 0, maskOffset, maskOffset + 4);
    maskOffset += 4;
  } while (mask.readUInt32BE(0) === 0);
}

export function dialWebSocket(url: URL, options: DialOptions): Promise<WebSocket> {
  const clock = options.clock ?? systemClock;
  const { signal, transport } = options;
  const where = safeOrigin(url);
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const connector = connectorOf(transport);
    // Cancels the connector when the dial settles first (timeout, abort).
    const connecting = new AbortController();
    // The socket came warm from the pool and nothing was heard on it yet: a
    // failure now means it was dead before use (see isStaleWarmSocket).
    let warmUnanswered = false;
    const ws = new WebSocket(url, {
      headers: {
        Authorization: `Bearer ${transport.token()}`,
        'User-Agent': transport.userAgent,
      },
      // No compression: ws's sender then frames every message synchronously.
      perMessageDeflate: false,
      generateMask,
      // A redirect could carry the Authorization header to another origin.
      followRedirects: false,
      maxPayload: options.maxPayload,
      // http.request takes an asynchronous createConnection (its callback form):
      // TLS, the proxy tunnel and warm sockets all come from the connector.
      createConnection: ((_opts: unknown, ready: (err: Error | null, socket?: Socket) => void): undefined => {
        connector.connect(url, connecting.signal, options.fresh ? { fresh: true } : undefined).then(
          ({ socket, warm }) => {
            warmUnanswered = warm;
            ready(null, socket);
          },
          (err: unknown) => ready(err instanceof Error ? err : new Error(String(err))),
        );
        return undefined;
      }) as unknown as WebSocket.ClientOptions['createConnection'],
    });
    let failure: unknown;

    const settle = (err: unknown): void => {
      clock.clearTimeout(timer);
      connecting.abort();
      signal?.removeEventListener('abort', onAbort);
      ws.removeListener('open', onOpen);
      ws.removeListener('unexpected-response', onUnexpectedResponse);
      if (err === undefined) {
        // Never hand out a socket without an 'error' listener: until its new
        // owner attaches one (or while a pick-up waits for the other leg), an
        // error from ws, e.g. an invalid frame parsed at close, would crash the process.
        ws.removeListener('error', onError);
        ws.on('error', ignoreError);
        resolve(ws);
        return;
      }
      failure ??= err;
      // Keep a listener: `terminate()` during the handshake emits one more 'error'.
      ws.terminate();
      reject(failure);
    };
    const onOpen = (): void => {
      warmUnanswered = false;
      // Synchronously, before ws starts reading on the next tick.
      if (options.pauseOnOpen) ws.pause();
      settle(undefined);
    };
    const onError = (err: Error & { code?: string }): void => {
      if (failure !== undefined) return;
      // Already coded and naming the right place (the egress proxy, see proxy.ts).
      if (err instanceof RevdialError) {
        settle(err);
        return;
      }
      if (warmUnanswered) {
        settle(
          new RevdialError(
            ErrorCodes.DATA_SOCKET_STALE,
            `warm connection to ${where} was closed before the upgrade was answered (${err.code ?? err.message})`,
            { cause: err },
          ),
        );
        return;
      }
      settle(connectError(url, err));
    };
    const onUnexpectedResponse = (req: ClientRequest, res: IncomingMessage): void => {
      warmUnanswered = false;
      readPreview(res, clock, (body) => {
        req.destroy();
        settle(rejection(where, url, res.statusCode ?? 0, body));
      });
    };
    const onAbort = (): void => settle(signal?.reason);
    const timer = clock.setTimeout(
      () =>
        settle(
          new RevdialError(
            ErrorCodes.HANDSHAKE_TIMEOUT,
            `control plane at ${where} did not complete the WebSocket handshake within ${options.handshakeTimeoutMs} ms`,
          ),
        ),
      options.handshakeTimeoutMs,
    );
    ws.on('error', onError);
    ws.once('open', onOpen);
    ws.once('unexpected-response', onUnexpectedResponse);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Errors after the hand-over are the new owner's to handle (bridge, session). */
function ignoreError(): void {
  /* the new owner's own 'error' listener reports them */
}

export function rejection(where: string, url: URL, status: number, body: string): HandshakeRejectedError {
  const said = body ? `: ${JSON.stringify(body)}` : '';
  if (status === 401 || status === 403) {
    return new HandshakeRejectedError(
      ErrorCodes.AUTH_REJECTED,
      `RUNNER_TOKEN rejected by ${where} (HTTP ${status})${said}: check the token and that it is valid for this runner id`,
      status,
      body,
    );
  }
  return new HandshakeRejectedError(
    ErrorCodes.HANDSHAKE_REJECTED,
    `control plane at ${where} refused the WebSocket upgrade for ${url.pathname} (HTTP ${status})${said}`,
    status,
    body,
  );
}

/** The first bytes of a refusal's body as one line of text. */
export function previewText(body: Buffer): string {
  return body.subarray(0, BODY_PREVIEW_BYTES).toString('utf8').replace(/\s+/g, ' ').trim();
}

/** Reads at most a short preview of an error body, never waiting long for it. */
function readPreview(res: IncomingMessage, clock: Clock, done: (body: string) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    clock.clearTimeout(timer);
    res.removeListener('data', onData);
    res.removeListener('end', finish);
    res.removeListener('error', finish);
    done(previewText(Buffer.concat(chunks)));
  };
  const onData = (chunk: Buffer): void => {
    chunks.push(chunk);
    size += chunk.length;
    if (size >= BODY_PREVIEW_BYTES) finish();
  };
  const timer = clock.setTimeout(finish, 1000);
  res.on('data', onData);
  res.once('end', finish);
  res.once('error', finish);
}
