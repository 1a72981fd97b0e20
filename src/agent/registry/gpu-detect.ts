/**
 * `--gpu-type auto`: which GPUs the host exposes to this process, read from
 * device nodes only (no vendor tools, which a slim container lacks):
 *
 *   nvidia  /dev/nvidia0, /dev/nvidia1, ... or /dev/nvidiactl
 *   amd     /dev/dri/renderD* whose /sys/class/drm/renderD* /device/vendor is 0x1002
 *   none    anything else (an Intel-only render node included)
 *
 * The paths are injectable so tests build a fake /dev and /sys in a temp dir.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export const GPU_TYPES = ['nvidia', 'amd', 'none'] as const;
export type GpuType = (typeof GPU_TYPES)[number];

export interface GpuProbePaths {
  /** Default `/dev`. */
  dev: string;
  /** Default `/sys/class/drm`. */
  drmClass: string;
}

export const DEFAULT_GPU_PATHS: GpuProbePaths = { dev: '/dev', drmClass: '/sys/class/drm' };

const AMD_VENDOR = '0x1002';

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export function detectGpuType(paths: GpuProbePaths = DEFAULT_GPU_PATHS): GpuType {
  if (list(paths.dev).some((name) => /^nvidia(\d+|ctl)$/.test(name))) return 'nvidia';
  for (const node of list(join(paths.dev, 'dri'))) {
    if (!/^renderD\d+$/.test(node)) continue;
    let vendor: string;
    try {
      vendor = readFileSync(join(paths.drmClass, node, 'device', 'vendor'), 'utf8')
        .trim()
        .toLowerCase();
    } catch {
      continue;
    }
    if (vendor === AMD_VENDOR) return 'amd';
  }
  return 'none';
}
