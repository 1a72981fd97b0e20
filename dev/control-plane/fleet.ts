/**
 * A control plane for several Wolfs, wired in one call: the RevDial endpoint,
 * the registry API, the health monitor (which also watches each instance's
 * tunnel) and the sandbox API with the least-loaded scheduler. The multi-Wolf
 * demo and the tests use it; so can anyone trying the registry client.
 */
import { type Clock, systemClock } from '../../src/agent/clock.js';
import type { Logger } from '../../src/agent/logger.js';
import { HealthMonitor } from './health-monitor.js';
import type { Authorize } from './http-util.js';
import { installRegistryApi } from './registry-api.js';
import { type InstanceStore, Registry } from './registry.js';
import { installSandboxesApi } from './sandboxes-api.js';
import { Sandboxes } from './sandboxes.js';
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
}

export interface Fleet {
  plane: ControlPlane;
  registry: Registry;
  monitor: HealthMonitor;
  sandboxes: Sandboxes;
  /** Stops the monitor and closes the plane. */
  close(): Promise<void>;
}

/** Builds the pieces and installs the routes; call `plane.listen()` and `monitor.start()` next. */
export function createFleet(options: FleetOptions): Fleet {
  const { log, store, checkIntervalMs, offlineAfterMs, watchTunnels, ...planeOptions } = options;
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
  const sandboxes = new Sandboxes({ registry, tunnels: plane, clock, log });
  const basePath = options.basePath ?? '';
  installRegistryApi(plane, registry, { authorize: options.authorize, basePath, log });
  installSandboxesApi(plane, sandboxes, { authorize: options.authorize, basePath, log });
  return {
    plane,
    registry,
    monitor,
    sandboxes,
    close: async () => {
      monitor.stop();
      await plane.close();
    },
  };
}
