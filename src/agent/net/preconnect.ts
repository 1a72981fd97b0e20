/**
 * Warm connections ahead of need (frp's work-connection pool): a few TCP+TLS
 * connections to the control plane kept open while the control connection is
 * up, so a `conn-ready` costs only the WebSocket upgrade's round trip instead
 * of TCP + TLS + upgrade. The upgrade itself (and so the token) happens at
 * use, never here: a rotated token is carried by the next upgrade.
 *
 * How many: sized by recent demand. The target is the most pick-ups seen in
 * any one second of the last 30 s, at least 1 (an idle host keeps one), at
 * least 2 once there was any demand, at most `--preconnect` (default 32: a
 * warm TLS socket costs the agent some 30-60 KiB and the control plane one
 * idle connection, and only a busy host keeps that many. With 8, a host
 * taking 32 requests at once across 30 ms found the pool empty for 4 in 10
 * pick-ups; with 32, for 2 in 100: a refill takes two round trips, so a
 * steady 250 pick-ups/s keeps some 18 of them on their way, and those count
 * against the number too).
 *
 * Respecting servers and middleboxes (PROTOCOL.md): the production API server
 * closes a connection that sent no request header within 60 s, and load
 * balancers drop idle ones after 60 s or less. Each warm socket is therefore
 * replaced after 20-30 s (jittered, so they do not all turn over together),
 * and sooner if the peer is seen closing idle ones earlier: an idle close at
 * age A (5 s or more: a timeout, not a restart) sets the limit to 0.6 A (its
 * jitter to half that, so none lives past 0.9 A); each socket that reaches
 * its limit unclosed moves it back up by a tenth, toward the default. One the peer closes
 * ('end', 'close', 'error') is dropped at once; one that receives any byte is
 * dropped too (nothing may arrive before our request). A warm socket that
 * still turns out dead at use makes the pick-up retry once on a fresh one
 * (REVDIAL_DATA_SOCKET_STALE, see connector.ts).
 *
 * Refills happen only while the control connection is up (`start`/`stop`),
 * and failures back off (1 s doubling to 30 s) so a control plane that is
 * down sees no storm. `close` (shutdown) destroys every warm socket at once.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import type { ConnectResult, ControlPlaneConnector } from './connector.js';
import { safeOrigin } from './endpoints.js';

export type WarmDropReason = 'aged' | 'closed' | 'unexpected_data' | 'stopped';
export const WARM_DROP_REASONS: readonly WarmDropReason[] = ['aged', 'closed', 'unexpected_data', 'stopped'];

/** Hooks for metrics; every method is optional and must not throw. */
export interface PreconnectObserver {
  /** Warm sockets ready now. */
  warmSize?(size: number): void;
  /** A data connection asked for a socket: `hit` got a warm one. */
  warmTaken?(hit: boolean): void;
  warmDropped?(reason: WarmDropReason): void;
}

export interface PreconnectOptions {
  /** What makes the sockets (TLS, proxy). */
  connector: ControlPlaneConnector;
  /** The most kept; 0 turns the pool off (every connect goes to `connector`). */
  cap: number;
  log: Logger;
  clock?: Clock;
  observer?: PreconnectObserver;
  /** Warm sockets are replaced after `maxAgeMs` plus up to `jitterMs`. */
  maxAgeMs?: number;
  jitterMs?: number;
  /** The shortest and longest wait after a failed refill. */
  retryMinMs?: number;
  retryMaxMs?: number;
  random?: () => number;
}

interface Warm {
  readonly socket: Socket;
  readonly since: number;
  readonly timer: Timer;
  readonly onReadable: () => void;
  readonly onEnd: () => void;
  readonly onError: (err: Error) => void;
}

const DEMAND_WINDOW_S = 30;
/** Idle closes earlier than this are taken for restarts or accidents, not for an idle timeout to adapt to. */
const MIN_TIMEOUT_AGE_MS = 5_000;

export class PreconnectPool implements ControlPlaneConnector {
  readonly #connector: ControlPlaneConnector;
  readonly #cap: number;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #observer: PreconnectObserver;
  readonly #defaultMaxAgeMs: number;
  readonly #defaultJitterMs: number;
  #jitterMs: number;
  readonly #retryMinMs: number;
  readonly #retryMaxMs: number;
  readonly #random: () => number;
  #maxAgeMs: number;
  /** Pick-ups per second, the last DEMAND_WINDOW_S seconds: [second, count]. */
  readonly #demand: [number, number][] = [];
  readonly #idle: Warm[] = [];
  #connecting = 0;
  #url: URL | undefined;
  #origin = '';
  /** Aborts the refills in flight when the pool stops. */
  #refills = new AbortController();
  #failures = 0;
  #retryTimer: Timer | undefined;
  #closed = false;

  constructor(options: PreconnectOptions) {
    this.#connector = options.connector;
    this.#cap = options.cap;
    this.#log = options.log;
    this.#clock = options.clock ?? systemClock;
    this.#observer = options.observer ?? {};
    this.#maxAgeMs = this.#defaultMaxAgeMs = options.maxAgeMs ?? 20_000;
    this.#jitterMs = this.#defaultJitterMs = options.jitterMs ?? 10_000;
    this.#retryMinMs = options.retryMinMs ?? 1_000;
    this.#retryMaxMs = options.retryMaxMs ?? 30_000;
    this.#random = options.random ?? Math.random;
  }

  /** Warm sockets ready now. */
  get size(): number {
    return this.#idle.length;
  }

  /** How many the pool aims to keep, from recent demand. */
  get target(): number {
    if (this.#cap === 0) return 0;
    const peak = this.#peakDemand();
    return Math.min(this.#cap, peak === 0 ? 1 : Math.max(2, peak));
  }

  /** The age at which warm sockets are replaced now (before jitter). */
  get maxAgeMs(): number {
    return this.#maxAgeMs;
  }

  /** A warm socket to `url`'s origin when one is ready (unless `fresh`), else a new one. */
  async connect(url: URL, signal: AbortSignal, opts?: { fresh?: boolean }): Promise<ConnectResult> {
    if (this.#cap === 0 || opts?.fresh === true || this.#closed) return this.#connector.connect(url, signal);
    this.#recordDemand();
    const warm = originOf(url) === this.#origin ? this.#take() : undefined;
    this.#observer.warmTaken?.(warm !== undefined);
    this.#fill();
    if (warm) return { socket: warm, warm: true };
    return this.#connector.connect(url, signal);
  }

  /** The control connection to `url` is up: keep warm sockets to its origin. */
  start(url: URL): void {
    if (this.#cap === 0 || this.#closed) return;
    const origin = originOf(url);
    if (origin !== this.#origin) this.#dropAll('stopped');
    if (this.#url === undefined) {
      this.#log.info(
        { controlPlane: safeOrigin(url), preconnect: this.#cap },
        `Keeping up to ${this.#cap} warm connections to ${safeOrigin(url)} (preconnect)`,
      );
    }
    this.#url = url;
    this.#origin = origin;
    this.#fill();
  }

  /** The control connection is down: no refills, and the warm sockets (likely dead too) are closed. */
  stop(): void {
    this.#url = undefined;
    this.#refills.abort();
    this.#refills = new AbortController();
    this.#clock.clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#dropAll('stopped');
  }

  /** Shutdown: every warm socket destroyed now, none made again. */
  close(): void {
    this.#closed = true;
    this.stop();
  }

  #take(): Socket | undefined {
    for (;;) {
      const warm = this.#idle.shift();
      if (!warm) return undefined;
      this.#detach(warm);
      this.#observer.warmSize?.(this.#idle.length);
      if (!warm.socket.destroyed && warm.socket.readyState === 'open') {
        // A warm socket lived until used: the refills work (reset the back-off).
        this.#failures = 0;
        return warm.socket;
      }
      warm.socket.destroy();
    }
  }

  #fill(): void {
    const url = this.#url;
    if (url === undefined || this.#closed || this.#retryTimer !== undefined) return;
    // Refills on their way count against the target too: a socket that arrives
    // to find the pool full would be a handshake paid for nothing.
    const want = this.target - this.#idle.length - this.#connecting;
    for (let i = 0; i < want; i++) {
      this.#connecting++;
      const signal = this.#refills.signal;
      this.#connector.connect(url, signal, { fresh: true }).then(
        ({ socket }) => {
          this.#connecting--;
          if (signal.aborted || this.#url === undefined || this.#idle.length >= this.target) {
            socket.destroy();
            return;
          }
          this.#add(socket);
        },
        (err: unknown) => {
          this.#connecting--;
          if (signal.aborted) return;
          this.#refillFailed(url, err);
        },
      );
    }
  }

  #refillFailed(url: URL, err: unknown): void {
    this.#failures++;
    if (this.#retryTimer !== undefined) return;
    const base = Math.min(this.#retryMaxMs, this.#retryMinMs * 2 ** (this.#failures - 1));
    const delay = Math.round(base * (0.5 + this.#random() / 2));
    // The control connection's own attempts say loudly when the plane is down; one line per failure streak here.
    const level = this.#failures === 1 ? 'warn' : 'debug';
    this.#log[level](
      { code: codeOf(err), retryInMs: delay, controlPlane: safeOrigin(url) },
      `Warm connection to ${safeOrigin(url)} failed: ${describe(err, 300)}`,
    );
    this.#retryTimer = this.#clock.setTimeout(() => {
      this.#retryTimer = undefined;
      this.#fill();
    }, delay);
    this.#retryTimer.unref();
  }

  #add(socket: Socket): void {
    const since = this.#clock.now();
    const ageMs = this.#maxAgeMs + Math.round(this.#random() * this.#jitterMs);
    const warm: Warm = {
      socket,
      since,
      timer: this.#clock.setTimeout(() => this.#drop(warm, 'aged'), ageMs),
      // Reading keeps TLS working while idle (TLS 1.3 session tickets arrive
      // after the handshake, a close_notify is seen); application data must not come.
      onReadable: () => {
        let unexpected = false;
        while (socket.read() !== null) unexpected = true;
        if (unexpected) this.#drop(warm, 'unexpected_data');
      },
      onEnd: () => this.#drop(warm, 'closed'),
      onError: (err: Error) => {
        this.#log.debug({ code: codeOf(err) }, `Warm connection failed while idle: ${describe(err, 200)}`);
        this.#drop(warm, 'closed');
      },
    };
    warm.timer.unref();
    socket.on('readable', warm.onReadable);
    socket.once('end', warm.onEnd);
    socket.once('close', warm.onEnd);
    socket.on('error', warm.onError);
    this.#idle.push(warm);
    this.#observer.warmSize?.(this.#idle.length);
    // Bytes may have arrived, or the peer closed, between the handshake and now.
    if (socket.readableLength > 0) warm.onReadable();
    else if (socket.readableEnded || socket.destroyed) this.#drop(warm, 'closed');
  }

  #detach(warm: Warm): void {
    this.#clock.clearTimeout(warm.timer);
    warm.socket.removeListener('readable', warm.onReadable);
    warm.socket.removeListener('end', warm.onEnd);
    warm.socket.removeListener('close', warm.onEnd);
    warm.socket.removeListener('error', warm.onError);
  }

  #drop(warm: Warm, reason: WarmDropReason): void {
    const at = this.#idle.indexOf(warm);
    if (at < 0) return;
    this.#idle.splice(at, 1);
    this.#detach(warm);
    warm.socket.destroy();
    this.#observer.warmSize?.(this.#idle.length);
    this.#observer.warmDropped?.(reason);
    const ageMs = this.#clock.now() - warm.since;
    if (reason === 'closed' && ageMs >= MIN_TIMEOUT_AGE_MS && Math.floor(ageMs * 0.6) < this.#maxAgeMs) {
      // Something on the path closes idle connections sooner than we replace them: replace them sooner.
      this.#maxAgeMs = Math.floor(ageMs * 0.6);
      this.#jitterMs = Math.floor(this.#maxAgeMs / 2);
      this.#log.info(
        { ageMs, maxAgeMs: this.#maxAgeMs },
        `The control plane (or a proxy on the way) closed a warm connection after ${ageMs} ms idle: replacing warm connections after ${this.#maxAgeMs} ms from now on`,
      );
    } else if (reason === 'aged' && this.#maxAgeMs < this.#defaultMaxAgeMs) {
      this.#maxAgeMs = Math.min(this.#defaultMaxAgeMs, Math.ceil(this.#maxAgeMs * 1.1));
      this.#jitterMs = Math.min(this.#defaultJitterMs, Math.floor(this.#maxAgeMs / 2));
      this.#log.debug({ reason, ageMs }, 'Warm connection dropped');
    } else if (reason === 'unexpected_data') {
      this.#log.warn('A warm connection received data before any request: closed it');
    } else {
      this.#log.debug({ reason, ageMs }, 'Warm connection dropped');
    }
    if (reason === 'stopped') return;
    if (reason === 'aged') this.#failures = 0;
    if ((reason === 'unexpected_data' || (reason === 'closed' && ageMs < MIN_TIMEOUT_AGE_MS)) && this.#url !== undefined) {
      // Closed almost at once (a server or proxy that will not hold idle
      // connections, or one going down) or spoken to: back off like a failed refill, no storm.
      const what = reason === 'closed' ? `closed a warm connection after ${ageMs} ms idle` : 'sent data on a warm connection before any request';
      this.#refillFailed(this.#url, new RevdialError(ErrorCodes.CONNECT_FAILED, `the control plane ${what}`));
      return;
    }
    this.#fill();
  }

  #dropAll(reason: WarmDropReason): void {
    for (let warm = this.#idle[0]; warm !== undefined; warm = this.#idle[0]) this.#drop(warm, reason);
  }

  #recordDemand(): void {
    const second = Math.floor(this.#clock.now() / 1000);
    const last = this.#demand[this.#demand.length - 1];
    if (last?.[0] === second) last[1]++;
    else this.#demand.push([second, 1]);
    while ((this.#demand[0]?.[0] ?? Infinity) <= second - DEMAND_WINDOW_S) this.#demand.shift();
  }

  #peakDemand(): number {
    const oldest = Math.floor(this.#clock.now() / 1000) - DEMAND_WINDOW_S;
    let peak = 0;
    for (const [second, count] of this.#demand) if (second > oldest && count > peak) peak = count;
    return peak;
  }
}

function originOf(url: URL): string {
  const secure = url.protocol === 'wss:' || url.protocol === 'https:';
  return `${secure ? 's' : 'p'}:${url.hostname.toLowerCase()}:${url.port || (secure ? 443 : 80)}`;
}
