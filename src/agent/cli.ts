/**
 * The process: configuration, logging, signals and exit codes around one Agent.
 *
 * Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, tunnels drained or cut after
 * the grace period); 1 internal error; 2 invalid configuration (one line on
 * stderr, before any network activity; also when a --metrics-addr set
 * explicitly cannot be bound, e.g. the port is in use, since only a
 * configuration change fixes that; the default address moves to the next
 * free port instead, and without one the agent runs on without the
 * endpoints); 130 / 143 a second SIGINT / SIGTERM during the drain (exit at once).
 *
 * `doctor` (doctor/): checks the same configuration step by step and exits 0
 * when every check passes, 1 otherwise (a configuration error included).
 *
 * Shutdown order: stop taking tunnels and deregister from the registry at
 * once (the deregistration has its own short time limit), drain the tunnels,
 * and close the operations server last so probes answer (503) until the end.
 * With `--registry sandboxes` heartbeats stop at once; the host is removed
 * only with --deregister-on-exit.
 */
import { CommanderError } from 'commander';
import { DOCTOR_DEFAULTS, type DoctorFlags, addDoctorCommand, namesDoctor } from './doctor/command.js';
import { type Config, PROGRAM, VERSION, buildProgram, describeConfig, resolveConfig } from './config.js';
import { controlUrl, isLoopbackHost } from './net/endpoints.js';
import { codeOf, describe } from './errors.js';
import { type Logger, createLogger } from './logger.js';
import { describeTarget } from './net/local-dialer.js';
import { AgentMetrics } from './ops/metrics.js';
import { OpsServer, type Readiness, formatListenAddress } from './ops/server.js';
import { EgressProxy } from './net/proxy.js';
import { DirectConnector } from './net/connector.js';
import { TlsSettings } from './net/tls-context.js';
import { Agent, type AgentObserver } from './control/supervisor.js';
import type { SandboxHeartbeat } from './registry/sandboxes.js';
import { PreconnectPool } from './net/preconnect.js';

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_CONFIG = 2;
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };
/** How long a graceful shutdown waits for the registry to confirm the deregistration. */
const DEREGISTER_TIMEOUT_MS = 3_000;
/**
 * The hard deadline of a shutdown: this long after --grace-period the process
 * exits whatever is still open or unanswered (a peer that stopped answering a
 * close, a registry that hangs), so the drain never outlasts grace + 1 s.
 */
const SHUTDOWN_OVERRUN_MS = 900;

/** `doctor`: its flags, and the configuration it checks (or what is wrong with it). */
export interface DoctorInvocation {
  doctor: DoctorFlags;
  config: Config | Error;
}

export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv): Config | DoctorInvocation | number {
  const program = buildProgram().exitOverride();
  program.configureOutput({
    writeErr: () => undefined, // commander's own error text is replaced by our one line
  });
  let doctor: DoctorFlags | undefined;
  // The agent itself is the program's own action; `doctor` is its one subcommand.
  program.action(() => undefined);
  addDoctorCommand(program, (flags) => {
    doctor = flags;
  });
  try {
    program.parse(argv, { from: 'user' });
    if (doctor) {
      try {
        return { doctor, config: resolveConfig(program, env) };
      } catch (err) {
        return { doctor, config: err instanceof Error ? err : new Error(String(err)) };
      }
    }
    return resolveConfig(program, env);
  } catch (err) {
    // A flag or variable commander refused before `doctor` ran: the doctor reports it as its first step.
    if (err instanceof CommanderError && err.exitCode !== 0 && namesDoctor(argv)) {
      return { doctor: { ...DOCTOR_DEFAULTS, json: argv.includes('--json') }, config: new Error(err.message) };
    }
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return EXIT_OK; // --help, --version
      process.stderr.write(`${PROGRAM}: invalid configuration: ${err.message.replace(/^error: /, '')}\n`);
      return EXIT_CONFIG;
    }
    process.stderr.write(`${PROGRAM}: invalid configuration: ${describe(err, 500)}\n`);
    return EXIT_CONFIG;
  }
}

/** Warnings an operator should see once, at start. */
export function startupWarnings(config: Config, log: Logger): void {
  const plain = config.apiUrl.protocol === 'http:' || config.apiUrl.protocol === 'ws:';
  if (plain && !isLoopbackHost(config.apiUrl.hostname)) {
    log.warn(
      { controlPlane: config.apiUrl.host },
      `The runner token will travel unencrypted over ${config.apiUrl.protocol.slice(0, -1)} to ${config.apiUrl.hostname}: use https:// for HELIX_API_URL`,
    );
  }
  if (config.insecureSkipTlsVerify) {
    log.warn('TLS verification is OFF (--insecure-skip-tls-verify): anyone on the path can read the token; use --ca-file instead');
  }
  if (config.register && config.heartbeatIntervalMs >= 120_000) {
    log.warn(
      { heartbeatIntervalMs: config.heartbeatIntervalMs },
      'The heartbeat interval is 120 s or more: the control plane marks an instance offline after 2 minutes without one; lower --heartbeat-interval',
    );
  }
  if (config.registry === 'sandboxes' && config.heartbeatIntervalMs >= 300_000) {
    log.warn(
      { heartbeatIntervalMs: config.heartbeatIntervalMs },
      'The heartbeat interval is 300 s or more: the control plane marks a host offline after 5 minutes without one; lower --heartbeat-interval',
    );
  }
  if (config.tokenSource === 'flag') {
    log.warn('The token was given with --token, which every local user can read in the process list: use RUNNER_TOKEN_FILE or RUNNER_TOKEN');
  }
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number | undefined> {
  const parsed = parseCommandLine(argv, env);
  if (typeof parsed === 'number') return parsed;
  if ('doctor' in parsed) {
    // Loaded only for the subcommand. Exit as soon as the report is out: a DNS
    // lookup that outlived its time limit must not hold the process.
    const code = await (await import('./doctor/run.js')).doctorMain(parsed.config, parsed.doctor, process.stdout);
    process.exit(code);
  }
  const config = parsed;
  if (config.checkOnly) {
    process.stdout.write(`${JSON.stringify(describeConfig(config), null, 2)}\n`);
    return EXIT_OK;
  }
  const log = createLogger(config.logLevel);
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, `internal error, exiting: ${describe(err)}`);
    process.exit(EXIT_INTERNAL);
  });
  log.info({ controlPlane: config.apiUrl.origin, runnerId: config.runnerId, local: describeTarget(config.local) }, `Starting ${PROGRAM} ${VERSION}`);
  startupWarnings(config, log);
  if (config.tokenWatch) {
    config.tokenWatch.onRejected = (err) => {
      log.warn({ code: err.code, tokenFile: config.tokenFile }, `${describe(err, 400)}; still using the last good token`);
    };
  }

  const proxy = await EgressProxy.create(config.proxy);
  const route = proxy.describeRoute(controlUrl(config.apiUrl, config.runnerId));
  if (route !== 'direct') log.info({ egress: route }, `Connecting to the control plane ${route}`);
  const metrics = new AgentMetrics();
  // Set below with --registry sandboxes: told about every control connection (its first beat goes then).
  let heartbeat: SandboxHeartbeat | undefined;
  const observer: AgentObserver = config.registry === 'sandboxes' ? withControlConnected(metrics, () => heartbeat?.controlConnected()) : metrics;
  const tls = new TlsSettings({
    caFile: config.caFile,
    ca: config.ca,
    rejectUnauthorized: !config.insecureSkipTlsVerify,
    maxVersion: config.tlsMaxVersion,
    onCaReload: ({ ok, caFile, error }) => {
      if (ok) log.info({ caFile }, `Loaded the changed CA bundle ${caFile}; new connections verify against it`);
      else log.warn({ caFile, error }, `Cannot load the changed CA bundle ${caFile} (${error}); keeping the previous one`);
    },
  });
  const direct = new DirectConnector({ tls, proxy });
  const preconnect = new PreconnectPool({ connector: direct, cap: config.preconnect, log, observer: metrics });

  const agent = new Agent({
    apiUrl: config.apiUrl,
    runnerId: config.runnerId,
    local: config.local,
    transport: {
      token: config.token,
      userAgent: `${PROGRAM}/${VERSION}`,
      rejectUnauthorized: !config.insecureSkipTlsVerify,
      connector: preconnect,
    },
    log,
    observer,
    reconnectMaxMs: config.reconnectMaxMs,
    pingIntervalMs: config.pingIntervalMs,
    pingTimeoutMs: config.pingTimeoutMs,
    pickupTimeoutMs: config.pickupTimeoutMs,
    localDialTimeoutMs: config.localDialTimeoutMs,
    maxTunnels: config.maxTunnels,
    preconnect,
  });

  const readiness = (): Readiness => {
    // The heartbeat is detail, never the status: tunnels work without the registry.
    const detail = { runnerId: config.runnerId, ...(heartbeat ? { registry: heartbeat.status() } : {}) };
    if (agent.draining) return { ready: false, reason: 'shutting down', ...detail };
    if (agent.connected) return { ready: true, ...detail };
    return { ready: false, reason: `control connection down since ${new Date(agent.disconnectedSince).toISOString()}`, ...detail };
  };
  let ops: OpsServer | undefined;
  if (config.metricsAddr) {
    ops = new OpsServer({ address: config.metricsAddr, ports: config.metricsPorts, readiness, metrics: () => metrics.render(), log });
    try {
      const bound = await ops.listen();
      const served = formatListenAddress({ host: bound.address, port: bound.port });
      const asked = formatListenAddress(config.metricsAddr);
      // One line to grep for, whichever port was free: several agents on a host each log their own.
      if (bound.port !== config.metricsAddr.port && config.metricsAddr.port !== 0) {
        log.info({ metricsAddr: served, metricsAddrTaken: asked }, `Serving /healthz, /readyz and /metrics on http://${served} (${asked} is in use)`);
      } else {
        log.info({ metricsAddr: served }, `Serving /healthz, /readyz and /metrics on http://${served}`);
      }
    } catch (err) {
      if (config.metricsPorts <= 1) {
        log.fatal({ code: codeOf(err) }, describe(err, 500));
        process.stderr.write(`${PROGRAM}: ${describe(err, 500)}\n`);
        return EXIT_CONFIG;
      }
      // No address was given: an auxiliary port must not take the tunnel down.
      log.warn({ code: codeOf(err) }, `${describe(err, 500)}; carrying on without them`);
      ops = undefined;
    }
  }

  // Loaded only with --register: the registry client and undici cost ~10 MiB of RSS.
  const registry = config.register
    ? new (await import('./registry/wolf-instances.js')).RegistryClient({
        apiUrl: config.apiUrl,
        token: config.token,
        userAgent: `${PROGRAM}/${VERSION}`,
        dispatcher: await proxy.dispatcherFor(config.apiUrl, {
          ca: config.ca,
          rejectUnauthorized: !config.insecureSkipTlsVerify,
        }),
        instance: {
          name: config.wolfId,
          address: config.advertiseAddress,
          gpuType: config.gpuType,
          maxSandboxes: config.maxSandboxes,
        },
        heartbeatIntervalMs: config.heartbeatIntervalMs,
        log,
        observer: metrics,
      })
    : undefined;

  // Loaded only with --registry sandboxes, for the same reason.
  if (config.registry === 'sandboxes') {
    heartbeat = new (await import('./registry/sandboxes.js')).SandboxHeartbeat({
      apiUrl: config.apiUrl,
      token: config.token,
      userAgent: `${PROGRAM}/${VERSION}`,
      dispatcher: await proxy.dispatcherFor(config.apiUrl, {
        ca: config.ca,
        rejectUnauthorized: !config.insecureSkipTlsVerify,
      }),
      runnerId: config.runnerId,
      intervalMs: config.heartbeatIntervalMs,
      gpu: config.gpu,
      diskPaths: config.diskPaths,
      version: VERSION,
      ...(config.heartbeatExtraFile !== undefined ? { extraFile: config.heartbeatExtraFile } : {}),
      log,
      observer: metrics,
    });
    log.info(
      { sandboxId: heartbeat.sandboxId, gpuVendor: config.gpu.vendor, renderNode: config.gpu.renderNode, heartbeatIntervalMs: config.heartbeatIntervalMs },
      `Registry: sandboxes API; this host is ${heartbeat.sandboxId}, heartbeats from the first control connection on`,
    );
  }

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, `Second ${signal}: exiting now without draining`);
      process.exit(SIGNAL_EXIT[signal] ?? EXIT_INTERNAL);
    }
    stopping = true;
    log.info({ signal, tunnels: agent.activeTunnels, gracePeriodMs: config.gracePeriodMs }, `Received ${signal}: refusing new tunnels and draining`);
    const deadline = setTimeout(() => {
      log.warn({ gracePeriodMs: config.gracePeriodMs }, 'Shutdown deadline reached: exiting without waiting for what is still closing');
      process.exit(EXIT_OK);
    }, config.gracePeriodMs + SHUTDOWN_OVERRUN_MS);
    deadline.unref();
    const deregistered = registry?.stop(DEREGISTER_TIMEOUT_MS) ?? heartbeat?.stop(config.deregisterOnExit ? DEREGISTER_TIMEOUT_MS : undefined);
    Promise.all([agent.shutdown(config.gracePeriodMs), deregistered])
      .then(async ([{ cut }]) => {
        proxy.destroy();
        await ops?.close();
        return cut;
      })
      .then(
        (cut) => {
          log.info({ cut }, 'Stopped');
          process.exit(EXIT_OK);
        },
        (err: unknown) => {
          log.fatal({ err }, `shutdown failed: ${describe(err)}`);
          process.exit(EXIT_INTERNAL);
        },
      );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  heartbeat?.start();
  agent.start();
  registry?.start();
  return undefined;
}

/**
 * The metrics observer, plus `onConnected` after each control connection.
 * Bound methods, not a fan-out: the per-chunk `bytes` hook stays one direct
 * call on the tunnel path.
 */
function withControlConnected(metrics: AgentMetrics, onConnected: () => void): AgentObserver {
  return {
    controlConnected: () => {
      metrics.controlConnected();
      onConnected();
    },
    controlDisconnected: metrics.controlDisconnected.bind(metrics),
    controlAttemptFailed: metrics.controlAttemptFailed.bind(metrics),
    tunnelStarted: metrics.tunnelStarted.bind(metrics),
    tunnelSetUp: metrics.tunnelSetUp.bind(metrics),
    tunnelEnded: metrics.tunnelEnded.bind(metrics),
    bytes: metrics.bytes.bind(metrics),
  };
}
