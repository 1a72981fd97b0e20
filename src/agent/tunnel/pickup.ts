/**
 * One tunnel, top to bottom: a `conn-ready` names a data connection; the agent
 * dials it and the local Wolf API at the same time (the pick-up), then bridges
 * the two until either side ends.
 */
import type { Socket } from 'node:net';
import { Bridge, type BridgeResult, type Direction } from './bridge.js';
import type { DataConnection } from './data-connection.js';
import { type Clock, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, codeOf } from '../errors.js';

export interface PickupDialers {
  /**
   * Dials the data connection back to the control plane (handed over paused). `localReady`
   * resolves once the local leg is connected: the upgrade request should wait
   * for it (the TCP and TLS handshakes need not), so that when Wolf cannot be
   * reached the control plane gets `pickup-failed` with the reason instead of
   * a data connection that opens and drops (with a warm connection the
   * upgrade would otherwise win the race).
   */
  dialData(signal: AbortSignal, localReady: Promise<void>): Promise<DataConnection>;
  /** Dials the local Wolf API. */
  dialLocal(signal: AbortSignal): Promise<Socket>;
}

export interface TunnelOptions {
  pickupTimeoutMs: number;
  closeBackstopMs: number;
  clock?: Clock;
  onBytes?: (direction: Direction, bytes: number) => void;
}

export interface PickupTiming {
  /** conn-ready to both ends connected, ms. */
  setupMs: number;
  /** Local dial duration, ms (when it finished). */
  localDialMs?: number;
}

/** Which leg of a pick-up failed first; the other was cancelled. */
export class PickupError extends RevdialError {
  readonly leg: 'data' | 'local' | 'timeout' | 'aborted';

  constructor(leg: PickupError['leg'], cause: unknown) {
    const code = cause instanceof RevdialError ? cause.code : ErrorCodes.TUNNEL_ABORTED;
    super(code, cause instanceof Error ? cause.message : String(cause), { cause });
    this.name = 'PickupError';
    this.leg = leg;
  }
}

/**
 * Dials both ends at once. When either fails, the other is cancelled (and
 * closed if it had connected) and the first failure is thrown as a PickupError.
 */
export async function pickUp(
  dialers: PickupDialers,
  options: TunnelOptions,
  signal: AbortSignal,
): Promise<{ data: DataConnection; local: Socket; timing: PickupTiming }> {
  const clock = options.clock ?? systemClock;
  const started = clock.now();
  const cancel = new AbortController();
  let firstLeg: PickupError['leg'] | undefined;
  const fail = (leg: PickupError['leg'], err: unknown): void => {
    if (firstLeg !== undefined) return;
    firstLeg = leg;
    cancel.abort(err);
  };
  const onOuterAbort = (): void => fail('aborted', signal.reason);
  signal.addEventListener('abort', onOuterAbort, { once: true });
  if (signal.aborted) onOuterAbort();
  const timer = clock.setTimeout(
    () =>
      fail(
        'timeout',
        new RevdialError(ErrorCodes.PICKUP_TIMEOUT, `pick-up did not complete within ${options.pickupTimeoutMs} ms (data connection and local dial)`),
      ),
    options.pickupTimeoutMs,
  );
  let localDialMs: number | undefined;
  const localLeg = dialers.dialLocal(cancel.signal).then(
    (socket) => {
      localDialMs = clock.now() - started;
      return socket;
    },
    (err: unknown) => {
      fail('local', err);
      throw err;
    },
  );
  const localReady = localLeg.then(() => undefined);
  // Its failure is the local leg's, reported there.
  localReady.catch(() => undefined);
  const dataLeg = dialers.dialData(cancel.signal, localReady).catch((err: unknown) => {
    fail('data', err);
    throw err;
  });
  const [local, data] = await Promise.allSettled([localLeg, dataLeg]);
  clock.clearTimeout(timer);
  signal.removeEventListener('abort', onOuterAbort);

  if (local.status === 'fulfilled' && data.status === 'fulfilled' && firstLeg === undefined) {
    const timing: PickupTiming = { setupMs: clock.now() - started };
    if (localDialMs !== undefined) timing.localDialMs = localDialMs;
    return { data: data.value, local: local.value, timing };
  }
  if (local.status === 'fulfilled') local.value.destroy();
  if (data.status === 'fulfilled') data.value.terminate();
  throw new PickupError(firstLeg ?? 'aborted', cancel.signal.reason);
}

export interface TunnelOutcome extends BridgeResult {
  /**
   * A fixed, small set of values, fit for a metric label. `ping_timeout`:
   * the data connection went silent (no frame, no pong) and was closed.
   */
  result: 'ok' | 'closed_without_traffic' | 'error' | 'aborted' | 'ping_timeout';
}

/** Bridges a picked-up pair until it ends; `abort` cuts it (shutdown). */
export function startBridge(data: DataConnection, local: Socket, options: TunnelOptions): { bridge: Bridge; outcome: Promise<TunnelOutcome> } {
  const bridgeOptions = {
    closeBackstopMs: options.closeBackstopMs,
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.onBytes ? { onBytes: options.onBytes } : {}),
  };
  const bridge = new Bridge(data, local, bridgeOptions);
  const outcome = bridge.done.then((r): TunnelOutcome => {
    let result: TunnelOutcome['result'];
    if (r.endedBy === 'aborted') result = 'aborted';
    else if (r.error?.code === ErrorCodes.DATA_PING_TIMEOUT) result = 'ping_timeout';
    else if (r.endedBy === 'error') result = 'error';
    else if (r.bytesFromLocal + r.bytesToLocal === 0) result = 'closed_without_traffic';
    else result = 'ok';
    return { ...r, result };
  });
  return { bridge, outcome };
}

/** The `pickup-failed` reason: the error code plus a short message. */
export function pickupReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return `${codeOf(err)}: ${message}`;
}
