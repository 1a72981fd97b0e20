/**
 * Placements: the session containers this project's control plane schedules
 * onto Wolf instances (the original design called them sandboxes; in the
 * 2026 API `/api/v1/sandboxes` means GPU hosts, see sandbox-hosts.ts, so
 * they have a name and a path of their own, `/api/v1/placements`).
 *
 * Creating a placement asks the scheduler for the
 * least-loaded healthy Wolf, counts the placement on it and records it as the
 * holder; destroying one gives the slot back; a request for a placement goes
 * through the holder's RevDial tunnel (runner id `wolf-<name>`) as an HTTP
 * request to that Wolf's API.
 *
 * Placements are kept in memory. One whose Wolf was deregistered stays listed
 * (its `instance_id` no longer resolves) until it is destroyed; requests for
 * it fail with REVDIAL_PLACEMENT_UNREACHABLE.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type Clock, systemClock } from '../../src/agent/clock.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../../src/agent/errors.js';
import type { Logger } from '../../src/agent/logger.js';
import { type Registry, runnerIdOf } from './registry.js';
import { type ScheduleRequest, selectInstance } from './scheduler.js';
import type { TunnelRequest } from './server.js';

export interface Placement {
  id: string;
  /** The Wolf instance that holds it. */
  instance_id: string;
  instance_name: string;
  runner_id: string;
  /** The GPU type asked for, or null for "any". */
  gpu_type: string | null;
  created_at: string;
}

/** What placements need of the control plane: ControlPlane.request. */
export interface TunnelClient {
  request(runnerId: string, request: TunnelRequest, signal?: AbortSignal): Promise<IncomingMessage>;
}

export interface PlacementsOptions {
  registry: Registry;
  tunnels: TunnelClient;
  clock?: Clock;
  log?: Logger;
}

export class Placements {
  readonly #registry: Registry;
  readonly #tunnels: TunnelClient;
  readonly #clock: Clock;
  readonly #log: Logger | undefined;
  readonly #byId = new Map<string, Placement>();

  constructor(options: PlacementsOptions) {
    this.#registry = options.registry;
    this.#tunnels = options.tunnels;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log;
  }

  /**
   * Places a new session container on the least-loaded qualifying Wolf. Synchronous:
   * choosing and counting happen in one step, so concurrent creates never
   * overfill an instance. Throws REVDIAL_NO_INSTANCE_AVAILABLE.
   */
  create(request: ScheduleRequest = {}): Placement {
    const instance = selectInstance(this.#registry.list(), request);
    this.#registry.adjustSandboxes(instance.id, 1);
    const gpu = request.gpuType?.trim() ? request.gpuType.trim().toLowerCase() : null;
    const placement: Placement = {
      id: `plc-${randomBytes(8).toString('hex')}`,
      instance_id: instance.id,
      instance_name: instance.name,
      runner_id: runnerIdOf(instance),
      gpu_type: gpu,
      created_at: new Date(this.#clock.now()).toISOString(),
    };
    this.#byId.set(placement.id, placement);
    this.#log?.info(
      { placementId: placement.id, instanceId: instance.id, name: instance.name, connected: instance.connected_sandboxes + 1, max: instance.max_sandboxes },
      `Placement ${placement.id} placed on Wolf instance ${instance.name}`,
    );
    return { ...placement };
  }

  /** Forgets a placement and frees its slot on the holder. Throws REVDIAL_PLACEMENT_NOT_FOUND. */
  destroy(id: string): Placement {
    const placement = this.#require(id);
    this.#byId.delete(id);
    const holder = this.#registry.adjustSandboxes(placement.instance_id, -1);
    this.#log?.info(
      { placementId: id, instanceId: placement.instance_id, name: placement.instance_name, connected: holder?.connected_sandboxes ?? null },
      `Placement ${id} destroyed`,
    );
    return { ...placement };
  }

  get(id: string): Placement | undefined {
    const s = this.#byId.get(id);
    return s && { ...s };
  }

  list(): Placement[] {
    return [...this.#byId.values()].map((s) => ({ ...s }));
  }

  /** Placements per holder name, e.g. `{ "wolf-a": 7, "wolf-b": 7, "wolf-c": 6 }`. */
  spread(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.#byId.values()) out[s.instance_name] = (out[s.instance_name] ?? 0) + 1;
    return out;
  }

  /**
   * Sends an HTTP request to the Wolf API of the placement's holder, through its
   * RevDial tunnel. Throws REVDIAL_PLACEMENT_NOT_FOUND, or
   * REVDIAL_PLACEMENT_UNREACHABLE (the dial error on `.cause`) when the holder
   * is gone or its tunnel cannot be opened.
   */
  async request(id: string, request: TunnelRequest, signal?: AbortSignal): Promise<IncomingMessage> {
    const placement = this.#require(id);
    if (!this.#registry.get(placement.instance_id)) {
      throw new RevdialError(
        ErrorCodes.PLACEMENT_UNREACHABLE,
        `placement ${id}: its Wolf instance ${placement.instance_name} is no longer registered; destroy the placement and create a new one`,
      );
    }
    try {
      return await this.#tunnels.request(placement.runner_id, request, signal);
    } catch (err) {
      throw new RevdialError(
        ErrorCodes.PLACEMENT_UNREACHABLE,
        `placement ${id}: no tunnel to Wolf ${placement.instance_name} (${placement.runner_id}): ${codeOf(err)} ${describe(err)}`,
        { cause: err },
      );
    }
  }

  #require(id: string): Placement {
    const placement = this.#byId.get(id);
    if (!placement) throw new RevdialError(ErrorCodes.PLACEMENT_NOT_FOUND, `no placement with id ${id}`);
    return placement;
  }
}
