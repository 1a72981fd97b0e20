/**
 * The least-loaded scheduler: of the instances that are `online`, match the
 * requested GPU type (when one is given) and have a free slot
 * (`connected_sandboxes < max_sandboxes`), the one with the lowest load ratio
 * `connected / max`. Ties go to the instance with fewer placements, then to the
 * one registered first, so equal Wolfs fill round-robin and never differ by
 * more than one.
 *
 * A pure function over a list: placements.ts calls it and counts the new
 * placement in the same synchronous step.
 */
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import type { WolfInstance } from './registry.js';

export interface ScheduleRequest {
  /** e.g. `nvidia`, `amd`, `none`; compared without regard to case. Empty or absent: any. */
  gpuType?: string | undefined;
}

/** Why nothing qualified, for the error and the API answer. */
export interface NoInstanceDetails {
  gpuType: string | null;
  registered: number;
  online: number;
  matchingGpu: number;
  withCapacity: number;
}

export class NoInstanceAvailableError extends RevdialError {
  readonly details: NoInstanceDetails;

  constructor(details: NoInstanceDetails) {
    const want = details.gpuType ? ` with GPU type "${details.gpuType}"` : '';
    let why: string;
    if (details.registered === 0) why = 'no Wolf instance is registered';
    else if (details.online === 0) why = `none of the ${details.registered} registered Wolf instances is online`;
    else if (details.matchingGpu === 0) why = `none of the ${details.online} online Wolf instances has GPU type "${details.gpuType ?? ''}"`;
    else why = details.matchingGpu === 1 ? `the only online Wolf instance${want} is full` : `all ${details.matchingGpu} online Wolf instances${want} are full`;
    super(ErrorCodes.NO_INSTANCE_AVAILABLE, `no Wolf instance can take a placement${want}: ${why}`);
    this.name = 'NoInstanceAvailableError';
    this.details = details;
  }
}

export function loadRatio(instance: Pick<WolfInstance, 'connected_sandboxes' | 'max_sandboxes'>): number {
  return instance.max_sandboxes > 0 ? instance.connected_sandboxes / instance.max_sandboxes : Number.POSITIVE_INFINITY;
}

function normalizeGpu(value: string | undefined): string {
  return (value ?? '').trim().toLowerCase();
}

/**
 * Picks the instance for a new placement. `instances` in registration order.
 * Throws NoInstanceAvailableError (REVDIAL_NO_INSTANCE_AVAILABLE) when none qualifies.
 */
export function selectInstance(instances: readonly WolfInstance[], request: ScheduleRequest = {}): WolfInstance {
  const gpu = normalizeGpu(request.gpuType);
  const online = instances.filter((i) => i.status === 'online');
  const matching = gpu === '' ? online : online.filter((i) => normalizeGpu(i.gpu_type) === gpu);
  const free = matching.filter((i) => i.connected_sandboxes < i.max_sandboxes);
  let best: WolfInstance | undefined;
  for (const candidate of free) {
    if (!best) {
      best = candidate;
      continue;
    }
    // Ratios compared by cross-multiplying, exact in integers (2/6 vs 1/3).
    const order = candidate.connected_sandboxes * best.max_sandboxes - best.connected_sandboxes * candidate.max_sandboxes;
    if (order < 0 || (order === 0 && candidate.connected_sandboxes < best.connected_sandboxes)) best = candidate;
  }
  if (!best) {
    throw new NoInstanceAvailableError({
      gpuType: gpu === '' ? null : gpu,
      registered: instances.length,
      online: online.length,
      matchingGpu: matching.length,
      withCapacity: free.length,
    });
  }
  return best;
}
