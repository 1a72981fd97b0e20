/**
 * Prometheus metrics, fed by the agent's observer hooks (supervisor.ts) and
 * the registry client's: nothing is polled, so a counter moves exactly when
 * the event it counts happens. Every label has a small fixed set of values,
 * all pre-set to 0 so that a series exists before its first event (a rate
 * over a series that appears late misses its first increase).
 */
// The classes one by one, not the package index: see prom-client-lib.d.ts.
import Counter from 'prom-client/lib/counter.js';
import collectDefaultMetrics from 'prom-client/lib/defaultMetrics.js';
import Gauge from 'prom-client/lib/gauge.js';
import Histogram from 'prom-client/lib/histogram.js';
import Registry from 'prom-client/lib/registry.js';
import type { Direction } from '../tunnel/bridge.js';
import { ErrorCodes } from '../errors.js';
import type { AgentObserver, TunnelResult } from '../control/supervisor.js';
import type { PickupTiming } from '../tunnel/pickup.js';
import { type PreconnectObserver, WARM_DROP_REASONS, type WarmDropReason } from '../net/preconnect.js';

/** Heartbeat and registration outcomes (registry/wolf-instances.ts, registry/sandboxes.ts). */
export type RegistryResult = 'ok' | 'not_found' | 'rejected' | 'error' | 'timeout';
export const REGISTRY_RESULTS: readonly RegistryResult[] = ['ok', 'not_found', 'rejected', 'error', 'timeout'];

export interface RegistryObserver {
  registration?(result: RegistryResult): void;
  heartbeat?(result: RegistryResult): void;
  registered?(registered: boolean): void;
  /** How long one heartbeat call took, answered or not (sandboxes). */
  heartbeatDuration?(seconds: number): void;
  /** Heartbeats failed in a row since the last one answered 2xx (sandboxes). */
  heartbeatFailures?(count: number): void;
  /** When a heartbeat was last answered 2xx, epoch ms (sandboxes). */
  heartbeatOkAt?(epochMs: number): void;
}

// A Record over the union makes the compiler list every TunnelResult here.
const TUNNEL_RESULTS: Record<TunnelResult, 'tunnel' | 'refusal'> = {
  ok: 'tunnel',
  closed_without_traffic: 'tunnel',
  error: 'tunnel',
  aborted: 'tunnel',
  local_dial_failed: 'tunnel',
  data_dial_failed: 'tunnel',
  pickup_timeout: 'tunnel',
  // The data connection went silent (no frame, no pong within --ping-timeout) and was closed.
  ping_timeout: 'tunnel',
  // Refused before a tunnel started: no tunnelStarted() came first.
  refused_limit: 'refusal',
  refused_backlog: 'refusal',
  refused_shutdown: 'refusal',
  invalid_conn_path: 'refusal',
};

const DIRECTIONS: readonly Direction[] = ['to_local', 'from_local'];

/** Disconnect reasons: error code → label. Anything new lands in `other`. */
const DISCONNECT_REASONS: Record<string, string> = {
  [ErrorCodes.PING_TIMEOUT]: 'ping_timeout',
  [ErrorCodes.CONTROL_CLOSED]: 'closed',
  [ErrorCodes.SHUTTING_DOWN]: 'shutdown',
  [ErrorCodes.PROTOCOL_TEXT_FRAME]: 'protocol_error',
  [ErrorCodes.PROTOCOL_LINE_TOO_LONG]: 'protocol_error',
  [ErrorCodes.PROTOCOL_INVALID_JSON]: 'protocol_error',
};

/** Failed connection attempts: error code → label. */
const ATTEMPT_REASONS: Record<string, string> = {
  [ErrorCodes.AUTH_REJECTED]: 'auth_rejected',
  [ErrorCodes.HANDSHAKE_REJECTED]: 'handshake_rejected',
  [ErrorCodes.HANDSHAKE_TIMEOUT]: 'handshake_timeout',
  [ErrorCodes.CONNECT_FAILED]: 'connect_failed',
  [ErrorCodes.PROXY_FAILED]: 'proxy_failed',
  [ErrorCodes.PROXY_REJECTED]: 'proxy_rejected',
  [ErrorCodes.CONTROL_UNSTABLE]: 'unstable',
};

/** One child per label value, each exported at 0 from the start. */
function boundChildren<L extends string>(counter: Counter<L>, label: L, values: readonly string[]): Map<string, Counter.Internal> {
  const children = new Map<string, Counter.Internal>();
  for (const value of values) {
    const child = counter.labels({ [label]: value } as Partial<Record<L, string>>);
    child.inc(0);
    children.set(value, child);
  }
  return children;
}

function labelsOf(table: Record<string, string>): string[] {
  return [...new Set([...Object.values(table), 'other'])];
}

export interface AgentMetricsOptions {
  /** Process metrics (CPU, memory, event loop lag, file descriptors). Default true. */
  defaultMetrics?: boolean;
}

export class AgentMetrics implements AgentObserver, RegistryObserver, PreconnectObserver {
  readonly registry = new Registry();
  readonly #connected: Gauge;
  readonly #connects: Counter;
  readonly #disconnects: Counter<'reason'>;
  readonly #attemptFailures: Counter<'reason'>;
  readonly #tunnelsActive: Gauge;
  readonly #tunnels: Counter<'result'>;
  readonly #bytes: Counter<'direction'>;
  // Label children bound once (boundChildren): a labelled `inc` hashes its
  // labels on every call, and these run per chunk (bytes) or per tunnel.
  readonly #bytesBy: Map<string, Counter.Internal>;
  readonly #tunnelsBy: Map<string, Counter.Internal>;
  readonly #warmTakenBy: Map<string, Counter.Internal>;
  readonly #setup: Histogram;
  readonly #localDial: Histogram;
  readonly #heartbeats: Counter<'result'>;
  readonly #registrations: Counter<'result'>;
  readonly #registered: Gauge;
  readonly #heartbeatSeconds: Histogram;
  readonly #heartbeatFailures: Gauge;
  readonly #heartbeatOkAt: Gauge;
  readonly #warm: Gauge;
  readonly #warmTaken: Counter<'result'>;
  readonly #warmDropped: Counter<'reason'>;

  constructor(options: AgentMetricsOptions = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.#connected = new Gauge({
      name: 'revdial_control_connected',
      help: '1 while a control connection to the control plane is up, else 0.',
      registers,
    });
    this.#connects = new Counter({
      name: 'revdial_control_connects_total',
      help: 'Control connections established.',
      registers,
    });
    this.#disconnects = new Counter({
      name: 'revdial_control_disconnects_total',
      help: 'Control connections lost, by reason.',
      labelNames: ['reason'],
      registers,
    });
    this.#attemptFailures = new Counter({
      name: 'revdial_control_connect_failures_total',
      help: 'Control connection attempts that failed, by reason.',
      labelNames: ['reason'],
      registers,
    });
    this.#tunnelsActive = new Gauge({
      name: 'revdial_tunnels_active',
      help: 'Tunnels open now (pick-ups included).',
      registers,
    });
    this.#tunnels = new Counter({
      name: 'revdial_tunnels_total',
      help: 'Tunnels ended, by result: ok carried traffic; the others are failures and refusals.',
      labelNames: ['result'],
      registers,
    });
    this.#bytes = new Counter({
      name: 'revdial_tunnel_bytes_total',
      help: 'Bytes carried by tunnels: to_local toward the Wolf API, from_local back to the control plane.',
      labelNames: ['direction'],
      registers,
    });
    this.#setup = new Histogram({
      name: 'revdial_tunnel_setup_seconds',
      help: 'From conn-ready to both ends of the tunnel connected.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20],
      registers,
    });
    this.#localDial = new Histogram({
      name: 'revdial_local_dial_seconds',
      help: 'Time to connect to the local Wolf API.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.#heartbeats = new Counter({
      name: 'revdial_registry_heartbeats_total',
      help: 'Registry heartbeats, by result (not_found: the control plane lost the instance and it registers again).',
      labelNames: ['result'],
      registers,
    });
    this.#registrations = new Counter({
      name: 'revdial_registry_registrations_total',
      help: 'Registry registration attempts, by result (not_found: the control plane has no registry).',
      labelNames: ['result'],
      registers,
    });
    this.#registered = new Gauge({
      name: 'revdial_registry_registered',
      help: '1 while this instance is registered with the control plane registry, else 0.',
      registers,
    });
    this.#heartbeatSeconds = new Histogram({
      name: 'revdial_registry_heartbeat_duration_seconds',
      help: 'Time one sandboxes heartbeat call took, answered or timed out (--registry sandboxes).',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#heartbeatFailures = new Gauge({
      name: 'revdial_registry_heartbeat_consecutive_failures',
      help: 'Sandboxes heartbeats failed in a row (error, timeout, rejected); 0 once one is answered 2xx.',
      registers,
    });
    this.#heartbeatOkAt = new Gauge({
      name: 'revdial_registry_last_heartbeat_ok_timestamp_seconds',
      help: 'Unix time of the last sandboxes heartbeat answered 2xx; 0 before the first.',
      registers,
    });

    this.#warm = new Gauge({
      name: 'revdial_preconnect_warm',
      help: 'Warm connections to the control plane ready now (--preconnect).',
      registers,
    });
    this.#warmTaken = new Counter({
      name: 'revdial_preconnect_requests_total',
      help: 'Data connections that asked the preconnect pool for a socket: hit got a warm one, miss dialled a new one.',
      labelNames: ['result'],
      registers,
    });
    this.#warmDropped = new Counter({
      name: 'revdial_preconnect_dropped_total',
      help: 'Warm connections closed unused, by reason: aged (replaced before idle timeouts), closed (by the peer), unexpected_data, stopped (control connection down, shutdown).',
      labelNames: ['reason'],
      registers,
    });
    this.#warm.set(0);
    this.#warmTakenBy = boundChildren(this.#warmTaken, 'result', ['hit', 'miss']);
    for (const reason of WARM_DROP_REASONS) this.#warmDropped.inc({ reason }, 0);

    this.#connected.set(0);
    this.#heartbeatFailures.set(0);
    this.#heartbeatOkAt.set(0);
    this.#tunnelsActive.set(0);
    this.#registered.set(0);
    for (const reason of labelsOf(DISCONNECT_REASONS)) this.#disconnects.inc({ reason }, 0);
    for (const reason of labelsOf(ATTEMPT_REASONS)) this.#attemptFailures.inc({ reason }, 0);
    this.#tunnelsBy = boundChildren(this.#tunnels, 'result', Object.keys(TUNNEL_RESULTS));
    this.#bytesBy = boundChildren(this.#bytes, 'direction', DIRECTIONS);
    for (const result of REGISTRY_RESULTS) {
      this.#heartbeats.inc({ result }, 0);
      this.#registrations.inc({ result }, 0);
    }
  }

  /** The Prometheus text exposition, and its content type. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  controlConnected(): void {
    this.#connected.set(1);
    this.#connects.inc();
  }

  controlDisconnected(code: string): void {
    this.#connected.set(0);
    this.#disconnects.inc({ reason: DISCONNECT_REASONS[code] ?? 'other' });
  }

  controlAttemptFailed(code: string): void {
    this.#attemptFailures.inc({ reason: ATTEMPT_REASONS[code] ?? 'other' });
  }

  tunnelStarted(): void {
    this.#tunnelsActive.inc();
  }

  tunnelSetUp(timing: PickupTiming): void {
    this.#setup.observe(timing.setupMs / 1000);
    if (timing.localDialMs !== undefined) this.#localDial.observe(timing.localDialMs / 1000);
  }

  tunnelEnded(result: TunnelResult): void {
    const kind = TUNNEL_RESULTS[result];
    // Defensive: a result this table does not know counts as an error instead of throwing.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    this.#tunnelsBy.get(kind === undefined ? 'error' : result)?.inc();
    if (kind !== 'refusal') this.#tunnelsActive.dec();
  }

  bytes(direction: Direction, count: number): void {
    this.#bytesBy.get(direction)?.inc(count);
  }

  registration(result: RegistryResult): void {
    this.#registrations.inc({ result });
  }

  heartbeat(result: RegistryResult): void {
    this.#heartbeats.inc({ result });
  }

  warmSize(size: number): void {
    this.#warm.set(size);
  }

  warmTaken(hit: boolean): void {
    this.#warmTakenBy.get(hit ? 'hit' : 'miss')?.inc();
  }

  warmDropped(reason: WarmDropReason): void {
    this.#warmDropped.inc({ reason });
  }

  registered(registered: boolean): void {
    this.#registered.set(registered ? 1 : 0);
  }

  heartbeatDuration(seconds: number): void {
    this.#heartbeatSeconds.observe(seconds);
  }

  heartbeatFailures(count: number): void {
    this.#heartbeatFailures.set(count);
  }

  heartbeatOkAt(epochMs: number): void {
    this.#heartbeatOkAt.set(epochMs / 1000);
  }
}

const AGENT_HOOKS = [
  'controlConnected',
  'controlDisconnected',
  'controlAttemptFailed',
  'tunnelStarted',
  'tunnelSetUp',
  'tunnelEnded',
  'bytes',
] as const satisfies readonly (keyof AgentObserver)[];

/**
 * One observer that calls several (metrics plus a test's own, say). A hook
 * that throws is contained: observers must never break the agent.
 */
export function fanOut(...observers: AgentObserver[]): AgentObserver {
  const out: Record<string, (...args: unknown[]) => void> = {};
  for (const hook of AGENT_HOOKS) {
    const targets = observers.filter((o) => typeof o[hook] === 'function');
    if (targets.length === 0) continue;
    out[hook] = (...args: unknown[]): void => {
      for (const o of targets) {
        try {
          (o[hook] as (...a: unknown[]) => void).apply(o, args);
        } catch {
          /* an observer must not break the agent */
        }
      }
    };
  }
  return out;
}
