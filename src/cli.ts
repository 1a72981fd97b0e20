/**
 * The process: configuration, logging, signals and exit codes around one Agent.
 *
 * Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, tunnels drained or cut after
 * the grace period); 1 internal error; 2 invalid configuration (one line on
 * stderr, before any network activity); 130 / 143 a second SIGINT / SIGTERM
 * during the drain (exit at once).
 */
import { CommanderError } from 'commander';
import { type Config, PROGRAM, VERSION, buildProgram, describeConfig, resolveConfig } from './config.js';
import { isLoopbackHost } from './endpoints.js';
import { describe } from './errors.js';
import { type Logger, createLogger } from './logger.js';
import { describeTarget } from './local-dialer.js';
import { Agent } from './supervisor.js';

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_CONFIG = 2;
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv): Config | number {
  const program = buildProgram().exitOverride();
  program.configureOutput({
    writeErr: () => undefined, // commander's own error text is replaced by our one line
  });
  try {
    program.parse(argv, { from: 'user' });
    return resolveConfig(program, env);
  } catch (err) {
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
    log.warn("TLS verification is OFF (--insecure-skip-tls-verify): anyone on the path can read the token; use --ca-file instead");
  }
  if (config.tokenSource === 'flag') {
    log.warn('The token was given with --token, which every local user can read in the process list: use RUNNER_TOKEN_FILE or RUNNER_TOKEN');
  }
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number | undefined> {
  const parsed = parseCommandLine(argv, env);
  if (typeof parsed === 'number') return parsed;
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
  log.info(
    { controlPlane: config.apiUrl.origin, runnerId: config.runnerId, local: describeTarget(config.local) },
    `Starting ${PROGRAM} ${VERSION}`,
  );
  startupWarnings(config, log);

  const agent = new Agent({
    apiUrl: config.apiUrl,
    runnerId: config.runnerId,
    local: config.local,
    transport: {
      token: config.token,
      userAgent: `${PROGRAM}/${VERSION}`,
      ca: config.ca,
      rejectUnauthorized: !config.insecureSkipTlsVerify,
    },
    log,
    reconnectMaxMs: config.reconnectMaxMs,
    pingIntervalMs: config.pingIntervalMs,
    pingTimeoutMs: config.pingTimeoutMs,
    pickupTimeoutMs: config.pickupTimeoutMs,
    localDialTimeoutMs: config.localDialTimeoutMs,
    maxTunnels: config.maxTunnels,
  });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, `Second ${signal}: exiting now without draining`);
      process.exit(SIGNAL_EXIT[signal] ?? EXIT_INTERNAL);
    }
    stopping = true;
    log.info(
      { signal, tunnels: agent.activeTunnels, gracePeriodMs: config.gracePeriodMs },
      `Received ${signal}: refusing new tunnels and draining`,
    );
    agent.shutdown(config.gracePeriodMs).then(
      ({ cut }) => {
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
  agent.start();
  return undefined;
}
