/**
 * Sandboxes on the control plane: creating one asks the scheduler for the
 * least-loaded healthy Wolf, counts the sandbox on it and records it as the
 * holder; destroying one gives the slot back; a request for a sandbox goes
 * through the holder's RevDial tunnel (runner id `wolf-<name>`) as an HTTP
 * request to that Wolf's API.
 *
 * Sandboxes are kept in memory. One whose Wolf was deregistered stays listed
 * (its `instance_id` no longer resolves) until it is destroyed; requests for
 * it fail with REVDIAL_SANDBOX_UNREACHABLE.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type Clock, systemClock } from '../../src/agent/clock.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../../src/agent/errors.js';
import type { Logger } from '../../src/agent/logger.js';
import { type Registry, runnerIdOf } from './registry.js';
import { type ScheduleRequest, selectInstance } from './scheduler.js';
import type { TunnelRequest } from './server.js';

export interface Sandbox {
  id: string;
  /** The Wolf instance that holds it. */
  instance_id: string;
  instance_name: string;
  runner_id: string;
  /** The GPU type asked for, or null for "any". */
  gpu_type: string | null;
  created_at: string;
}

/** What sandboxes need of the control plane: ControlPlane.request. */
export interface TunnelClient {
  request(runnerId: string, request: TunnelRequest, signal?: AbortSignal): Promise<IncomingMessage>;
}

export interface SandboxesOptions {
  registry: Registry;
  tunnels: TunnelClient;
  clock?: Clock;
  log?: Logger;
}

export class Sandboxes {
  readonly #registry: Registry;
  readonly #tunnels: TunnelClient;
  readonly #clock: Clock;
  readonly #log: Logger | undefined;
  readonly #byId = new Map<string, Sandbox>();

  constructor(options: SandboxesOptions) {
    this.#registry = options.registry;
    this.#tunnels = options.tunnels;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log;
  }

  /**
   * Places a new sandbox on the least-loaded qualifying Wolf. Synchronous:
   * choosing and counting happen in one step, so concurrent creates never
   * overfill an instance. Throws REVDIAL_NO_INSTANCE_AVAILABLE.
   */
  create(request: ScheduleRequest = {}): Sandbox {
    const instance = selectInstance(this.#registry.list(), request);
    this.#registry.adjustSandboxes(instance.id, 1);
    const gpu = request.gpuType?.trim() ? request.gpuType.trim().toLowerCase() : null;
    const sandbox: Sandbox = {
      id: `sbx-${randomBytes(8).toString('hex')}`,
      instance_id: instance.id,
      instance_name: instance.name,
      runner_id: runnerIdOf(instance),
      gpu_type: gpu,
      created_at: new Date(this.#clock.now()).toISOString(),
    };
    this.#byId.set(sandbox.id, sandbox);
    this.#log?.info(
      { sandboxId: sandbox.id, instanceId: instance.id, name: instance.name, connected: instance.connected_sandboxes + 1, max: instance.max_sandboxes },
      `Sandbox ${sandbox.id} placed on Wolf instance ${instance.name}`,
    );
    return { ...sandbox };
  }

  /** Forgets a sandbox and frees its slot on the holder. Throws REVDIAL_SANDBOX_NOT_FOUND. */
  destroy(id: string): Sandbox {
    const sandbox = this.#require(id);
    this.#byId.delete(id);
    const holder = this.#registry.adjustSandboxes(sandbox.instance_id, -1);
    this.#log?.info(
      { sandboxId: id, instanceId: sandbox.instance_id, name: sandbox.instance_name, connected: holder?.connected_sandboxes ?? null },
      `Sandbox ${id} destroyed`,
    );
    return { ...sandbox };
  }

  get(id: string): Sandbox | undefined {
    const s = this.#byId.get(id);
    return s && { ...s };
  }

  list(): Sandbox[] {
    return [...this.#byId.values()].map((s) => ({ ...s }));
  }

  /** Sandboxes per holder name, e.g. `{ "wolf-a": 7, "wolf-b": 7, "wolf-c": 6 }`. */
  spread(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.#byId.values()) out[s.instance_name] = (out[s.instance_name] ?? 0) + 1;
    return out;
  }

  /**
   * Sends an HTTP request to the Wolf API of the sandbox's holder, through its
   * RevDial tunnel. Throws REVDIAL_SANDBOX_NOT_FOUND, or
   * REVDIAL_SANDBOX_UNREACHABLE (the dial error on `.cause`) when the holder
   * is gone or its tunnel cannot be opened.
   */
  async request(id: string, request: TunnelRequest, signal?: AbortSignal): Promise<IncomingMessage> {
    const sandbox = this.#require(id);
    if (!this.#registry.get(sandbox.instance_id)) {
      throw new RevdialError(
        ErrorCodes.SANDBOX_UNREACHABLE,
        `sandbox ${id}: its Wolf instance ${sandbox.instance_name} is no longer registered; destroy the sandbox and create a new one`,
      );
    }
    try {
      return await this.#tunnels.request(sandbox.runner_id, request, signal);
    } catch (err) {
      throw new RevdialError(
        ErrorCodes.SANDBOX_UNREACHABLE,
        `sandbox ${id}: no tunnel to Wolf ${sandbox.instance_name} (${sandbox.runner_id}): ${codeOf(err)} ${describe(err)}`,
        { cause: err },
      );
    }
  }

  #require(id: string): Sandbox {
    const sandbox = this.#byId.get(id);
    if (!sandbox) throw new RevdialError(ErrorCodes.SANDBOX_NOT_FOUND, `no sandbox with id ${id}`);
    return sandbox;
  }
}
