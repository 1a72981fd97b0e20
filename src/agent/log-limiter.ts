/**
 * Rate limits for warnings that a peer can trigger once per message or per
 * tunnel (a refused pick-up, a failed dial, a dropped control message): at most
 * one line per kind per interval. Lines held back are counted, and the count
 * is logged when the interval ends, so a flood costs a few lines a minute
 * instead of one per message, and `grep` still sees how many there were.
 *
 *   {"level":"warn","code":"REVDIAL_TUNNEL_LIMIT","msg":"Refusing tunnel: ..."}
 *   {"level":"warn","code":"REVDIAL_TUNNEL_LIMIT","suppressed":41230,"intervalMs":10000,
 *    "msg":"Refusing tunnel: ... (41230 more like this in the last 10 s)"}
 */
import type { Logger } from 'pino';
import { type Clock, type Timer, systemClock } from './clock.js';

export const DEFAULT_LOG_INTERVAL_MS = 10_000;

type Level = 'warn' | 'error' | 'info';

interface KindState {
  /** Lines held back since the last one written. */
  suppressed: number;
  /** The last line held back, logged with the count when the interval ends. */
  last?: { log: Logger; level: Level; fields: Record<string, unknown>; msg: string };
  timer: Timer;
}

export class LogLimiter {
  readonly #clock: Clock;
  readonly #intervalMs: number;
  readonly #kinds = new Map<string, KindState>();

  constructor(options: { intervalMs?: number; clock?: Clock } = {}) {
    this.#clock = options.clock ?? systemClock;
    this.#intervalMs = options.intervalMs ?? DEFAULT_LOG_INTERVAL_MS;
  }

  /** Kinds held back right now (a small number: kinds are codes, not ids). */
  get kinds(): number {
    return this.#kinds.size;
  }

  /**
   * Logs `msg` unless a line of the same `kind` was logged in this interval;
   * returns whether it was written. `log` may be a child logger (a tunnel's).
   */
  log(log: Logger, level: Level, kind: string, fields: Record<string, unknown>, msg: string): boolean {
    const state = this.#kinds.get(kind);
    if (state) {
      state.suppressed++;
      state.last = { log, level, fields, msg };
      return false;
    }
    log[level](fields, msg);
    const timer = this.#clock.setTimeout(() => this.#flush(kind), this.#intervalMs);
    timer.unref();
    this.#kinds.set(kind, { suppressed: 0, timer });
    return true;
  }

  warn(log: Logger, kind: string, fields: Record<string, unknown>, msg: string): boolean {
    return this.log(log, 'warn', kind, fields, msg);
  }

  /** Writes the pending counts now (shutdown) and forgets every kind. */
  flush(): void {
    for (const kind of [...this.#kinds.keys()]) this.#flush(kind, true);
  }

  #flush(kind: string, final = false): void {
    const state = this.#kinds.get(kind);
    if (!state) return;
    this.#clock.clearTimeout(state.timer);
    this.#kinds.delete(kind);
    if (state.suppressed === 0 || !state.last) return;
    const { log, level, fields, msg } = state.last;
    const seconds = this.#intervalMs / 1000;
    log[level](
      { ...fields, suppressed: state.suppressed, intervalMs: this.#intervalMs },
      `${msg} (${state.suppressed} more like this in the last ${seconds} s)`,
    );
    // The summary line opens a new interval, so a steady flood gives one line per interval.
    if (!final) {
      const timer = this.#clock.setTimeout(() => this.#flush(kind), this.#intervalMs);
      timer.unref();
      this.#kinds.set(kind, { suppressed: 0, timer });
    }
  }
}
