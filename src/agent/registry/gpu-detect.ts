/**
 * `--gpu-type auto`: which GPUs the host exposes to this process, read from
 * device nodes only (no vendor tools, which a slim container lacks):
 *
 *   nvidia  /dev/nvidia0, /dev/nvidia1, ... or /dev/nvidiactl
 *   amd     /dev/dri/renderD* whose /sys/class/drm/renderD* /device/vendor is 0x1002
 *   none    anything else (an Intel-only render node included)
 *
 * `detectGpu` (the sandboxes heartbeat, `--registry sandboxes`) also names
 * Intel and the render node, as the 2026 control plane wants them:
 *
 *   vendor      nvidia (as above, or a render node of vendor 0x10de), amd
 *               (0x1002), intel (0x8086), else none
 *   render node /dev/dri/renderD* of that vendor (the lowest number), or
 *               SOFTWARE when there is none
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
const PCI_VENDORS: Record<string, GpuVendor> = { '0x10de': 'nvidia', '0x1002': 'amd', '0x8086': 'intel' };

/** `gpu_vendor` values of the sandboxes heartbeat. */
export const GPU_VENDORS = ['nvidia', 'amd', 'intel', 'none'] as const;
export type GpuVendor = (typeof GPU_VENDORS)[number];

/** `render_node` when the host has no GPU render node (what the 2026 control plane expects). */
export const SOFTWARE_RENDER_NODE = 'SOFTWARE';

export interface GpuFacts {
  vendor: GpuVendor;
  /** `/dev/dri/renderD128`, or `SOFTWARE`. */
  renderNode: string;
}

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

/** Vendor and render node for the sandboxes heartbeat (see the top of this file). */
export function detectGpu(paths: GpuProbePaths = DEFAULT_GPU_PATHS): GpuFacts {
  const nodes = list(join(paths.dev, 'dri'))
    .filter((n) => /^renderD\d+$/.test(n))
    .sort((a, b) => Number(a.slice(7)) - Number(b.slice(7)));
  const byVendor = new Map<GpuVendor, string>();
  for (const node of nodes) {
    let id: string;
    try {
      id = readFileSync(join(paths.drmClass, node, 'device', 'vendor'), 'utf8')
        .trim()
        .toLowerCase();
    } catch {
      continue;
    }
    const vendor = PCI_VENDORS[id];
    if (vendor && !byVendor.has(vendor)) byVendor.set(vendor, `/dev/dri/${node}`);
  }
  const nvidiaDevice = list(paths.dev).some((name) => /^nvidia(\d+|ctl)$/.test(name));
  // The same precedence as detectGpuType: a discrete NVIDIA or AMD card before an integrated Intel one.
  const vendor: GpuVendor = nvidiaDevice || byVendor.has('nvidia') ? 'nvidia' : byVendor.has('amd') ? 'amd' : byVendor.has('intel') ? 'intel' : 'none';
  return { vendor, renderNode: (vendor === 'none' ? undefined : byVendor.get(vendor)) ?? SOFTWARE_RENDER_NODE };
}
