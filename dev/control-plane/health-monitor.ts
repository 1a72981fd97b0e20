/**
 * The registry's health monitor: every `intervalMs` (60 s, as the reference)
 * it marks instances whose last heartbeat is older than `offlineAfterMs`
 * (2 minutes) `offline`, and logs it. A heartbeat brings an instance back
 * (registry.ts).
 *
 * With `tunnelUp`, it also checks each instance's RevDial tunnel: a Wolf that
 * still heartbeats over plain HTTP but whose agent has no control connection
 * cannot be reached, so it is `degraded` (the scheduler skips it) until the
 * tunnel is back. A SIGKILLed agent therefore stops getting new placements at
 * the next check, well before its heartbeats are missed.
 */
import { type Clock, type Timer, systemClock } from '../../src/agent/clock.js';
import type { Logger } from '../../src/agent/logger.js';
import { type InstanceStatus, type Registry, type WolfInstance, runnerIdOf } from './registry.js';

export const DEFAULT_CHECK_INTERVAL_MS = 60_000;
export const DEFAULT_OFFLINE_AFTER_MS = 120_000;

export interface HealthMonitorOptions {
  registry: Registry;
  log: Logger;
  clock?: Clock;
  intervalMs?: number;
  offlineAfterMs?: number;
  /** Whether the instance's agent has a live control connection (e.g. `plane.dialer(runnerId) !== undefined`). */
  tunnelUp?: (runnerId: string) => boolean;
}

export interface HealthChange {
  instance: WolfInstance;
  from: InstanceStatus;
  to: InstanceStatus;
  reason: string;
}

export class HealthMonitor {
  readonly #registry: Registry;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #intervalMs: number;
  readonly #offlineAfterMs: number;
  readonly #tunnelUp: ((runnerId: string) => boolean) | undefined;
  #timer: Timer | undefined;

  constructor(options: HealthMonitorOptions) {
    this.#registry = options.registry;
    this.#log = options.log;
    this.#clock = options.clock ?? systemClock;
    this.#intervalMs = options.intervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    this.#offlineAfterMs = options.offlineAfterMs ?? DEFAULT_OFFLINE_AFTER_MS;
    this.#tunnelUp = options.tunnelUp;
  }

  start(): void {
    if (this.#timer) return;
    this.#log.info({ intervalMs: this.#intervalMs, offlineAfterMs: this.#offlineAfterMs }, 'Wolf health monitor started');
    this.#timer = this.#clock.setInterval(() => this.check(), this.#intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#clock.clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** One pass over every instance; returns the status changes it made. */
  check(): HealthChange[] {
    const now = this.#clock.now();
    const changes: HealthChange[] = [];
    for (const instance of this.#registry.list()) {
      const silentMs = now - Date.parse(instance.last_heartbeat);
      let to: InstanceStatus = instance.status;
      let reason = '';
      if (silentMs > this.#offlineAfterMs) {
        to = 'offline';
        reason = `no heartbeat for ${(silentMs / 1000).toFixed(1)} s (limit ${this.#offlineAfterMs / 1000} s)`;
      } else if (this.#tunnelUp && instance.status !== 'offline') {
        const up = this.#tunnelUp(runnerIdOf(instance));
        if (!up && instance.status === 'online') {
          to = 'degraded';
          reason = `RevDial tunnel ${runnerIdOf(instance)} is not connected`;
        } else if (up && instance.status === 'degraded') {
          to = 'online';
          reason = `RevDial tunnel ${runnerIdOf(instance)} is connected again`;
        }
      }
      if (to === instance.status) continue;
      const updated = this.#registry.setStatus(instance.id, to, reason);
      if (!updated) continue;
      changes.push({ instance: updated, from: instance.status, to, reason });
      const fields = {
        instanceId: instance.id,
        name: instance.name,
        from: instance.status,
        to,
        lastHeartbeat: instance.last_heartbeat,
        connectedSandboxes: instance.connected_sandboxes,
      };
      const line = `Wolf instance ${instance.name} marked ${to}: ${reason}`;
      if (to === 'online') this.#log.info(fields, line);
      else this.#log.warn(fields, line);
    }
    if (changes.length === 0) this.#log.debug({ instances: this.#registry.list().length }, 'Wolf health check: no changes');
    return changes;
  }
}
