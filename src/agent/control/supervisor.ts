/**
 * The agent: keeps one control session alive (reconnecting with exponential
 * backoff and jitter), answers each `conn-ready` with a tunnel, enforces the
 * tunnel limit, and drains on shutdown.
 *
 * Request path: ControlSession emits conn-ready → #onConnReady checks limits
 * and the connPath → #runTunnel picks up both ends (tunnel.ts) → bridge.ts
 * pipes them → the outcome is counted and logged.
 */
import pRetry, { AbortError, type RetryContext } from 'p-retry';
import type { Logger } from 'pino';
import type { Bridge, Direction } from '../tunnel/bridge.js';
import { type Clock, sleep, systemClock } from '../clock.js';
import { ControlSession } from './session.js';
import { controlUrl, dataUrl, safeOrigin } from '../net/endpoints.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import { DEFAULT_MAX_LINE_BYTES } from './framing.js';
import { type LocalTarget, describeTarget, dialLocal } from '../net/local-dialer.js';
import { PickupError, type PickupTiming, type TunnelOptions, type TunnelOutcome, pickUp, pickupReason, startBridge } from '../tunnel/pickup.js';
import { type ControlPlaneTransport, connectorOf, dialWebSocket } from '../net/ws-dial.js';
import { dialDataConnection } from '../tunnel/data-connection.js';

/** Warm connections ahead of need (net/preconnect.ts): kept only while the control connection is up. */
export interface WarmConnections {
  start(url: URL): void;
  stop(): void;
  close(): void;
}

/** Every value `tunnelEnded` reports: a small fixed set, fit for a metric label. */
export type TunnelResult =
  TunnelOutcome['result'] | 'refused_limit' | 'refused_shutdown' | 'invalid_conn_path' | 'local_dial_failed' | 'data_dial_failed' | 'pickup_timeout';

/** Hooks for metrics and tests; every method is optional and must not throw. */
export interface AgentObserver {
  controlConnected?(): void;
  /** `code` is a stable error code (REVDIAL_PING_TIMEOUT, ...). */
  controlDisconnected?(code: string): void;
  controlAttemptFailed?(code: string, attempt: number, retryInMs: number): void;
  tunnelStarted?(): void;
  tunnelSetUp?(timing: PickupTiming): void;
  tunnelEnded?(result: TunnelResult): void;
  bytes?(direction: Direction, count: number): void;
}

export interface AgentOptions {
  apiUrl: URL;
  runnerId: string;
  local: LocalTarget;
  transport: ControlPlaneTransport;
  log: Logger;
  /** The longest wait between reconnect attempts (`--reconnect`). */
  reconnectMaxMs: number;
  /** The first retry waits between this and twice this. */
  reconnectMinMs?: number;
  /** A connection up this long resets the backoff. */
  stableAfterMs?: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  handshakeTimeoutMs?: number;
  pickupTimeoutMs: number;
  localDialTimeoutMs: number;
  maxTunnels: number;
  closeBackstopMs?: number;
  maxLineBytes?: number;
  clock?: Clock;
  observer?: AgentObserver;
  /** The pool behind `transport.connector`, told when the control connection comes and goes. */
  preconnect?: WarmConnections | undefined;
}

interface TunnelHandle {
  readonly cancel: AbortController;
  bridge?: Bridge;
}

const CONTROL_MAX_PAYLOAD = 1024 * 1024;

export class Agent {
  readonly #o: Required<Omit<AgentOptions, 'observer' | 'preconnect'>> & { observer: AgentObserver };
  readonly #preconnect: WarmConnections | undefined;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #controlUrl: URL;
  readonly #stop = new AbortController();
  readonly #tunnels = new Set<TunnelHandle>();
  #session: ControlSession | undefined;
  #running: Promise<void> | undefined;
  #draining = false;
  #drained: (() => void) | undefined;
  /** The same for every tunnel, so built once. */
  readonly #tunnelOptions: TunnelOptions;
  #shutdown: Promise<{ cut: number }> | undefined;
  #disconnectedSince: number;
  #tunnelSeq = 0;
  /**
   * What every local socket reads into: one buffer, not one per read (see
   * dialLocal). 256 KiB rather than Node's 64 KiB: a bulk download from Wolf
   * then takes a quarter of the reads and WebSocket frames (measured with
   * `npm run bench`: 1.54 → 1.28 agent CPU-s per GiB, 326 → 366 MiB/s).
   */
  readonly #readBuffer = Buffer.allocUnsafe(256 * 1024);
  #lastLimitWarning = -Infinity;
  #refusedSinceWarning = 0;

  constructor(options: AgentOptions) {
    const reconnectMaxMs = options.reconnectMaxMs;
    this.#o = {
      // Half the cap at most: p-retry draws the first wait from [min, 2*min]
      // and clips it to the cap, so min == cap gave every agent exactly the
      // cap (no jitter: a fleet dropped together came back together).
      reconnectMinMs: Math.min(500, reconnectMaxMs / 2),
      stableAfterMs: 10_000,
      handshakeTimeoutMs: 10_000,
      closeBackstopMs: 5_000,
      maxLineBytes: DEFAULT_MAX_LINE_BYTES,
      clock: systemClock,
      ...options,
      observer: options.observer ?? {},
    };
    this.#log = options.log;
    this.#preconnect = options.preconnect;
    this.#clock = this.#o.clock;
    this.#controlUrl = controlUrl(options.apiUrl, options.runnerId);
    const observer = this.#o.observer;
    this.#tunnelOptions = {
      pickupTimeoutMs: this.#o.pickupTimeoutMs,
      closeBackstopMs: this.#o.closeBackstopMs,
      clock: this.#clock,
      ...(observer.bytes ? { onBytes: observer.bytes.bind(observer) } : {}),
    };
    this.#disconnectedSince = this.#clock.now();
  }

  /** True while a control connection is up. */
  get connected(): boolean {
    return this.#session?.isOpen ?? false;
  }

  /** When the control connection was last lost (or the agent started), epoch ms. */
  get disconnectedSince(): number {
    return this.#disconnectedSince;
  }

  get activeTunnels(): number {
    return this.#tunnels.size;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** Starts the reconnect loop; it runs until `shutdown`. */
  start(): void {
    this.#running ??= this.#run();
  }

  /**
   * Refuses new tunnels, closes the control connection, waits up to
   * `graceMs` for open tunnels, then cuts what is left. Resolves with how
   * many tunnels had to be cut.
   */
  shutdown(graceMs: number): Promise<{ cut: number }> {
    // Once: a second call (a second signal, a test's cleanup) gets the same drain.
    this.#shutdown ??= this.#drain(graceMs);
    return this.#shutdown;
  }

  async #drain(graceMs: number): Promise<{ cut: number }> {
    this.#draining = true;
    const reason = new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down');
    this.#stop.abort(reason);
    this.#preconnect?.close();
    this.#session?.close(reason);
    let cut = 0;
    if (this.#tunnels.size > 0) {
      this.#log.info({ tunnels: this.#tunnels.size, graceMs }, 'Draining open tunnels');
      const drained = new Promise<void>((resolve) => {
        this.#drained = resolve;
      });
      const grace = new AbortController();
      await Promise.race([drained, sleep(this.#clock, graceMs, grace.signal).catch(() => undefined)]);
      grace.abort();
      cut = this.#tunnels.size;
      if (cut > 0) {
        this.#log.warn({ tunnels: cut }, 'Grace period over; closing the tunnels still open');
        const reason = new RevdialError(ErrorCodes.SHUTTING_DOWN, 'grace period over');
        for (const t of this.#tunnels) {
          t.cancel.abort(reason);
          t.bridge?.abort(reason);
        }
        if (this.#tunnels.size > 0) await drained;
      }
    }
    await this.#running;
    return { cut };
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      let delay: number;
      try {
        await pRetry(this.#attempt, {
          retries: Infinity,
          factor: 2,
          minTimeout: this.#o.reconnectMinMs,
          maxTimeout: this.#o.reconnectMaxMs,
          randomize: true,
          signal,
          onFailedAttempt: this.#onFailedAttempt,
        });
        // A connection that stayed up ended: start over, after a short jittered pause
        // so that agents dropped together do not come back together.
        delay = this.#o.reconnectMinMs * (1 + Math.random());
      } catch (err) {
        // The signal may have aborted while pRetry waited; the type checker cannot see that.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (signal.aborted) break;
        delay = this.#o.reconnectMaxMs;
        if (codeOf(err) === ErrorCodes.AUTH_REJECTED) {
          this.#log.error({ code: codeOf(err), retryInMs: delay }, describe(err, 400));
        } else {
          this.#log.error({ code: codeOf(err), retryInMs: delay, err }, 'unexpected failure in the reconnect loop');
        }
        this.#o.observer.controlAttemptFailed?.(codeOf(err), 0, delay);
      }
      try {
        await sleep(this.#clock, delay, signal);
      } catch {
        break;
      }
    }
  }

  /** One connection, start to end. Returns when a stable connection ended. */
  #attempt = async (): Promise<void> => {
    let ws;
    try {
      ws = await dialWebSocket(this.#controlUrl, {
        transport: this.#o.transport,
        handshakeTimeoutMs: this.#o.handshakeTimeoutMs,
        maxPayload: CONTROL_MAX_PAYLOAD,
        clock: this.#clock,
        signal: this.#stop.signal,
        // The plane sends keep-alive, and conn-ready for requests it queued
        // while we were away, the moment we connect: hold them until the
        // session listens (see DialOptions.pauseOnOpen).
        pauseOnOpen: true,
        // Never a warm socket: the pool fills only once this connection is up.
        fresh: true,
      });
    } catch (err) {
      // Tokens get rotated: an auth failure is retried, but at the slowest pace.
      if (codeOf(err) === ErrorCodes.AUTH_REJECTED) throw new AbortError(err as Error);
      throw err;
    }
    const session = new ControlSession(ws, {
      pingIntervalMs: this.#o.pingIntervalMs,
      pingTimeoutMs: this.#o.pingTimeoutMs,
      maxLineBytes: this.#o.maxLineBytes,
      closeBackstopMs: this.#o.closeBackstopMs,
      clock: this.#clock,
      log: this.#log,
      onConnReady: this.#onConnReady,
    });
    ws.resume();
    this.#session = session;
    if (this.#stop.signal.aborted) {
      session.close(this.#stop.signal.reason as RevdialError);
    } else {
      this.#log.info({ controlPlane: safeOrigin(this.#controlUrl), runnerId: this.#o.runnerId }, 'Connected to control plane via RevDial');
      this.#log.info(
        { local: describeTarget(this.#o.local) },
        `RevDial listener ready, proxying connections to local Wolf API at ${describeTarget(this.#o.local)}`,
      );
      this.#o.observer.controlConnected?.();
      this.#preconnect?.start(this.#controlUrl);
    }

    const end = await session.closed;
    this.#preconnect?.stop();
    this.#session = undefined;
    this.#disconnectedSince = this.#clock.now();
    this.#o.observer.controlDisconnected?.(end.error.code);
    if (this.#stop.signal.aborted) {
      this.#log.info('Control connection closed');
      return;
    }
    this.#log.warn({ code: end.error.code, uptimeMs: end.uptimeMs, tunnels: this.#tunnels.size }, `Control connection lost: ${end.error.message}`);
    if (end.uptimeMs >= this.#o.stableAfterMs) return;
    throw new RevdialError(ErrorCodes.CONTROL_UNSTABLE, `control connection lasted only ${end.uptimeMs} ms (${end.error.code})`, { cause: end.error });
  };

  #onFailedAttempt = ({ error, attemptNumber, retryDelay }: RetryContext): void => {
    this.#o.observer.controlAttemptFailed?.(codeOf(error), attemptNumber, retryDelay);
    if (codeOf(error) === ErrorCodes.CONTROL_UNSTABLE) return;
    this.#log.warn({ code: codeOf(error), attempt: attemptNumber, retryInMs: retryDelay }, `Control connection attempt failed: ${describe(error, 400)}`);
  };

  #onConnReady = (connPath: string, session: ControlSession): void => {
    if (this.#draining) {
      this.#refuse(session, connPath, 'refused_shutdown', new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down'));
      return;
    }
    if (this.#tunnels.size >= this.#o.maxTunnels) {
      this.#refuse(
        session,
        connPath,
        'refused_limit',
        new RevdialError(ErrorCodes.TUNNEL_LIMIT, `tunnel limit reached (${this.#o.maxTunnels} open); raise --max-tunnels if the host can take more`),
      );
      return;
    }
    let url: URL;
    try {
      url = dataUrl(this.#o.apiUrl, connPath);
    } catch (err) {
      this.#refuse(session, connPath, 'invalid_conn_path', err);
      return;
    }
    void this.#runTunnel(connPath, url, session);
  };

  #refuse(session: ControlSession, connPath: string, result: TunnelResult, err: unknown): void {
    session.send({ command: 'pickup-failed', connPath, err: pickupReason(err) });
    this.#o.observer.tunnelEnded?.(result);
    if (result === 'refused_limit') {
      // A flood must not flood the log: one line per 5 s with the count.
      this.#refusedSinceWarning++;
      const now = this.#clock.now();
      if (now - this.#lastLimitWarning < 5_000) return;
      this.#lastLimitWarning = now;
      this.#log.warn({ code: codeOf(err), refused: this.#refusedSinceWarning }, `Refusing tunnel: ${describe(err)}`);
      this.#refusedSinceWarning = 0;
      return;
    }
    const level = result === 'refused_shutdown' ? 'info' : 'warn';
    this.#log[level]({ code: codeOf(err) }, `Refusing tunnel: ${describe(err)}`);
  }

  async #runTunnel(connPath: string, url: URL, session: ControlSession): Promise<void> {
    const handle: TunnelHandle = { cancel: new AbortController() };
    this.#tunnels.add(handle);
    const log = this.#log.child({ tunnel: ++this.#tunnelSeq });
    const observer = this.#o.observer;
    observer.tunnelStarted?.();
    const options = this.#tunnelOptions;
    let result: TunnelResult;
    try {
      log.debug({ path: url.pathname }, 'conn-ready: picking up');
      const pair = await pickUp(
        {
          dialData: (signal, localReady) =>
            dialDataConnection(connectorOf(this.#o.transport), url, signal, {
              token: () => this.#o.transport.token(),
              userAgent: this.#o.transport.userAgent,
              handshakeTimeoutMs: this.#o.pickupTimeoutMs,
              clock: this.#clock,
              pingIntervalMs: this.#o.pingIntervalMs,
              pingTimeoutMs: this.#o.pingTimeoutMs,
              upgradeAfter: localReady,
              onStale: (err) => log.info({ code: codeOf(err) }, `Warm connection was dead at use; retrying the pick-up on a fresh one: ${describe(err, 200)}`),
            }),
          dialLocal: (signal) =>
            dialLocal(this.#o.local, {
              timeoutMs: this.#o.localDialTimeoutMs,
              clock: this.#clock,
              signal,
              sharedReadBuffer: this.#readBuffer,
            }),
        },
        options,
        handle.cancel.signal,
      );
      observer.tunnelSetUp?.(pair.timing);
      log.debug({ setupMs: pair.timing.setupMs }, 'tunnel open');
      const { bridge, outcome } = startBridge(pair.data, pair.local, options);
      handle.bridge = bridge;
      const end = await outcome;
      result = end.result;
      const fields = { result, endedBy: end.endedBy, bytesToLocal: end.bytesToLocal, bytesFromLocal: end.bytesFromLocal };
      // A tunnel that broke (not one that ended) is worth an operator's attention.
      if (end.error)
        log[result === 'error' || result === 'ping_timeout' ? 'warn' : 'debug']({ ...fields, code: end.error.code }, `tunnel closed: ${end.error.message}`);
      else log.debug(fields, 'tunnel closed');
    } catch (err) {
      result = pickupResult(err);
      const level = result === 'aborted' ? 'debug' : 'warn';
      log[level]({ code: codeOf(err), result }, `Pick-up failed: ${describe(err, 400)}`);
      if (!session.send({ command: 'pickup-failed', connPath, err: pickupReason(err) })) {
        log.debug('control connection gone; pickup-failed not sent');
      }
    } finally {
      this.#tunnels.delete(handle);
      if (this.#tunnels.size === 0) this.#drained?.();
    }
    observer.tunnelEnded?.(result);
  }
}

function pickupResult(err: unknown): TunnelResult {
  if (!(err instanceof PickupError)) return 'error';
  switch (err.leg) {
    case 'local':
      return 'local_dial_failed';
    case 'data':
      return 'data_dial_failed';
    case 'timeout':
      return 'pickup_timeout';
    default:
      return 'aborted';
  }
}
