/**
 * GPU hosts as the 2026 control plane keeps them (PROTOCOL.md, "Registry,
 * 2026 generation"): in that API a *sandbox* is a GPU host, registered
 * implicitly when its control connection comes up, kept fresh by heartbeats
 * with GPU and disk facts, and marked offline by a reaper when silent. The
 * HTTP endpoints are in sandbox-hosts-api.ts. (This project's own session
 * containers on Wolfs are placements, placements.ts: another thing.)
 *
 * - `connected(runnerId)`: a `hydra-<id>` or `sandbox-<id>` runner id
 *   registers host `<id>`, or flips it back online; other ids are ignored.
 *   The row has no `last_seen` until the first heartbeat.
 * - `heartbeat(id, body)`: unknown ids change nothing (the answer is the same
 *   200, so an agent cannot tell it was forgotten). `gpu_vendor` and
 *   `render_node` are overwritten on every beat, blanks included; the other
 *   fields when present.
 * - The reaper marks offline every online host silent for `offlineAfterMs`
 *   (default 5 min), sweeping every `sweepMs` (default 1 min). A host that
 *   never beat counts its silence from when it came online.
 *
 * In memory, with an injectable clock.
 */
import { EventEmitter } from 'node:events';
import { type Clock, type Timer, systemClock } from '../../src/agent/clock.js';

export type HostStatus = 'online' | 'offline';

export interface DiskUsageRow {
  mount_point: string;
  total_bytes: number;
  used_bytes: number;
  avail_bytes: number;
  used_percent: number;
  alert_level: string;
}

/** One GPU host, with the 2026 API's JSON field names. */
export interface SandboxHost {
  id: string;
  status: HostStatus;
  /** ISO time of the last heartbeat; null until the first. */
  last_seen: string | null;
  gpu_vendor: string;
  render_node: string;
  disk_usage: DiskUsageRow[];
  privileged_mode_enabled: boolean;
  instance_type: string;
  desktop_versions: Record<string, string>;
  helix_version: string;
  created_at: string;
  updated_at: string;
}

/** A decoded heartbeat body: every field optional. */
export interface HeartbeatBody {
  gpu_vendor?: string;
  render_node?: string;
  disk_usage?: DiskUsageRow[];
  privileged_mode_enabled?: boolean;
  instance_type?: string;
  desktop_versions?: Record<string, string>;
  helix_version?: string;
}

export const HOST_RUNNER_PREFIXES = ['hydra-', 'sandbox-'] as const;

/** The host a runner id registers, or undefined (wolf-, desktop-, anything else). */
export function hostIdOf(runnerId: string): string | undefined {
  for (const prefix of HOST_RUNNER_PREFIXES) {
    if (runnerId.startsWith(prefix) && runnerId.length > prefix.length) return runnerId.slice(prefix.length);
  }
  return undefined;
}

export interface SandboxHostsOptions {
  clock?: Clock;
  /** Silence that makes a host offline. Default 5 min. */
  offlineAfterMs?: number;
  /** Reaper period. Default 1 min. */
  sweepMs?: number;
}

/**
 * Events: 'registered' (host, { again: boolean }) on a control connection,
 * 'heartbeat' (host, body) for a known host, 'ignored-heartbeat' (id, body)
 * for an unknown one, 'status' (host, previous, reason), 'deleted' (id, existed),
 * 'upserted' (host) on `POST /register`.
 */
export class SandboxHosts extends EventEmitter {
  readonly #byId = new Map<string, SandboxHost>();
  readonly #clock: Clock;
  readonly #offlineAfterMs: number;
  readonly #sweepMs: number;
  #reaper: Timer | undefined;

  constructor(options: SandboxHostsOptions = {}) {
    super();
    this.#clock = options.clock ?? systemClock;
    this.#offlineAfterMs = options.offlineAfterMs ?? 5 * 60_000;
    this.#sweepMs = options.sweepMs ?? 60_000;
  }

  #now(): string {
    return new Date(this.#clock.now()).toISOString();
  }

  /** Implicit registration: a control connection came up with this runner id. */
  connected(runnerId: string): SandboxHost | undefined {
    const id = hostIdOf(runnerId);
    if (id === undefined) return undefined;
    const now = this.#now();
    const existing = this.#byId.get(id);
    if (existing) {
      const previous = existing.status;
      existing.status = 'online';
      existing.updated_at = now;
      this.emit('registered', { ...existing }, { again: true });
      if (previous !== 'online') this.emit('status', { ...existing }, previous, 'control connection');
      return { ...existing };
    }
    const host: SandboxHost = {
      id,
      status: 'online',
      last_seen: null,
      gpu_vendor: '',
      render_node: '',
      disk_usage: [],
      privileged_mode_enabled: false,
      instance_type: '',
      desktop_versions: {},
      helix_version: '',
      created_at: now,
      updated_at: now,
    };
    this.#byId.set(id, host);
    this.emit('registered', { ...host }, { again: false });
    return { ...host };
  }

  /** Records a heartbeat; returns the host, or undefined for an id it does not know (nothing changes). */
  heartbeat(id: string, body: HeartbeatBody): SandboxHost | undefined {
    const host = this.#byId.get(id);
    if (!host) {
      this.emit('ignored-heartbeat', id, body);
      return undefined;
    }
    const now = this.#now();
    const previous = host.status;
    host.gpu_vendor = body.gpu_vendor ?? '';
    host.render_node = body.render_node ?? '';
    if (body.disk_usage !== undefined) host.disk_usage = body.disk_usage;
    if (body.privileged_mode_enabled !== undefined) host.privileged_mode_enabled = body.privileged_mode_enabled;
    if (body.instance_type !== undefined) host.instance_type = body.instance_type;
    if (body.desktop_versions !== undefined) host.desktop_versions = body.desktop_versions;
    if (body.helix_version !== undefined) host.helix_version = body.helix_version;
    host.last_seen = now;
    host.updated_at = now;
    host.status = 'online';
    this.emit('heartbeat', { ...host }, body);
    if (previous !== 'online') this.emit('status', { ...host }, previous, 'heartbeat');
    return { ...host };
  }

  /** `POST /register`: a full-row upsert, fields not given become empty (as the 2026 plane does). */
  upsert(id: string, body: HeartbeatBody & { status?: string }): SandboxHost {
    const now = this.#now();
    const host: SandboxHost = {
      id,
      status: body.status === 'offline' ? 'offline' : 'online',
      last_seen: null,
      gpu_vendor: body.gpu_vendor ?? '',
      render_node: body.render_node ?? '',
      disk_usage: body.disk_usage ?? [],
      privileged_mode_enabled: body.privileged_mode_enabled ?? false,
      instance_type: body.instance_type ?? '',
      desktop_versions: body.desktop_versions ?? {},
      helix_version: body.helix_version ?? '',
      created_at: this.#byId.get(id)?.created_at ?? now,
      updated_at: now,
    };
    this.#byId.set(id, host);
    this.emit('upserted', { ...host });
    return { ...host };
  }

  /** Removes a host; true when it existed. */
  delete(id: string): boolean {
    const existed = this.#byId.delete(id);
    this.emit('deleted', id, existed);
    return existed;
  }

  /** Forgets every host, as a restarted control plane with an empty store would. */
  clear(): void {
    this.#byId.clear();
  }

  get(id: string): SandboxHost | undefined {
    const h = this.#byId.get(id);
    return h && { ...h };
  }

  list(): SandboxHost[] {
    return [...this.#byId.values()].map((h) => ({ ...h }));
  }

  /** One reaper sweep: online hosts silent for offlineAfterMs go offline. Returns their ids. */
  sweep(): string[] {
    const now = this.#clock.now();
    const reaped: string[] = [];
    for (const host of this.#byId.values()) {
      if (host.status !== 'online') continue;
      const since = Date.parse(host.last_seen ?? host.updated_at);
      if (now - since < this.#offlineAfterMs) continue;
      host.status = 'offline';
      host.updated_at = new Date(now).toISOString();
      reaped.push(host.id);
      this.emit('status', { ...host }, 'online', `no heartbeat for ${Math.round((now - since) / 1000)} s`);
    }
    return reaped;
  }

  startReaper(): void {
    this.#reaper ??= this.#clock.setInterval(() => this.sweep(), this.#sweepMs);
    this.#reaper.unref();
  }

  stopReaper(): void {
    this.#clock.clearInterval(this.#reaper);
    this.#reaper = undefined;
  }
}
