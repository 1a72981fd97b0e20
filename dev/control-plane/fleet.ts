/**
 * A control plane for several Wolfs, wired in one call: the RevDial endpoint;
 * the 2025 Wolf registry API, its health monitor (which also watches each
 * instance's tunnel) and the placement API with the least-loaded scheduler;
 * and the 2026 host API (`/api/v1/sandboxes`: implicit registration on
 * control connect, heartbeats, the reaper). The multi-Wolf demo and the tests
 * use it; so can anyone trying either registry client.
 */
import { type Clock, systemClock } from '../../src/agent/clock.js';
import type { Logger } from '../../src/agent/logger.js';
import { HealthMonitor } from './health-monitor.js';
import type { Authorize } from './http-util.js';
import { installRegistryApi } from './registry-api.js';
import { type InstanceStore, Registry } from './registry.js';
import { installPlacementsApi } from './placements-api.js';
import { Placements } from './placements.js';
import { installSandboxHostsApi } from './sandbox-hosts-api.js';
import { SandboxHosts } from './sandbox-hosts.js';
import { ControlPlane, type ControlPlaneOptions } from './server.js';

export interface FleetOptions extends Omit<ControlPlaneOptions, 'authorize' | 'clock'> {
  authorize: Authorize;
  log: Logger;
  clock?: Clock;
  store?: InstanceStore;
  /** Health check period (default 60 s). */
  checkIntervalMs?: number;
  /** Heartbeat age that makes an instance offline (default 2 min). */
  offlineAfterMs?: number;
  /** Mark instances without a live RevDial tunnel `degraded` (default true). */
  watchTunnels?: boolean;
  /** Silence after which the reaper marks a 2026 host offline (default 5 min). */
  hostOfflineAfterMs?: number;
  /** Reaper period (default 1 min). */
  hostSweepMs?: number;
}

export interface Fleet {
  plane: ControlPlane;
  registry: Registry;
  monitor: HealthMonitor;
  placements: Placements;
  /** 2026 GPU hosts (`/api/v1/sandboxes`); its reaper runs from creation to close. */
  hosts: SandboxHosts;
  /** Stops the monitor and the reaper and closes the plane. */
  close(): Promise<void>;
}

/** Builds the pieces and installs the routes; call `plane.listen()` and `monitor.start()` next. */
export function createFleet(options: FleetOptions): Fleet {
  const { log, store, checkIntervalMs, offlineAfterMs, watchTunnels, hostOfflineAfterMs, hostSweepMs, ...planeOptions } = options;
  const clock = options.clock ?? systemClock;
  // The injected clock drives registry time (heartbeat ages, the monitor);
  // the plane keeps real timers so tunnels still work in tests that tick it.
  const plane = new ControlPlane(planeOptions);
  const registry = new Registry({ clock, ...(store ? { store } : {}) });
  const monitor = new HealthMonitor({
    registry,
    log,
    clock,
    ...(checkIntervalMs !== undefined ? { intervalMs: checkIntervalMs } : {}),
    ...(offlineAfterMs !== undefined ? { offlineAfterMs } : {}),
    ...(watchTunnels === false ? {} : { tunnelUp: (runnerId: string) => plane.dialer(runnerId) !== undefined }),
  });
  const placements = new Placements({ registry, tunnels: plane, clock, log });
  const basePath = options.basePath ?? '';
  installRegistryApi(plane, registry, { authorize: options.authorize, basePath, log });
  installPlacementsApi(plane, placements, { authorize: options.authorize, basePath, log });
  const hosts = new SandboxHosts({
    clock,
    ...(hostOfflineAfterMs !== undefined ? { offlineAfterMs: hostOfflineAfterMs } : {}),
    ...(hostSweepMs !== undefined ? { sweepMs: hostSweepMs } : {}),
  });
  installSandboxHostsApi(plane, hosts, { authorize: options.authorize, basePath, log });
  hosts.startReaper();
  return {
    plane,
    registry,
    monitor,
    placements,
    hosts,
    close: async () => {
      monitor.stop();
      hosts.stopReaper();
      await plane.close();
    },
  };
}
