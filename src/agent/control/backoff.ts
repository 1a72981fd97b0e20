/**
 * When to try the control connection again.
 *
 * A short outage (a control plane restarting, a load balancer moving) is met
 * at a steady, jittered pace: every attempt waits between `minMs` and twice
 * that, so the agent is back within about 2 × `minMs` of the plane listening
 * again, every time, however often the plane restarts. Only once an outage has
 * lasted `fastWindowMs` do the waits grow, doubling up to `maxMs`, each drawn
 * from the upper half of its range ("equal jitter"): a long outage costs the
 * plane little, and agents dropped together come back spread out.
 *
 * An outage ends when a connection stays up for `healthyAfterMs`; a plane
 * that accepts and drops at once (a crash loop) does not end it, so that case
 * still backs off.
 *
 * After the plane rejects the token (HTTP 401/403) the agent retries at the
 * slowest pace, jittered too: a fleet whose token was revoked must not come
 * back in lockstep when it is restored.
 *
 * p-retry expressed the previous, attempt-counting policy; this one depends on
 * how long the outage has lasted and runs on the injected clock (tests tick
 * it), neither of which p-retry's options reach, so it is a small object here.
 */
export interface BackoffOptions {
  /** The shortest wait; early waits are drawn from [minMs, 2 × minMs], clipped to maxMs. */
  minMs: number;
  /** The longest wait (`--reconnect`). */
  maxMs: number;
  /** Outages shorter than this are retried at the steady pace. */
  fastWindowMs: number;
  /** A connection up this long ends the outage. */
  healthyAfterMs: number;
  /** [0, 1); tests pass their own. */
  random?: () => number;
}

export const DEFAULT_FAST_WINDOW_MS = 10_000;
export const DEFAULT_HEALTHY_AFTER_MS = 1_000;

export class ReconnectBackoff {
  readonly #o: Required<BackoffOptions>;
  /** When the current outage began; undefined while connected. */
  #outageSince: number | undefined;
  /** Waits handed out since the outage left the fast window. */
  #grown = 0;

  constructor(options: BackoffOptions) {
    this.#o = { random: Math.random, ...options };
  }

  /** The agent starts disconnected: the first attempts follow the fast pace. */
  started(now: number): void {
    this.#outageSince = now;
    this.#grown = 0;
  }

  /** A connection that was up `uptimeMs` ended at `now`. */
  disconnected(now: number, uptimeMs: number): void {
    if (uptimeMs >= this.#o.healthyAfterMs || this.#outageSince === undefined) {
      this.#outageSince = now;
      this.#grown = 0;
    }
  }

  /** How long the current outage has lasted. */
  outageMs(now: number): number {
    return this.#outageSince === undefined ? 0 : now - this.#outageSince;
  }

  /** The wait before the next attempt. */
  next(now: number): number {
    const { minMs, maxMs, fastWindowMs } = this.#o;
    this.#outageSince ??= now;
    const r = this.#o.random();
    if (now - this.#outageSince < fastWindowMs) return Math.min(maxMs, minMs * (1 + r));
    this.#grown++;
    const ceiling = Math.min(maxMs, 2 * minMs * 2 ** Math.min(this.#grown, 30));
    return ceiling / 2 + (ceiling / 2) * r;
  }

  /** The wait after the token was rejected: the slowest pace, jittered over its upper half. */
  afterAuthFailure(): number {
    return (this.#o.maxMs / 2) * (1 + this.#o.random());
  }
}
