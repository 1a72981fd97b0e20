/**
 * The Wolf instance registry of the control plane (PROTOCOL.md, "Registry"):
 * which Wolf hosts exist, how to reach them, their GPU type, capacity, load
 * and health. The HTTP endpoints are in registry-api.ts; the health monitor
 * and the scheduler read and update instances through this class only.
 *
 * Records live behind `InstanceStore`, in memory by default. The store is
 * synchronous on purpose: the scheduler picks an instance and counts the new
 * sandbox on it in one step, with no await in between, so two concurrent
 * requests can never both take the last free slot. A database-backed store
 * would need that step as one transaction (Helix's Postgres store does
 * `UPDATE ... SET connected_sandboxes = connected_sandboxes + 1`).
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { type Clock, systemClock } from '../../src/agent/clock.js';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';

export type InstanceStatus = 'online' | 'offline' | 'degraded';

/** One Wolf host, as the registry API shows it (JSON field names of the reference). */
export interface WolfInstance {
  id: string;
  name: string;
  address: string;
  status: InstanceStatus;
  /** ISO 8601 time of the last register or heartbeat. */
  last_heartbeat: string;
  connected_sandboxes: number;
  max_sandboxes: number;
  gpu_type: string;
  /** ISO 8601 time of the first registration under this name. */
  registered_at: string;
}

export interface RegisterInput {
  name: string;
  address?: string;
  gpu_type?: string;
  max_sandboxes?: number;
}

/** Where instances are kept. Implementations return and accept whole records. */
export interface InstanceStore {
  get(id: string): WolfInstance | undefined;
  findByName(name: string): WolfInstance | undefined;
  /** In registration order. */
  list(): WolfInstance[];
  put(instance: WolfInstance): void;
  delete(id: string): boolean;
}

export class MemoryInstanceStore implements InstanceStore {
  readonly #byId = new Map<string, WolfInstance>();

  get(id: string): WolfInstance | undefined {
    const i = this.#byId.get(id);
    return i && { ...i };
  }

  findByName(name: string): WolfInstance | undefined {
    for (const i of this.#byId.values()) if (i.name === name) return { ...i };
    return undefined;
  }

  list(): WolfInstance[] {
    return [...this.#byId.values()].map((i) => ({ ...i }));
  }

  put(instance: WolfInstance): void {
    this.#byId.set(instance.id, { ...instance });
  }

  delete(id: string): boolean {
    return this.#byId.delete(id);
  }
}

/** Capacity assumed when a registration gives none (the reference's curl example omits it). */
export const DEFAULT_MAX_SANDBOXES = 10;

/** The runner id the instance's agent connects with (PROTOCOL.md: `wolf-` + WOLF_ID). */
export function runnerIdOf(instance: Pick<WolfInstance, 'name'>): string {
  return `wolf-${instance.name}`;
}

export interface RegistryOptions {
  store?: InstanceStore;
  clock?: Clock;
}

/**
 * Events: 'registered' (instance, { again: boolean }), 'heartbeat' (instance),
 * 'status' (instance, previous: InstanceStatus, reason: string),
 * 'deregistered' (instance).
 */
export class Registry extends EventEmitter {
  readonly store: InstanceStore;
  readonly #clock: Clock;

  constructor(options: RegistryOptions = {}) {
    super();
    this.store = options.store ?? new MemoryInstanceStore();
    this.#clock = options.clock ?? systemClock;
  }

  #nowIso(): string {
    return new Date(this.#clock.now()).toISOString();
  }

  /**
   * Registers a Wolf, or registers it again under the same name (after a
   * restart, or after a 404 heartbeat): the name is the identity, so the
   * record, its id and its sandbox count are kept and its address, GPU type and
   * capacity updated. A second host claiming the same name takes it over, as
   * the second RevDial connection with one runner id does ("last wins").
   */
  register(input: RegisterInput): WolfInstance {
    const now = this.#nowIso();
    const existing = this.store.findByName(input.name);
    const instance: WolfInstance = {
      id: existing?.id ?? randomUUID(),
      name: input.name,
      address: input.address ?? '',
      status: 'online',
      last_heartbeat: now,
      connected_sandboxes: existing?.connected_sandboxes ?? 0,
      max_sandboxes: input.max_sandboxes ?? DEFAULT_MAX_SANDBOXES,
      gpu_type: input.gpu_type ?? '',
      registered_at: existing?.registered_at ?? now,
    };
    this.store.put(instance);
    this.emit('registered', { ...instance }, { again: existing !== undefined });
    if (existing && existing.status !== 'online') this.emit('status', { ...instance }, existing.status, 'registered again');
    return instance;
  }

  /** Records a heartbeat; an offline instance comes back online. Throws INSTANCE_NOT_FOUND. */
  heartbeat(id: string): WolfInstance {
    const instance = this.#require(id);
    const previous = instance.status;
    instance.last_heartbeat = this.#nowIso();
    // `degraded` is the health monitor's verdict on the tunnel, which a
    // heartbeat over plain HTTP says nothing about: only the monitor lifts it.
    if (previous === 'offline') instance.status = 'online';
    this.store.put(instance);
    this.emit('heartbeat', { ...instance });
    if (instance.status !== previous) this.emit('status', { ...instance }, previous, 'heartbeat received');
    return instance;
  }

  /** Removes an instance. Throws INSTANCE_NOT_FOUND. */
  deregister(id: string): WolfInstance {
    const instance = this.#require(id);
    this.store.delete(id);
    this.emit('deregistered', instance);
    return instance;
  }

  get(id: string): WolfInstance | undefined {
    return this.store.get(id);
  }

  findByName(name: string): WolfInstance | undefined {
    return this.store.findByName(name);
  }

  list(): WolfInstance[] {
    return this.store.list();
  }

  /** Changes an instance's status (health monitor). No-op when unchanged or unknown. */
  setStatus(id: string, status: InstanceStatus, reason: string): WolfInstance | undefined {
    const instance = this.store.get(id);
    if (!instance || instance.status === status) return instance;
    const previous = instance.status;
    instance.status = status;
    this.store.put(instance);
    this.emit('status', { ...instance }, previous, reason);
    return instance;
  }

  /**
   * Adds `delta` (+1 or -1) to an instance's sandbox count, never below 0.
   * Returns the updated instance, or undefined when it is no longer registered.
   */
  adjustSandboxes(id: string, delta: number): WolfInstance | undefined {
    const instance = this.store.get(id);
    if (!instance) return undefined;
    instance.connected_sandboxes = Math.max(0, instance.connected_sandboxes + delta);
    this.store.put(instance);
    return instance;
  }

  #require(id: string): WolfInstance {
    const instance = this.store.get(id);
    if (!instance) throw new RevdialError(ErrorCodes.INSTANCE_NOT_FOUND, `no Wolf instance with id ${id}: register it first`);
    return instance;
  }
}
