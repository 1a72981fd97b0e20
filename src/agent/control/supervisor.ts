/**
 * The agent: keeps one control session alive (reconnecting with jittered
 * back-off, backoff.ts), answers each `conn-ready` with a tunnel, enforces the
 * tunnel limit, and drains on shutdown.
 *
 * Request path: ControlSession emits conn-ready → #onConnReady checks limits
 * and the connPath → the pick-up queue (pickup-queue.ts) gives it a dial slot
 * → #runTunnel picks up both ends (tunnel/pickup.ts) → bridge.ts pipes them →
 * the outcome is counted and logged.
 */
import type { Logger } from 'pino';
import type { Bridge, Direction } from '../tunnel/bridge.js';
import { type Clock, sleep, systemClock } from '../clock.js';
import { ControlSession, DEFAULT_MAX_SEND_QUEUE_BYTES, DEFAULT_SEND_HIGH_WATER_BYTES, type SessionEnd } from './session.js';
import { controlUrl, dataUrl, safeOrigin } from '../net/endpoints.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import { DEFAULT_MAX_LINE_BYTES } from './framing.js';
import { type LocalTarget, describeTarget, dialLocal } from '../net/local-dialer.js';
import { PickupError, type PickupTiming, type TunnelOptions, type TunnelOutcome, pickUp, pickupReason, startBridge } from '../tunnel/pickup.js';
import { type ControlPlaneTransport, connectorOf, dialWebSocket } from '../net/ws-dial.js';
import { dialDataConnection } from '../tunnel/data-connection.js';
import { DEFAULT_FAST_WINDOW_MS, DEFAULT_HEALTHY_AFTER_MS, ReconnectBackoff } from './backoff.js';
import { DEFAULT_PICKUP_BACKLOG, DEFAULT_PICKUP_CONCURRENCY, PickupQueue } from './pickup-queue.js';
import { DEFAULT_LOG_INTERVAL_MS, LogLimiter } from '../log-limiter.js';
import { guardLogger, guardObserver } from '../guard.js';

/** Warm connections ahead of need (net/preconnect.ts): kept only while the control connection is up. */
export interface WarmConnections {
  start(url: URL): void;
  stop(): void;
  close(): void;
}

/** Every value `tunnelEnded` reports: a small fixed set, fit for a metric label. */
export type TunnelResult =
  | TunnelOutcome['result']
  | 'refused_limit'
  | 'refused_backlog'
  | 'refused_shutdown'
  | 'invalid_conn_path'
  | 'local_dial_failed'
  | 'data_dial_failed'
  | 'pickup_timeout';

/** Hooks for metrics and tests; every method is optional. One that throws is contained (guard.ts). */
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
  /** Retries during a short outage wait between this and twice this. */
  reconnectMinMs?: number;
  /** Outages shorter than this are retried at the steady pace (backoff.ts). */
  fastRetryWindowMs?: number;
  /** A connection up this long ends an outage (backoff.ts). */
  healthyAfterMs?: number;
  /** A connection that ends before this is logged and counted as unstable. */
  stableAfterMs?: number;
  /** Pick-ups dialing at once (pickup-queue.ts). */
  maxConcurrentPickups?: number;
  /** Pick-ups waiting for a dial slot; more are refused at once. */
  maxQueuedPickups?: number;
  /** Control send queue: stop reading the peer past this (session.ts). */
  sendHighWaterBytes?: number;
  /** Control send queue: drop messages past this. */
  maxSendQueueBytes?: number;
  /** One line per kind of repeated warning per this interval. */
  logIntervalMs?: number;
  /** [0, 1) for reconnect jitter; tests pass their own. */
  random?: () => number;
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

/** A `conn-ready` waiting for a dial slot. */
interface PickupRequest {
  connPath: string;
  url: URL;
  session: ControlSession;
  /** clock.now() when the conn-ready arrived. */
  at: number;
}

/** After the grace period, what is left gets this long to close before the drain stops waiting. */
const CUT_DEADLINE_MS = 500;

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
  readonly #backoff: ReconnectBackoff;
  readonly #pickups: PickupQueue<PickupRequest>;
  readonly #limiter: LogLimiter;

  constructor(options: AgentOptions) {
    const reconnectMaxMs = options.reconnectMaxMs;
    this.#o = {
      // Half the cap at most: waits are drawn from [min, 2*min] and clipped
      // to the cap, so min == cap would give every agent exactly the cap (no
      // jitter: a fleet dropped together would come back together).
      reconnectMinMs: Math.min(500, reconnectMaxMs / 2),
      fastRetryWindowMs: DEFAULT_FAST_WINDOW_MS,
      healthyAfterMs: DEFAULT_HEALTHY_AFTER_MS,
      stableAfterMs: 10_000,
      maxConcurrentPickups: DEFAULT_PICKUP_CONCURRENCY,
      maxQueuedPickups: DEFAULT_PICKUP_BACKLOG,
      sendHighWaterBytes: DEFAULT_SEND_HIGH_WATER_BYTES,
      maxSendQueueBytes: DEFAULT_MAX_SEND_QUEUE_BYTES,
      logIntervalMs: DEFAULT_LOG_INTERVAL_MS,
      random: Math.random,
      handshakeTimeoutMs: 10_000,
      closeBackstopMs: 5_000,
      maxLineBytes: DEFAULT_MAX_LINE_BYTES,
      clock: systemClock,
      ...options,
      observer: {},
    };
    // Neither a metrics hook nor the log may break a tunnel (guard.ts).
    this.#log = guardLogger(options.log);
    this.#preconnect = options.preconnect;
    this.#clock = this.#o.clock;
    this.#limiter = new LogLimiter({ intervalMs: this.#o.logIntervalMs, clock: this.#clock });
    this.#o.observer = guardObserver(options.observer ?? {}, (hook, err) => {
      this.#limiter.warn(this.#log, `observer:${hook}`, { hook }, `a metrics hook (${hook}) threw and was ignored: ${describe(err)}`);
    });
    this.#backoff = new ReconnectBackoff({
      minMs: this.#o.reconnectMinMs,
      maxMs: reconnectMaxMs,
      fastWindowMs: this.#o.fastRetryWindowMs,
      healthyAfterMs: this.#o.healthyAfterMs,
      random: this.#o.random,
    });
    this.#pickups = new PickupQueue({
      concurrency: this.#o.maxConcurrentPickups,
      maxQueued: this.#o.maxQueuedPickups,
      run: this.#startPickup,
    });
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
    // Requests still waiting for a dial slot are answered now.
    for (const request of this.#pickups.takeAll()) this.#refuse(request.session, request.connPath, 'refused_shutdown', reason);
    this.#session?.close(reason);
    const grace = new AbortController();
    const graceOver = sleep(this.#clock, graceMs, grace.signal).catch(() => undefined);
    const drained =
      this.#tunnels.size === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            this.#drained = resolve;
          });
    let cut = 0;
    if (this.#tunnels.size > 0) {
      this.#log.info({ tunnels: this.#tunnels.size, graceMs }, 'Draining open tunnels');
      await Promise.race([drained, graceOver]);
      cut = this.#tunnels.size;
      if (cut > 0) {
        this.#log.warn({ tunnels: cut }, 'Grace period over; closing the tunnels still open');
        const over = new RevdialError(ErrorCodes.SHUTTING_DOWN, 'grace period over');
        for (const t of this.#tunnels) {
          t.cancel.abort(over);
          t.bridge?.abort(over);
        }
      }
    }
    // The control connection closes politely within the grace period (its own
    // backstop is shorter still); a peer that stopped answering is cut then.
    await Promise.race([this.#running, graceOver]);
    grace.abort();
    this.#session?.terminate(reason);
    // Everything has been told to stop: sockets close in a moment. Wait that
    // moment, never longer, whatever a peer does (the shutdown deadline).
    const settle = new AbortController();
    await Promise.race([Promise.all([this.#running, drained]), sleep(this.#clock, CUT_DEADLINE_MS, settle.signal).catch(() => undefined)]);
    settle.abort();
    this.#limiter.flush();
    return { cut };
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    this.#backoff.started(this.#clock.now());
    let attempt = 0;
    while (!signal.aborted) {
      let delay: number;
      try {
        const end = await this.#attempt();
        // The signal may have been aborted while the connection was up; the type checker cannot see that.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (end === undefined || signal.aborted) break;
        attempt = 0;
        const now = this.#clock.now();
        this.#backoff.disconnected(now, end.uptimeMs);
        // Agents dropped together do not come back together: even the first wait is jittered.
        delay = this.#backoff.next(now);
        if (end.uptimeMs < this.#o.stableAfterMs) this.#o.observer.controlAttemptFailed?.(ErrorCodes.CONTROL_UNSTABLE, 0, delay);
      } catch (err) {
        // The signal may have aborted during the attempt; the type checker cannot see that.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (signal.aborted) break;
        attempt++;
        const code = codeOf(err);
        if (code === ErrorCodes.AUTH_REJECTED) {
          // Tokens get rotated: an auth failure is retried, but at the slowest pace.
          delay = this.#backoff.afterAuthFailure();
          this.#log.error({ code, attempt, retryInMs: Math.round(delay) }, describe(err, 400));
        } else {
          delay = this.#backoff.next(this.#clock.now());
          this.#log.warn({ code, attempt, retryInMs: Math.round(delay) }, `Control connection attempt failed: ${describe(err, 400)}`);
        }
        this.#o.observer.controlAttemptFailed?.(code, attempt, delay);
      }
      try {
        await sleep(this.#clock, delay, signal);
      } catch {
        break;
      }
    }
  }

  /** One connection, start to end; resolves with how it ended (undefined when shutting down). */
  async #attempt(): Promise<SessionEnd | undefined> {
    const ws = await dialWebSocket(this.#controlUrl, {
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
    const session = new ControlSession(ws, {
      pingIntervalMs: this.#o.pingIntervalMs,
      pingTimeoutMs: this.#o.pingTimeoutMs,
      maxLineBytes: this.#o.maxLineBytes,
      closeBackstopMs: this.#o.closeBackstopMs,
      clock: this.#clock,
      log: this.#log,
      limiter: this.#limiter,
      sendHighWaterBytes: this.#o.sendHighWaterBytes,
      maxSendQueueBytes: this.#o.maxSendQueueBytes,
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
      return undefined;
    }
    this.#log.warn({ code: end.error.code, uptimeMs: end.uptimeMs, tunnels: this.#tunnels.size }, `Control connection lost: ${end.error.message}`);
    return end;
  }

  #onConnReady = (connPath: string, session: ControlSession): void => {
    if (this.#draining) {
      this.#refuse(session, connPath, 'refused_shutdown', new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down'));
      return;
    }
    if (this.#tunnels.size + this.#pickups.queued >= this.#o.maxTunnels) {
      this.#refuse(session, connPath, 'refused_limit', this.#limitError());
      return;
    }
    let url: URL;
    try {
      url = dataUrl(this.#o.apiUrl, connPath);
    } catch (err) {
      this.#refuse(session, connPath, 'invalid_conn_path', err);
      return;
    }
    if (!this.#pickups.push({ connPath, url, session, at: this.#clock.now() })) {
      this.#refuse(
        session,
        connPath,
        'refused_backlog',
        new RevdialError(
          ErrorCodes.PICKUP_BACKLOG_FULL,
          `${this.#pickups.queued} requests already wait for one of ${this.#o.maxConcurrentPickups} pick-up slots; try again`,
        ),
      );
    }
  };

  #limitError(): RevdialError {
    return new RevdialError(ErrorCodes.TUNNEL_LIMIT, `tunnel limit reached (${this.#o.maxTunnels} open); raise --max-tunnels if the host can take more`);
  }

  /** The queue hands over a request when a dial slot is free; the slot is held until the pick-up ends. */
  #startPickup = (request: PickupRequest): Promise<void> => {
    const { session, connPath } = request;
    if (this.#draining) {
      this.#refuse(session, connPath, 'refused_shutdown', new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down'));
      return Promise.resolve();
    }
    if (!session.isOpen) {
      // The control connection that asked is gone, and the plane's dialer with
      // it: the data connection would be refused. Requests it still wants are
      // sent again on the next connection.
      this.#log.debug({ path: request.url.pathname }, 'conn-ready from a closed control connection; not picking up');
      this.#o.observer.tunnelEnded?.('aborted');
      return Promise.resolve();
    }
    const waited = this.#clock.now() - request.at;
    const remaining = this.#o.pickupTimeoutMs - waited;
    if (remaining <= 0) {
      const err = new RevdialError(
        ErrorCodes.PICKUP_TIMEOUT,
        `waited ${waited} ms for a pick-up slot, longer than the pick-up time limit (${this.#o.pickupTimeoutMs} ms)`,
      );
      this.#refuse(session, connPath, 'pickup_timeout', err);
      return Promise.resolve();
    }
    if (this.#tunnels.size >= this.#o.maxTunnels) {
      this.#refuse(session, connPath, 'refused_limit', this.#limitError());
      return Promise.resolve();
    }
    return new Promise<void>((pickedUp) => {
      void this.#runTunnel(connPath, request.url, session, remaining, pickedUp);
    });
  };

  /** Answers `pickup-failed` at once; repeated warnings are rate-limited (log-limiter.ts). */
  #refuse(session: ControlSession, connPath: string, result: TunnelResult, err: unknown): void {
    session.send({ command: 'pickup-failed', connPath, err: pickupReason(err) });
    this.#o.observer.tunnelEnded?.(result);
    const level = result === 'refused_shutdown' ? 'info' : 'warn';
    this.#limiter.log(this.#log, level, `refuse:${result}:${codeOf(err)}`, { code: codeOf(err), result }, `Refusing tunnel: ${describe(err)}`);
  }

  /** One tunnel, pick-up to end. `pickedUp` is called once the pick-up is over, whatever its outcome. */
  async #runTunnel(connPath: string, url: URL, session: ControlSession, pickupTimeoutMs: number, pickedUp: () => void): Promise<void> {
    const handle: TunnelHandle = { cancel: new AbortController() };
    this.#tunnels.add(handle);
    const seq = ++this.#tunnelSeq;
    // A pino child per tunnel costs more than the rest of a tunnel's bookkeeping
    // (profiled at c=32): it is made only when a line is written, and debug
    // lines are not built at all unless debug is on.
    let tunnelLog: Logger | undefined;
    const log = (): Logger => (tunnelLog ??= this.#log.child({ tunnel: seq }));
    const debug = this.#log.isLevelEnabled('debug');
    const observer = this.#o.observer;
    observer.tunnelStarted?.();
    const options = pickupTimeoutMs < this.#tunnelOptions.pickupTimeoutMs ? { ...this.#tunnelOptions, pickupTimeoutMs } : this.#tunnelOptions;
    let result: TunnelResult;
    try {
      if (debug) log().debug({ path: url.pathname }, 'conn-ready: picking up');
      const pair = await pickUp(
        {
          dialData: (signal, localReady) =>
            dialDataConnection(connectorOf(this.#o.transport), url, signal, {
              token: () => this.#o.transport.token(),
              userAgent: this.#o.transport.userAgent,
              handshakeTimeoutMs: pickupTimeoutMs,
              clock: this.#clock,
              pingIntervalMs: this.#o.pingIntervalMs,
              pingTimeoutMs: this.#o.pingTimeoutMs,
              upgradeAfter: localReady,
              onStale: (err) =>
                log().info({ code: codeOf(err) }, `Warm connection was dead at use; retrying the pick-up on a fresh one: ${describe(err, 200)}`),
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
      pickedUp();
      observer.tunnelSetUp?.(pair.timing);
      if (debug) log().debug({ setupMs: pair.timing.setupMs }, 'tunnel open');
      const { bridge, outcome } = startBridge(pair.data, pair.local, options);
      handle.bridge = bridge;
      const end = await outcome;
      result = end.result;
      const fields = { result, endedBy: end.endedBy, bytesToLocal: end.bytesToLocal, bytesFromLocal: end.bytesFromLocal };
      // A tunnel that broke (not one that ended) is worth an operator's attention.
      if (end.error && (result === 'error' || result === 'ping_timeout')) {
        this.#limiter.warn(log(), `tunnel-error:${end.error.code}`, { ...fields, code: end.error.code }, `tunnel closed: ${end.error.message}`);
      } else if (debug) {
        if (end.error) log().debug({ ...fields, code: end.error.code }, `tunnel closed: ${end.error.message}`);
        else log().debug(fields, 'tunnel closed');
      }
    } catch (err) {
      pickedUp();
      result = pickupResult(err);
      if (result === 'aborted') {
        if (debug) log().debug({ code: codeOf(err), result }, `Pick-up failed: ${describe(err, 400)}`);
      } else this.#limiter.warn(log(), `pickup:${codeOf(err)}`, { code: codeOf(err), result }, `Pick-up failed: ${describe(err, 400)}`);
      if (!session.send({ command: 'pickup-failed', connPath, err: pickupReason(err) })) {
        if (debug) log().debug('pickup-failed not sent: the control connection is gone or not reading');
      }
    } finally {
      pickedUp();
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
