/**
 * The 2026 control plane's host registry (PROTOCOL.md, "Registry, 2026
 * generation"), from the agent's side (`--registry sandboxes`):
 *
 * - Registration is implicit: the plane registers the host when the control
 *   connection (runner id `hydra-<id>` or `sandbox-<id>`) comes up. So the
 *   first heartbeat goes out the moment a control connection is up, on every
 *   reconnect too (the host has no `last_seen` until one arrives), then every
 *   `--heartbeat-interval`.
 * - `POST /api/v1/sandboxes/{id}/heartbeat` with the GPU vendor and render
 *   node (always both: every beat overwrites them), the disk usage of
 *   `--disk-paths` from statfs as the production sender computes it, the
 *   agent's version, and the JSON object of `--heartbeat-extra`, read again
 *   on every beat.
 * - A failed beat (error, timeout, 4xx/5xx) is retried with a jittered
 *   exponential back-off capped at the interval; each call has a time limit.
 *   Nothing here is awaited by the tunnels: the agent only tells this client
 *   that a control connection is up (`controlConnected`) and reads `status()`.
 * - `DELETE /api/v1/sandboxes/{id}` on shutdown only with
 *   `--deregister-on-exit`: the production host software never does.
 *
 * It never calls `POST /api/v1/sandboxes/register`: that is a full-row
 * upsert which would blank every field it does not send.
 */
import { open, statfs as fsStatfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { type Clock, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';
import { safeOrigin } from '../net/endpoints.js';
import type { RegistryObserver, RegistryResult } from '../ops/metrics.js';
import type { GpuFacts } from './gpu-detect.js';
import { REGISTRY_PATHS, backoffDelay, callRegistry, classify, classifyError, registryBase, sandboxIdOf } from './http.js';

/** One `--disk-paths` entry: what the heartbeat calls it, and where statfs looks. */
export interface DiskPath {
  /** `mount_point` in the heartbeat, e.g. `/var`. */
  mountPoint: string;
  /** The path given to statfs: the same, or the host's `/var` mounted at `/host/var` in a container. */
  statPath: string;
}

/** The statfs fields the figures come from (Node's fs.statfs). */
export interface StatFsLike {
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
}

export interface DiskUsage {
  mount_point: string;
  total_bytes: number;
  used_bytes: number;
  avail_bytes: number;
  used_percent: number;
  alert_level: 'ok' | 'warning' | 'critical';
}

export interface SandboxHeartbeatOptions {
  /** The control plane base URL (`HELIX_API_URL`); ws/wss map to http/https. */
  apiUrl: URL;
  token: () => string;
  userAgent: string;
  dispatcher: Dispatcher;
  /** `hydra-<id>` or `sandbox-<id>`: the heartbeat URL names `<id>`. */
  runnerId: string;
  intervalMs: number;
  gpu: GpuFacts;
  diskPaths: DiskPath[];
  /** `helix_version`: the agent's version. */
  version: string;
  /** `--heartbeat-extra`: a JSON object merged into every beat, read again each time. */
  extraFile?: string;
  /** Time limit of one call. Default 10 s, at most the interval. */
  requestTimeoutMs?: number;
  /** The first retry after a failure waits 1–2× this. Default 1 s. */
  retryMinMs?: number;
  /** Retry pace when the plane has no sandboxes API (404). Default 5 min. */
  missingApiRetryMs?: number;
  log: Logger;
  clock?: Clock;
  observer?: RegistryObserver;
  /** Tests: a fixed jitter. */
  random?: () => number;
  /** Tests: statfs stand-in. */
  statfs?: (path: string) => Promise<StatFsLike>;
}

/** What `/readyz` shows of the heartbeat (its detail, never its status). */
export interface HeartbeatStatus {
  api: 'sandboxes';
  sandboxId: string;
  /** null before the first beat. */
  lastResult: RegistryResult | null;
  /** ISO time of the last beat answered 2xx, or null. */
  lastOkAt: string | null;
  consecutiveFailures: number;
  /** Code and message of the last failure while failing. */
  lastError?: { code: string; message: string };
}

/** Largest `--heartbeat-extra` file read. */
export const MAX_EXTRA_BYTES = 64 * 1024;

const STRING_FIELDS = ['gpu_vendor', 'render_node', 'instance_type', 'helix_version'];

/** `used = total − free`, `avail` from f_bavail, `used_percent = used / total × 100`: the production sender's figures. */
export function diskUsageOf(mountPoint: string, s: StatFsLike): DiskUsage {
  const total = s.blocks * s.bsize;
  const free = s.bfree * s.bsize;
  const used = total - free;
  const usedPercent = total > 0 ? (used / total) * 100 : 0;
  return {
    mount_point: mountPoint,
    total_bytes: total,
    used_bytes: used,
    avail_bytes: s.bavail * s.bsize,
    used_percent: usedPercent,
    alert_level: usedPercent >= 95 ? 'critical' : usedPercent >= 80 ? 'warning' : 'ok',
  };
}

/**
 * `/,/var` or `/=/host,/var=/host/var`: a comma-separated list of mount
 * points, each optionally `=` the path to measure it at. Throws a plain Error.
 */
export function parseDiskPaths(text: string): DiskPath[] {
  const out: DiskPath[] = [];
  for (const raw of text.split(',')) {
    const entry = raw.trim();
    if (entry === '') continue;
    const eq = entry.indexOf('=');
    const mountPoint = eq === -1 ? entry : entry.slice(0, eq).trim();
    const statPath = eq === -1 ? entry : entry.slice(eq + 1).trim();
    if (!mountPoint.startsWith('/') || !statPath.startsWith('/')) {
      throw new Error(`"${entry}": expected an absolute path, or MOUNT=PATH (e.g. /var=/host/var)`);
    }
    out.push({ mountPoint, statPath });
  }
  if (out.length > 64) throw new Error('at most 64 paths');
  return out;
}

/** Checks the types of the fields the plane decodes; a wrong type would make it answer 400 to the whole beat. */
export function checkExtra(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not a JSON object');
  const extra = value as Record<string, unknown>;
  for (const key of STRING_FIELDS) {
    if (key in extra && typeof extra[key] !== 'string') throw new Error(`"${key}" must be a string`);
  }
  if ('privileged_mode_enabled' in extra && typeof extra.privileged_mode_enabled !== 'boolean') {
    throw new Error('"privileged_mode_enabled" must be true or false');
  }
  if ('desktop_versions' in extra) {
    const d = extra.desktop_versions;
    if (d === null || typeof d !== 'object' || Array.isArray(d) || Object.values(d).some((v) => typeof v !== 'string')) {
      throw new Error('"desktop_versions" must be an object of strings (name → image hash)');
    }
  }
  if ('disk_usage' in extra && !Array.isArray(extra.disk_usage)) throw new Error('"disk_usage" must be a list');
  return extra;
}

export class SandboxHeartbeat {
  readonly #o: SandboxHeartbeatOptions;
  readonly #clock: Clock;
  readonly #url: string;
  readonly #sandboxId: string;
  readonly #stop = new AbortController();
  readonly #statfs: (path: string) => Promise<StatFsLike>;
  #running: Promise<void> | undefined;
  /** A control connection came up since the last beat started. */
  #kicked = false;
  #wake: (() => void) | undefined;
  #failures = 0;
  #lastResult: RegistryResult | null = null;
  #lastOkAt: number | undefined;
  #lastError: { code: string; message: string } | undefined;
  #warnedMissing = false;
  /** The last problem reported for the extra file / each disk path: warn once per change, not every beat. */
  #extraProblem: string | undefined;
  readonly #diskProblems = new Map<string, string>();

  constructor(options: SandboxHeartbeatOptions) {
    const id = sandboxIdOf(options.runnerId);
    if (id === undefined) {
      throw new RevdialError(ErrorCodes.CONFIG_INVALID, `runner id ${options.runnerId} names no host: it must start with hydra- or sandbox-`);
    }
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#sandboxId = id;
    this.#url = `${registryBase(options.apiUrl, REGISTRY_PATHS.sandboxes)}/${encodeURIComponent(id)}`;
    this.#statfs = options.statfs ?? ((path) => fsStatfs(path));
  }

  get sandboxId(): string {
    return this.#sandboxId;
  }

  /** Starts the loop; the first beat waits for `controlConnected`. */
  start(): void {
    this.#running ??= this.#run();
  }

  /** A control connection is up (connect or reconnect): beat now, cutting any back-off short. */
  controlConnected(): void {
    this.#kicked = true;
    this.#wake?.();
  }

  status(): HeartbeatStatus {
    return {
      api: 'sandboxes',
      sandboxId: this.#sandboxId,
      lastResult: this.#lastResult,
      lastOkAt: this.#lastOkAt === undefined ? null : new Date(this.#lastOkAt).toISOString(),
      consecutiveFailures: this.#failures,
      ...(this.#lastError && this.#failures > 0 ? { lastError: this.#lastError } : {}),
    };
  }

  /**
   * Stops beating (an in-flight beat is abandoned). With `deregisterTimeoutMs`
   * it then sends `DELETE /api/v1/sandboxes/{id}`, waiting at most that long.
   */
  async stop(deregisterTimeoutMs?: number): Promise<void> {
    this.#stop.abort(new RevdialError(ErrorCodes.SHUTTING_DOWN, 'agent is shutting down'));
    this.#wake?.();
    await this.#running;
    this.#o.observer?.registered?.(false);
    if (deregisterTimeoutMs === undefined) return;
    const id = this.#sandboxId;
    try {
      const answer = await callRegistry({
        method: 'DELETE',
        url: this.#url,
        token: this.#o.token,
        userAgent: this.#o.userAgent,
        dispatcher: this.#o.dispatcher,
        timeoutMs: deregisterTimeoutMs,
        clock: this.#clock,
        apiUrl: this.#o.apiUrl,
      });
      if (classify(answer.status) === 'ok') this.#o.log.info({ sandboxId: id }, 'Deregistered this host from the control plane (--deregister-on-exit)');
      else this.#o.log.warn({ sandboxId: id, status: answer.status, code: ErrorCodes.REGISTRY_FAILED }, `Deregistration answered HTTP ${answer.status}`);
    } catch (err) {
      this.#o.log.warn({ sandboxId: id, code: codeOf(err) }, `Deregistration failed: ${describe(err)}`);
    }
  }

  /** A method, not `signal.aborted` inline: the compiler would take it for constant inside the loop. */
  #stopping(): boolean {
    return this.#stop.signal.aborted;
  }

  async #run(): Promise<void> {
    let wait = Infinity; // until the first control connection
    while (!this.#stopping()) {
      await this.#sleep(wait);
      if (this.#stopping()) break;
      this.#kicked = false;
      const result = await this.#beat();
      if (this.#stopping()) break;
      if (result === 'ok') wait = this.#o.intervalMs;
      else if (result === 'not_found') wait = this.#o.missingApiRetryMs ?? 300_000;
      else {
        wait = backoffDelay(this.#failures, {
          minMs: Math.min(this.#o.retryMinMs ?? 1_000, this.#o.intervalMs),
          maxMs: this.#o.intervalMs,
          ...(this.#o.random ? { random: this.#o.random } : {}),
        });
      }
    }
  }

  /** Resolves after `ms`, at once if a control connection came up meanwhile, or on stop. */
  #sleep(ms: number): Promise<void> {
    if (this.#kicked || this.#stop.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = Number.isFinite(ms) ? this.#clock.setTimeout(() => done(), ms) : undefined;
      const done = (): void => {
        this.#clock.clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      this.#wake = done;
    });
  }

  async #beat(): Promise<RegistryResult | 'aborted'> {
    const { observer, log } = this.#o;
    const body = await this.#body();
    const started = this.#clock.now();
    const startedHr = performance.now();
    let result: RegistryResult;
    let failure: { code: string; message: string; status?: number } | undefined;
    try {
      const answer = await callRegistry({
        method: 'POST',
        url: `${this.#url}/heartbeat`,
        token: this.#o.token,
        userAgent: this.#o.userAgent,
        dispatcher: this.#o.dispatcher,
        body,
        timeoutMs: Math.min(this.#o.requestTimeoutMs ?? 10_000, this.#o.intervalMs),
        clock: this.#clock,
        signal: this.#stop.signal,
        apiUrl: this.#o.apiUrl,
      });
      result = classify(answer.status);
      if (result !== 'ok') {
        const hint =
          result === 'rejected'
            ? ': check RUNNER_TOKEN'
            : answer.status === 400
              ? `: the plane refused the body (${answer.text.trim() || 'no reason given'}); check --heartbeat-extra`
              : '';
        failure = { code: ErrorCodes.REGISTRY_FAILED, message: `Heartbeat answered HTTP ${answer.status}${hint}`, status: answer.status };
      }
    } catch (err) {
      if (this.#stop.signal.aborted) return 'aborted';
      result = classifyError(err);
      failure = { code: codeOf(err), message: `Heartbeat failed: ${describe(err)}` };
    }
    observer?.heartbeatDuration?.((performance.now() - startedHr) / 1000);
    this.#lastResult = result;
    if (result === 'ok') {
      if (this.#failures > 0) log.info({ sandboxId: this.#sandboxId, failures: this.#failures }, 'Heartbeats answered again');
      else if (this.#lastOkAt === undefined) {
        log.info(
          { sandboxId: this.#sandboxId, gpuVendor: body.gpu_vendor, renderNode: body.render_node, disks: (body.disk_usage as DiskUsage[]).length },
          'Heartbeat sent to the control plane (sandboxes API)',
        );
      } else log.debug({ sandboxId: this.#sandboxId }, 'Heartbeat sent');
      this.#failures = 0;
      this.#lastOkAt = started;
      this.#lastError = undefined;
      this.#warnedMissing = false;
      observer?.heartbeatOkAt?.(started);
      observer?.registered?.(true);
    } else if (result === 'not_found') {
      // Not a failure streak: an older control plane without the API. One warning, slow retries.
      if (!this.#warnedMissing) {
        this.#warnedMissing = true;
        log.warn(
          { controlPlane: safeOrigin(this.#o.apiUrl), status: 404, code: ErrorCodes.REGISTRY_FAILED },
          'The control plane has no sandboxes API (HTTP 404 on heartbeat): tunnels work without it; check --registry (REVDIAL_REGISTRY); retrying slowly',
        );
      }
    } else if (failure) {
      this.#failures++;
      this.#lastError = { code: failure.code, message: failure.message };
      // One line per failure streak at warn, the rest at debug: a down control plane does not flood the log.
      const level = this.#failures === 1 ? 'warn' : 'debug';
      log[level](
        { sandboxId: this.#sandboxId, failures: this.#failures, code: failure.code, ...(failure.status !== undefined ? { status: failure.status } : {}) },
        failure.message,
      );
    }
    observer?.heartbeatFailures?.(this.#failures);
    observer?.heartbeat?.(result);
    return result;
  }

  async #body(): Promise<Record<string, unknown>> {
    const body: Record<string, unknown> = {
      gpu_vendor: this.#o.gpu.vendor,
      render_node: this.#o.gpu.renderNode,
      disk_usage: await this.#disks(),
      helix_version: this.#o.version,
    };
    const extra = await this.#readExtra();
    return extra ? { ...body, ...extra } : body;
  }

  async #disks(): Promise<DiskUsage[]> {
    const out: DiskUsage[] = [];
    for (const d of this.#o.diskPaths) {
      try {
        out.push(diskUsageOf(d.mountPoint, await this.#statfs(d.statPath)));
        if (this.#diskProblems.delete(d.statPath)) this.#o.log.info({ path: d.statPath }, `Disk usage of ${d.statPath} readable again`);
      } catch (err) {
        const problem = (err as NodeJS.ErrnoException).code ?? describe(err);
        if (this.#diskProblems.get(d.statPath) === problem) continue;
        this.#diskProblems.set(d.statPath, problem);
        this.#o.log.warn(
          { path: d.statPath, code: ErrorCodes.DISK_USAGE_FAILED, cause: problem },
          `Cannot read the disk usage of ${d.statPath} (${problem}): heartbeats leave it out; check --disk-paths (REVDIAL_DISK_PATHS)`,
        );
      }
    }
    return out;
  }

  /** The extra object, or undefined (no file, or a bad one: warned once per change of problem). */
  async #readExtra(): Promise<Record<string, unknown> | undefined> {
    const path = this.#o.extraFile;
    if (path === undefined) return undefined;
    let problem: string;
    try {
      const fh = await open(path, 'r');
      let text: string;
      try {
        const buf = Buffer.allocUnsafe(MAX_EXTRA_BYTES + 1);
        const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
        if (bytesRead > MAX_EXTRA_BYTES) throw new Error(`larger than ${MAX_EXTRA_BYTES} bytes`);
        text = buf.subarray(0, bytesRead).toString('utf8');
      } finally {
        await fh.close();
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new Error('not valid JSON');
      }
      const extra = checkExtra(parsed);
      if (this.#extraProblem !== undefined) this.#o.log.info({ path }, `--heartbeat-extra ${path} is valid again: merged into heartbeats`);
      this.#extraProblem = undefined;
      return extra;
    } catch (err) {
      problem = (err as NodeJS.ErrnoException).code ?? describe(err);
    }
    if (this.#extraProblem !== problem) {
      this.#extraProblem = problem;
      this.#o.log.warn(
        { path, code: ErrorCodes.HEARTBEAT_EXTRA_INVALID, cause: problem },
        `--heartbeat-extra ${path}: ${problem}; heartbeats are sent without it until it is fixed`,
      );
    }
    return undefined;
  }
}
