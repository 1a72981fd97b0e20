/**
 * The control plane's Wolf registry (PROTOCOL.md, "Registry"), from the
 * agent's side: register once, heartbeat every `--heartbeat-interval`,
 * register again when a heartbeat is answered 404 (the control plane lost
 * the instance, e.g. it restarted), deregister on graceful shutdown.
 *
 * It runs beside the tunnels and never in their way: nothing here is awaited
 * by the supervisor, every failure is logged and retried. A control plane
 * without a registry (404 on register) gets one warning and slow retries.
 * Same token, TLS trust and egress proxy as the tunnels (the dispatcher is
 * built by proxy.ts).
 */
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { type Clock, sleep, systemClock } from '../clock.js';
import { safeOrigin } from '../net/endpoints.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import type { RegistryObserver, RegistryResult } from '../ops/metrics.js';
import { type Answer, REGISTRY_PATHS, callRegistry, classify, registryBase } from './http.js';

export const REGISTRY_PATH = REGISTRY_PATHS['wolf-instances'];

export interface WolfInstanceInfo {
  name: string;
  address: string;
  gpuType: string;
  maxSandboxes: number;
}

export interface RegistryClientOptions {
  /** The control plane base URL (`HELIX_API_URL`); ws/wss map to http/https. */
  apiUrl: URL;
  token: () => string;
  userAgent: string;
  dispatcher: Dispatcher;
  instance: WolfInstanceInfo;
  heartbeatIntervalMs: number;
  /** Retry pace when the control plane has no registry (404 on register). Default 5 min. */
  missingRegistryRetryMs?: number;
  /** Retry pace after a failed registration. Default: the heartbeat interval, at most 30 s. */
  registerRetryMs?: number;
  /** Time limit of one request. Default 10 s. */
  requestTimeoutMs?: number;
  log: Logger;
  clock?: Clock;
  observer?: RegistryObserver;
}

export class RegistryClient {
  readonly #o: RegistryClientOptions;
  readonly #clock: Clock;
  readonly #base: string;
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;
  #id: string | undefined;
  #warnedMissing = false;
  #heartbeatFailures = 0;

  constructor(options: RegistryClientOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#base = registryBase(options.apiUrl, REGISTRY_PATH);
  }

  /** The registry's id for this instance while registered. */
  get instanceId(): string | undefined {
    return this.#id;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /**
   * Stops heartbeating and deregisters, waiting at most `timeoutMs` for the
   * control plane to answer: a slow control plane never holds up shutdown.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#stop.abort(new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down'));
    await this.#running;
    const id = this.#id;
    if (id === undefined) return;
    this.#setId(undefined);
    try {
      const answer = await this.#call('DELETE', `/${encodeURIComponent(id)}`, undefined, timeoutMs, undefined);
      if (answer.status >= 200 && answer.status < 300) {
        this.#o.log.info({ instanceId: id }, 'Deregistered from the control plane registry');
      } else {
        this.#o.log.warn({ instanceId: id, status: answer.status }, `Deregistration answered HTTP ${answer.status}`);
      }
    } catch (err) {
      this.#o.log.warn({ instanceId: id, code: codeOf(err) }, `Deregistration failed: ${describe(err)}`);
    }
  }

  // A schedule, not a retry of one operation, so no p-retry here: each outcome
  // has its own fixed pace (README, "Dependencies").
  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    const registerRetryMs = this.#o.registerRetryMs ?? Math.min(this.#o.heartbeatIntervalMs, 30_000);
    while (!signal.aborted) {
      let wait: number;
      if (this.#id === undefined) {
        const result = await this.#register();
        if (result === 'ok') wait = this.#o.heartbeatIntervalMs;
        else if (result === 'not_found') wait = this.#o.missingRegistryRetryMs ?? 300_000;
        else wait = registerRetryMs;
      } else {
        const result = await this.#heartbeat();
        // 404: the control plane lost us; register again right away.
        wait = result === 'not_found' ? 0 : this.#o.heartbeatIntervalMs;
      }
      if (wait === 0) continue;
      try {
        await sleep(this.#clock, wait, signal);
      } catch {
        break;
      }
    }
  }

  async #register(): Promise<RegistryResult> {
    const { instance, observer, log } = this.#o;
    const body = {
      name: instance.name,
      address: instance.address,
      gpu_type: instance.gpuType,
      max_sandboxes: instance.maxSandboxes,
    };
    let result: RegistryResult;
    try {
      const answer = await this.#call('POST', '/register', body, this.#o.requestTimeoutMs ?? 10_000, this.#stop.signal);
      result = classify(answer.status);
      if (result === 'ok') {
        const id = idOf(answer.body);
        if (id === undefined) {
          result = 'error';
          log.warn({ status: answer.status }, 'Registry answered the registration without an instance id; retrying');
        } else {
          this.#setId(id);
          this.#warnedMissing = false;
          log.info(
            { instanceId: id, name: instance.name, gpuType: instance.gpuType, maxSandboxes: instance.maxSandboxes },
            'Registered with the control plane registry',
          );
        }
      } else if (result === 'not_found') {
        if (!this.#warnedMissing) {
          this.#warnedMissing = true;
          log.warn(
            { controlPlane: safeOrigin(this.#o.apiUrl), status: 404 },
            'The control plane has no Wolf registry (HTTP 404 on register): tunnels work without it; retrying slowly',
          );
        }
      } else {
        log.warn(
          { status: answer.status, code: ErrorCodes.REGISTRY_FAILED },
          `Registration refused with HTTP ${answer.status}${result === 'rejected' ? ': check RUNNER_TOKEN' : ''}`,
        );
      }
    } catch (err) {
      if (this.#stop.signal.aborted) return 'error';
      result = 'error';
      log.warn({ code: codeOf(err) }, `Registration failed: ${describe(err)}`);
    }
    observer?.registration?.(result);
    return result;
  }

  async #heartbeat(): Promise<RegistryResult> {
    const id = this.#id!;
    const { observer, log } = this.#o;
    let result: RegistryResult;
    try {
      const answer = await this.#call('POST', `/${encodeURIComponent(id)}/heartbeat`, undefined, this.#o.requestTimeoutMs ?? 10_000, this.#stop.signal);
      result = classify(answer.status);
      if (result === 'not_found') {
        log.warn({ instanceId: id }, 'The control plane no longer knows this instance (heartbeat answered 404): registering again');
        this.#setId(undefined);
      } else if (result !== 'ok') {
        this.#heartbeatFailed(`Heartbeat answered HTTP ${answer.status}`, { status: answer.status });
      }
    } catch (err) {
      if (this.#stop.signal.aborted) return 'error';
      result = 'error';
      this.#heartbeatFailed(`Heartbeat failed: ${describe(err)}`, { code: codeOf(err) });
    }
    if (result === 'ok') {
      if (this.#heartbeatFailures > 0) log.info({ instanceId: id, failures: this.#heartbeatFailures }, 'Heartbeats answered again');
      this.#heartbeatFailures = 0;
    }
    observer?.heartbeat?.(result);
    return result;
  }

  /** One line per failure streak at warn, the rest at debug: a down control plane does not flood the log. */
  #heartbeatFailed(message: string, fields: Record<string, unknown>): void {
    this.#heartbeatFailures++;
    const level = this.#heartbeatFailures === 1 ? 'warn' : 'debug';
    this.#o.log[level]({ instanceId: this.#id, failures: this.#heartbeatFailures, ...fields }, message);
  }

  #setId(id: string | undefined): void {
    this.#id = id;
    this.#o.observer?.registered?.(id !== undefined);
  }

  #call(method: 'POST' | 'DELETE', path: string, body: unknown, timeoutMs: number, signal: AbortSignal | undefined): Promise<Answer> {
    return callRegistry({
      method,
      url: `${this.#base}${path}`,
      token: this.#o.token,
      userAgent: this.#o.userAgent,
      dispatcher: this.#o.dispatcher,
      body,
      timeoutMs,
      clock: this.#clock,
      ...(signal ? { signal } : {}),
      apiUrl: this.#o.apiUrl,
      timeoutCode: ErrorCodes.REGISTRY_FAILED,
    });
  }
}

function idOf(body: unknown): string | undefined {
  if (body === null || typeof body !== 'object') return undefined;
  const id = (body as { id?: unknown }).id;
  if (typeof id === 'string' && id !== '') return id;
  if (typeof id === 'number' && Number.isFinite(id)) return String(id);
  return undefined;
}
