/**
 * A memory cgroup for one spawned agent, so a test can run it under the same
 * memory limit a deployment gives it and read back what the kernel saw: the
 * peak charged, how often the limit was hit (the kernel then reclaims, or
 * stalls the process), and OOM kills. cgroup v1 (`/sys/fs/cgroup/memory`) or
 * v2 (memory enabled in the root's `cgroup.subtree_control`); needs root.
 * Where neither can be made, `createMemoryCgroup` says why instead.
 */
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface MemoryCgroup {
  readonly dir: string;
  /** Write a pid here to move that process into the cgroup. */
  readonly procs: string;
  readonly limitBytes: number;
  /** Most memory ever charged to the cgroup. */
  peakBytes(): number;
  /** Times a charge hit the limit (v1 `memory.failcnt`, v2 `memory.events` max). */
  limitHits(): number;
  oomKills(): number;
  /** Removes the cgroup; its processes must have exited. */
  remove(): void;
}

const V1 = '/sys/fs/cgroup/memory';
const V2 = '/sys/fs/cgroup';

function read(file: string): string {
  return readFileSync(file, 'utf8');
}

function field(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

function tryMkdir(dir: string): string | undefined {
  try {
    mkdirSync(dir);
    return undefined;
  } catch (err) {
    return `${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
}

/** Kubernetes quantity (`256Mi`, `1Gi`, `512M`, plain bytes) in bytes. */
export function quantityBytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|K|M|G)?$/.exec(q.trim());
  if (!m) throw new Error(`not a memory quantity: ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, K: 1e3, M: 1e6, G: 1e9 }[m[2] ?? ''] ?? 1;
  return Number(m[1]) * unit;
}

export function createMemoryCgroup(name: string, limitBytes: number): MemoryCgroup | { unavailable: string } {
  const reasons: string[] = [];
  // v1: a memory hierarchy of its own.
  let dir = join(V1, name);
  let failed = tryMkdir(dir);
  if (failed === undefined) {
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limitBytes));
    // Memory plus swap at the same limit: swapping would hide what the test measures.
    try {
      writeFileSync(join(dir, 'memory.memsw.limit_in_bytes'), String(limitBytes));
    } catch {
      // No swap accounting: nothing to turn off.
    }
    return {
      dir,
      procs: join(dir, 'cgroup.procs'),
      limitBytes,
      peakBytes: () => Number(read(join(dir, 'memory.max_usage_in_bytes'))),
      limitHits: () => Number(read(join(dir, 'memory.failcnt'))),
      oomKills: () => field(read(join(dir, 'memory.oom_control')), 'oom_kill'),
      remove: () => rmdirSync(dir),
    };
  }
  reasons.push(`cgroup v1: ${failed}`);
  // v2: a child of the root, if the root hands the memory controller down.
  let subtree = '';
  try {
    subtree = read(join(V2, 'cgroup.subtree_control'));
  } catch (err) {
    reasons.push(`cgroup v2: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (/\bmemory\b/.test(subtree)) {
    dir = join(V2, name);
    failed = tryMkdir(dir);
    if (failed === undefined) {
      writeFileSync(join(dir, 'memory.max'), String(limitBytes));
      // Swapping would hide what the test measures.
      try {
        writeFileSync(join(dir, 'memory.swap.max'), '0');
      } catch {
        // No swap accounting: nothing to turn off.
      }
      return {
        dir,
        procs: join(dir, 'cgroup.procs'),
        limitBytes,
        peakBytes: () => Number(read(join(dir, 'memory.peak'))),
        limitHits: () => field(read(join(dir, 'memory.events')), 'max'),
        oomKills: () => field(read(join(dir, 'memory.events')), 'oom_kill'),
        remove: () => rmdirSync(dir),
      };
    }
    reasons.push(`cgroup v2: ${failed}`);
  } else if (subtree !== '') {
    reasons.push('cgroup v2: the root does not delegate the memory controller');
  }
  return { unavailable: reasons.join('; ') };
}
