/**
 * Command line and environment → a validated Config. Every flag has an
 * environment variable (systemd, containers and Kubernetes configure through
 * the environment); a flag beats its variable. Nothing here touches the
 * network, so a bad configuration fails before any connection is tried.
 */
import { readFileSync } from 'node:fs';
import { TokenFile, tokenProblem } from './token.js';
import { Command, InvalidArgumentError, Option } from 'commander';
import pkg from '../../package.json' with { type: 'json' };
import { ErrorCodes, RevdialError } from './errors.js';
import { type LocalTarget, parseLocalAddress } from './net/local-dialer.js';
import { DEFAULT_GPU_PATHS, GPU_TYPES, type GpuFacts, type GpuProbePaths, type GpuType, detectGpu, detectGpuType } from './registry/gpu-detect.js';
import { DESKTOP_RUNNER_PREFIX, REGISTRY_MODES, type RegistryMode, sandboxIdOf } from './registry/http.js';
import { type DiskPath, parseDiskPaths } from './registry/sandboxes.js';
import { DEFAULT_METRICS_ADDR, DEFAULT_METRICS_PORTS, type ListenAddress, formatListenAddress, parseListenAddress } from './ops/server.js';
import { type ProxyConfig, parseProxyUrl, proxyConfigFromEnv, safeProxy } from './net/proxy.js';

export const VERSION: string = pkg.version;
export const PROGRAM = 'wolf-revdial-client';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  apiUrl: URL;
  wolfId: string;
  runnerId: string;
  /** Returns the current token; a token file is read again on each call. */
  token: () => string;
  tokenSource: 'flag' | 'env' | 'file';
  tokenFile?: string;
  /** The token file, re-read on each dial; set `onRejected` to hear of a bad rotation. */
  tokenWatch?: TokenFile;
  local: LocalTarget;
  localText: string;
  reconnectMaxMs: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  gracePeriodMs: number;
  maxTunnels: number;
  pickupTimeoutMs: number;
  localDialTimeoutMs: number;
  caFile?: string;
  ca?: Buffer;
  insecureSkipTlsVerify: boolean;
  logLevel: LogLevel;
  checkOnly: boolean;
  /** Where /healthz, /readyz and /metrics are served; null when `off`. */
  metricsAddr: ListenAddress | null;
  /** Ports tried from metricsAddr up while taken: DEFAULT_METRICS_PORTS for the default address, 1 when set explicitly. */
  metricsPorts: number;
  register: boolean;
  advertiseAddress: string;
  gpuType: GpuType;
  gpuTypeSource: 'flag' | 'auto';
  maxSandboxes: number;
  heartbeatIntervalMs: number;
  proxy: ProxyConfig;
  /** `--tls-max-version`: `TLSv1.2` caps TLS (cheaper resumption, no forward secrecy for resumed sessions). */
  tlsMaxVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** `--preconnect`: the most warm connections kept open; 0 turns the pool off. */
  preconnect: number;
  /** `--registry`: which registry API, if any (`register` is true exactly for wolf-instances). */
  registry: RegistryMode;
  /** sandboxes: the host id in the heartbeat URL (the runner id without hydra-/sandbox-). */
  sandboxId?: string;
  /** sandboxes: GPU vendor and render node sent in every heartbeat. */
  gpu: GpuFacts;
  diskPaths: DiskPath[];
  heartbeatExtraFile?: string;
  deregisterOnExit: boolean;
}

/** Environment variables for boolean flags, read by hand (see `booleanEnv`). */
const INSECURE_ENV = 'REVDIAL_INSECURE_SKIP_TLS_VERIFY';
const REGISTER_ENV = 'REVDIAL_REGISTER';
const DEREGISTER_ON_EXIT_ENV = 'REVDIAL_DEREGISTER_ON_EXIT';

function seconds(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min) {
      throw new InvalidArgumentError(`expected a number of seconds${min > 0 ? ' above 0' : ' (0 or more)'}`);
    }
    if (min > 0 && n <= 0) throw new InvalidArgumentError('expected a number of seconds above 0');
    return n;
  };
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError('expected a whole number of 1 or more');
  }
  return n;
}

function wolfIdArg(value: string): string {
  if (!/^[A-Za-z0-9-]{1,255}$/.test(value)) {
    throw new InvalidArgumentError('use letters, digits and hyphens only, at most 255 characters');
  }
  return value;
}

function runnerIdArg(value: string): string {
  if (!/^[A-Za-z0-9._-]{1,300}$/.test(value)) {
    throw new InvalidArgumentError('use letters, digits, ".", "_" and "-" only');
  }
  return value;
}

function apiUrlArg(value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('not a URL; expected e.g. https://api.example.com');
  }
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) {
    throw new InvalidArgumentError(`scheme ${url.protocol} not supported; use http, https, ws or wss`);
  }
  if (url.username || url.password) {
    throw new InvalidArgumentError('credentials in the URL are not allowed; pass the token with RUNNER_TOKEN or RUNNER_TOKEN_FILE');
  }
  if (url.search || url.hash) throw new InvalidArgumentError('give the base URL only, without query or fragment');
  // "https://api.example.com//evil.example/" (or "/\\evil...") would make the
  // control URL's path read as another host: the token must go nowhere else.
  if (url.pathname.startsWith('//')) throw new InvalidArgumentError('the base path must not start with "//"');
  return url;
}

function localArg(value: string): string {
  try {
    parseLocalAddress(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return value;
}

function metricsAddrArg(value: string): ListenAddress | 'off' {
  if (value.trim().toLowerCase() === 'off') return 'off';
  try {
    return parseListenAddress(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function gpuTypeArg(value: string): GpuType | 'auto' {
  const v = value.trim().toLowerCase();
  if (v !== 'auto' && !(GPU_TYPES as readonly string[]).includes(v)) {
    throw new InvalidArgumentError(`expected one of ${GPU_TYPES.join(', ')}, auto`);
  }
  return v as GpuType | 'auto';
}

function registryArg(value: string): RegistryMode {
  const v = value.trim().toLowerCase();
  if (!(REGISTRY_MODES as readonly string[]).includes(v)) throw new InvalidArgumentError(`expected one of ${REGISTRY_MODES.join(', ')}`);
  return v as RegistryMode;
}

function diskPathsArg(value: string): DiskPath[] {
  try {
    return parseDiskPaths(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function renderNodeArg(value: string): string {
  if (value.trim() === '' || value.length > 255 || /\s/.test(value))
    throw new InvalidArgumentError('expected a device path such as /dev/dri/renderD128, or SOFTWARE');
  return value;
}

function proxyArg(value: string): URL {
  try {
    return parseProxyUrl(value, '--proxy');
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message.replace(/^--proxy:? ?/, ''));
  }
}

function tlsVersionArg(value: string): 'TLSv1.2' | 'TLSv1.3' {
  const v = value
    .trim()
    .toLowerCase()
    .replace(/^tlsv?/, '');
  if (v === '1.2') return 'TLSv1.2';
  if (v === '1.3') return 'TLSv1.3';
  throw new InvalidArgumentError('expected 1.2 or 1.3');
}

function preconnectArg(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n > 64) {
    throw new InvalidArgumentError('expected a whole number from 0 (off) to 64');
  }
  return n;
}

function advertiseArg(value: string): string {
  if (value.trim() === '' || value.length > 1024 || /[\s]/.test(value)) {
    throw new InvalidArgumentError('expected a non-empty address without spaces, at most 1024 characters');
  }
  return value;
}

function logLevelArg(value: string): LogLevel {
  const v = value.toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(v)) {
    throw new InvalidArgumentError(`expected one of ${LOG_LEVELS.join(', ')}`);
  }
  return v as LogLevel;
}

/** `true/1/yes/on` or `false/0/no/off/""`; anything else is an error (never silently on). */
export function booleanEnv(env: NodeJS.ProcessEnv, name: string): boolean {
  const raw = env[name];
  if (raw === undefined) return false;
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['', '0', 'false', 'no', 'off'].includes(v)) return false;
  throw configError(`${name}="${raw}" is not a boolean; use true or false`);
}

export function buildProgram(): Command {
  const program = new Command(PROGRAM)
    .description('Edge agent: connects out to the Helix control plane over RevDial and tunnels its requests to the local Wolf API.')
    .version(VERSION, '-V, --version')
    .helpOption('-h, --help')
    .showHelpAfterError(false)
    .allowExcessArguments(false)
    .addOption(
      new Option('--api-url <url>', 'control plane base URL (http, https, ws or wss; may carry a base path)').env('HELIX_API_URL').argParser(apiUrlArg),
    )
    .addOption(new Option('--wolf-id <id>', 'this Wolf instance: letters, digits and hyphens, at most 255').env('WOLF_ID').argParser(wolfIdArg))
    .addOption(new Option('--token <token>', 'runner token (prefer RUNNER_TOKEN or --token-file: argv is visible to every user)').env('RUNNER_TOKEN'))
    .addOption(new Option('--token-file <path>', 'read the runner token from this file, again on every reconnect').env('RUNNER_TOKEN_FILE'))
    .addOption(
      new Option('--runner-id <id>', 'runner id sent to the control plane (default: wolf-<WOLF_ID>; hydra-<WOLF_ID> with --registry sandboxes)')
        .env('REVDIAL_RUNNER_ID')
        .argParser(runnerIdArg),
    )
    .addOption(
      new Option('--local <addr>', 'local Wolf API: host:port, http://host:port or unix:///path/to/wolf.sock')
        .env('WOLF_LOCAL_ADDR')
        .default('localhost:8080')
        .argParser(localArg),
    )
    .addOption(new Option('--reconnect <seconds>', 'longest wait between reconnect attempts').env('REVDIAL_RECONNECT_MAX').default(5).argParser(seconds(0.001)))
    .addOption(
      new Option('--ping-interval <seconds>', 'WebSocket ping after this long without a frame, on the control and every data connection')
        .env('REVDIAL_PING_INTERVAL')
        .default(15)
        .argParser(seconds(0.001)),
    )
    .addOption(
      new Option('--ping-timeout <seconds>', 'no frame or pong for this long: the connection is dead (control: reconnect; data: the tunnel is closed)')
        .env('REVDIAL_PING_TIMEOUT')
        .default(45)
        .argParser(seconds(0.001)),
    )
    .addOption(
      new Option('--grace-period <seconds>', 'on SIGTERM, how long open tunnels may finish').env('REVDIAL_GRACE_PERIOD').default(30).argParser(seconds(0)),
    )
    .addOption(
      new Option('--max-tunnels <n>', 'concurrent tunnels, pick-ups included; more are refused')
        .env('REVDIAL_MAX_TUNNELS')
        .default(1024)
        .argParser(positiveInt),
    )
    .addOption(
      new Option('--pickup-timeout <seconds>', 'time limit for one pick-up (data connection and local dial)')
        .env('REVDIAL_PICKUP_TIMEOUT')
        .default(20)
        .argParser(seconds(0.001)),
    )
    .addOption(
      new Option('--local-dial-timeout <seconds>', 'time limit for dialing the local Wolf API')
        .env('REVDIAL_LOCAL_DIAL_TIMEOUT')
        .default(5)
        .argParser(seconds(0.001)),
    )
    .addOption(new Option('--ca-file <path>', 'extra PEM CA bundle trusted for wss').env('REVDIAL_CA_FILE'))
    .addOption(new Option('--insecure-skip-tls-verify', `do not verify the control plane's TLS certificate (testing only) (env: ${INSECURE_ENV})`))
    .addOption(
      new Option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')}; DEBUG=true also means debug`)
        .env('LOG_LEVEL')
        .default('info')
        .argParser(logLevelArg),
    )
    .addOption(
      new Option(
        '--metrics-addr <host:port>',
        'serve /healthz, /readyz and /metrics here; "off" disables (default: the first free port of 127.0.0.1:9464-9473)',
      )
        .env('REVDIAL_METRICS_ADDR')
        .default(DEFAULT_METRICS_ADDR, formatListenAddress(DEFAULT_METRICS_ADDR))
        .argParser(metricsAddrArg),
    )
    .addOption(new Option('--register', `register this Wolf with the control plane's registry and heartbeat (env: ${REGISTER_ENV})`))
    .addOption(
      new Option('--advertise-address <addr>', 'address sent to the registry (default: the runner id)')
        .env('REVDIAL_ADVERTISE_ADDRESS')
        .argParser(advertiseArg),
    )
    .addOption(
      new Option('--gpu-type <type>', `GPU type sent to the registry: ${GPU_TYPES.join(', ')} or auto (detect from /dev)`)
        .env('REVDIAL_GPU_TYPE')
        .default('auto')
        .argParser(gpuTypeArg),
    )
    .addOption(
      new Option('--max-sandboxes <n>', 'sandboxes this Wolf can hold, sent to the registry').env('REVDIAL_MAX_SANDBOXES').default(10).argParser(positiveInt),
    )
    .addOption(
      new Option('--heartbeat-interval <seconds>', 'registry heartbeat interval (the control plane marks an instance offline after 120 s)')
        .env('REVDIAL_HEARTBEAT_INTERVAL')
        .default(30)
        .argParser(seconds(0.001)),
    )
    .addOption(
      new Option(
        '--registry <api>',
        `registry API: off, wolf-instances (as --register) or sandboxes (2026 control planes: hydra- runner id, heartbeats with GPU and disk facts)`,
      )
        .env('REVDIAL_REGISTRY')
        .default('off')
        .argParser(registryArg),
    )
    .addOption(
      new Option(
        '--disk-paths <list>',
        'sandboxes: mount points whose disk usage heartbeats report, comma-separated; MOUNT=PATH measures MOUNT at PATH (e.g. /=/host)',
      )
        .env('REVDIAL_DISK_PATHS')
        .default(parseDiskPaths('/,/var'), '/,/var')
        .argParser(diskPathsArg),
    )
    .addOption(
      new Option(
        '--heartbeat-extra <file>',
        'sandboxes: a JSON object merged into every heartbeat, read again each time (desktop_versions, instance_type, ...)',
      ).env('REVDIAL_HEARTBEAT_EXTRA'),
    )
    .addOption(
      new Option('--render-node <path>', 'sandboxes: render node sent in heartbeats (default: detected from /dev/dri, SOFTWARE without a GPU)')
        .env('REVDIAL_RENDER_NODE')
        .argParser(renderNodeArg),
    )
    .addOption(new Option('--deregister-on-exit', `sandboxes: remove this host from the control plane on SIGTERM (env: ${DEREGISTER_ON_EXIT_ENV})`))
    .addOption(
      new Option('--proxy <url>', 'HTTP CONNECT proxy for every connection to the control plane (default: HTTPS_PROXY / HTTP_PROXY, minus NO_PROXY)')
        .env('REVDIAL_PROXY')
        .argParser(proxyArg),
    )
    .addOption(
      new Option(
        '--tls-max-version <version>',
        'highest TLS version offered: 1.3 (default, where the server has it) or 1.2 (cheaper resumption; resumed 1.2 sessions lack forward secrecy)',
      )
        .env('REVDIAL_TLS_MAX_VERSION')
        .argParser(tlsVersionArg),
    )
    .addOption(
      new Option('--preconnect <n>', 'keep up to n TCP+TLS connections to the control plane open ahead of need (sized by demand); 0 turns it off')
        .env('REVDIAL_PRECONNECT')
        .default(32)
        .argParser(preconnectArg),
    )
    .addOption(new Option('--check-config', 'validate the configuration, print it (token redacted) and exit'));
  program.addHelpText(
    'after',
    '\nExit codes: 0 stopped cleanly, 1 internal error, 2 invalid configuration or a --metrics-addr set explicitly cannot be bound (port in use), 130/143 second SIGINT/SIGTERM (no drain).',
  );
  return program;
}

/** Parsed flags as commander hands them over. */
interface RawOptions {
  apiUrl?: URL;
  wolfId?: string;
  token?: string;
  tokenFile?: string;
  runnerId?: string;
  local: string;
  reconnect: number;
  pingInterval: number;
  pingTimeout: number;
  gracePeriod: number;
  maxTunnels: number;
  pickupTimeout: number;
  localDialTimeout: number;
  caFile?: string;
  insecureSkipTlsVerify?: boolean;
  logLevel: LogLevel;
  checkConfig?: boolean;
  metricsAddr: ListenAddress | 'off';
  register?: boolean;
  advertiseAddress?: string;
  gpuType: GpuType | 'auto';
  maxSandboxes: number;
  heartbeatInterval: number;
  proxy?: URL;
  tlsMaxVersion?: 'TLSv1.2' | 'TLSv1.3';
  preconnect: number;
  registry: RegistryMode;
  diskPaths: DiskPath[];
  heartbeatExtra?: string;
  renderNode?: string;
  deregisterOnExit?: boolean;
}

/** What `resolveConfig` reads from the host besides argv and env (tests swap it). */
export interface HostProbes {
  gpuPaths?: GpuProbePaths;
}

/**
 * Validates what commander parsed. Throws RevdialError(REVDIAL_CONFIG_INVALID)
 * with one line that names the flag and its variable.
 */
export function resolveConfig(program: Command, env: NodeJS.ProcessEnv, host: HostProbes = {}): Config {
  const o = program.opts<RawOptions>();
  if (!o.apiUrl) throw configError('missing control plane URL: set HELIX_API_URL or --api-url');
  if (!o.wolfId) throw configError('missing Wolf id: set WOLF_ID or --wolf-id');
  const hasToken = o.token !== undefined && o.token !== '';
  const hasFile = o.tokenFile !== undefined && o.tokenFile !== '';
  if (hasToken && hasFile) throw configError('both a token and a token file are set: use exactly one of RUNNER_TOKEN / RUNNER_TOKEN_FILE');
  if (!hasToken && !hasFile) throw configError('missing runner token: set RUNNER_TOKEN or RUNNER_TOKEN_FILE');
  if (o.pingTimeout <= o.pingInterval) {
    throw configError(`--ping-timeout (${o.pingTimeout} s) must be longer than --ping-interval (${o.pingInterval} s)`);
  }

  let token: () => string;
  let tokenSource: Config['tokenSource'];
  let tokenWatch: TokenFile | undefined;
  if (hasFile) {
    tokenWatch = new TokenFile(o.tokenFile!);
    tokenSource = 'file';
    token = tokenWatch.read;
  } else {
    const value = o.token!;
    tokenSource = program.getOptionValueSource('token') === 'env' ? 'env' : 'flag';
    const setting = tokenSource === 'env' ? 'RUNNER_TOKEN' : '--token';
    if (/[\r\n]/.test(value)) throw configError(`the runner token (${setting}) contains a line break`);
    const problem = tokenProblem(value);
    if (problem) throw configError(`the runner token (${setting}) ${problem}`);
    token = () => value;
  }

  let ca: Buffer | undefined;
  if (o.caFile) {
    try {
      ca = readFileSync(o.caFile);
    } catch (err) {
      throw configError(`cannot read --ca-file ${o.caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw configError(`--ca-file ${o.caFile} holds no PEM certificate`);
  }

  const legacyRegister = o.register === true || booleanEnv(env, REGISTER_ENV);
  const registryExplicit = program.getOptionValueSource('registry') !== 'default';
  if (legacyRegister && registryExplicit && o.registry !== 'wolf-instances') {
    throw configError(`--register (${REGISTER_ENV}) means --registry wolf-instances, but REVDIAL_REGISTRY / --registry is ${o.registry}: set only one`);
  }
  const registry: RegistryMode = legacyRegister ? 'wolf-instances' : o.registry;
  const register = registry === 'wolf-instances';
  const proxy = proxyConfigFromEnv(o.proxy, env);
  const runnerId = o.runnerId ?? (registry === 'sandboxes' ? `hydra-${o.wolfId}` : `wolf-${o.wolfId}`);
  if (runnerId.startsWith(DESKTOP_RUNNER_PREFIX)) {
    throw configError(
      `REVDIAL_RUNNER_ID / --runner-id "${runnerId}" starts with ${DESKTOP_RUNNER_PREFIX}, which belongs to per-session desktop containers: use hydra-<id> for a GPU host, or leave it unset`,
    );
  }
  const sandboxId = registry === 'sandboxes' ? sandboxIdOf(runnerId) : undefined;
  if (registry === 'sandboxes' && sandboxId === undefined) {
    throw configError(
      `REVDIAL_RUNNER_ID / --runner-id "${runnerId}" must start with hydra- (or sandbox-) and name a host with REVDIAL_REGISTRY / --registry sandboxes: the control plane registers hosts by that prefix`,
    );
  }
  const deregisterOnExit = o.deregisterOnExit === true || booleanEnv(env, DEREGISTER_ON_EXIT_ENV);
  if (deregisterOnExit && registry !== 'sandboxes') {
    throw configError(`--deregister-on-exit (${DEREGISTER_ON_EXIT_ENV}) needs REVDIAL_REGISTRY / --registry sandboxes (wolf-instances always deregisters)`);
  }
  // Detected only for the sandboxes heartbeat: other modes never read /sys for it.
  let gpu: GpuFacts = { vendor: 'none', renderNode: 'SOFTWARE' };
  if (registry === 'sandboxes') {
    const detected = detectGpu(host.gpuPaths ?? DEFAULT_GPU_PATHS);
    gpu = {
      vendor: o.gpuType === 'auto' ? detected.vendor : o.gpuType,
      renderNode: o.renderNode ?? (o.gpuType === 'auto' || o.gpuType === detected.vendor ? detected.renderNode : 'SOFTWARE'),
    };
  }

  const insecure = o.insecureSkipTlsVerify === true || booleanEnv(env, INSECURE_ENV);
  const debug = booleanEnvLenient(env, 'DEBUG');
  const logLevel = debug && program.getOptionValueSource('logLevel') === 'default' ? 'debug' : o.logLevel;

  const config: Config = {
    apiUrl: o.apiUrl,
    wolfId: o.wolfId,
    runnerId,
    token,
    tokenSource,
    local: parseLocalAddress(o.local),
    localText: o.local,
    reconnectMaxMs: Math.round(o.reconnect * 1000),
    pingIntervalMs: Math.round(o.pingInterval * 1000),
    pingTimeoutMs: Math.round(o.pingTimeout * 1000),
    gracePeriodMs: Math.round(o.gracePeriod * 1000),
    maxTunnels: o.maxTunnels,
    pickupTimeoutMs: Math.round(o.pickupTimeout * 1000),
    localDialTimeoutMs: Math.round(o.localDialTimeout * 1000),
    insecureSkipTlsVerify: insecure,
    logLevel,
    checkOnly: o.checkConfig === true,
    metricsAddr: o.metricsAddr === 'off' ? null : o.metricsAddr,
    metricsPorts: program.getOptionValueSource('metricsAddr') === 'default' ? DEFAULT_METRICS_PORTS : 1,
    register,
    advertiseAddress: o.advertiseAddress ?? runnerId,
    gpuType: o.gpuType === 'auto' ? detectGpuType(host.gpuPaths ?? DEFAULT_GPU_PATHS) : o.gpuType,
    gpuTypeSource: o.gpuType === 'auto' ? 'auto' : 'flag',
    maxSandboxes: o.maxSandboxes,
    heartbeatIntervalMs: Math.round(o.heartbeatInterval * 1000),
    proxy,
    preconnect: o.preconnect,
    registry,
    gpu,
    diskPaths: o.diskPaths,
    deregisterOnExit,
  };
  if (o.tlsMaxVersion) config.tlsMaxVersion = o.tlsMaxVersion;
  if (sandboxId !== undefined) config.sandboxId = sandboxId;
  if (o.heartbeatExtra) config.heartbeatExtraFile = o.heartbeatExtra;
  if (hasFile) config.tokenFile = o.tokenFile!;
  if (tokenWatch) config.tokenWatch = tokenWatch;
  if (o.caFile) config.caFile = o.caFile;
  if (ca) config.ca = ca;
  return config;
}

/** DEBUG is shared with other tools, so an odd value means "off", not an error. */
function booleanEnvLenient(env: NodeJS.ProcessEnv, name: string): boolean {
  try {
    return booleanEnv(env, name);
  } catch {
    return false;
  }
}

function configError(message: string): RevdialError {
  return new RevdialError(ErrorCodes.CONFIG_INVALID, message);
}

/** The configuration as `--check-config` prints it: no token. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    apiUrl: config.apiUrl.href,
    wolfId: config.wolfId,
    runnerId: config.runnerId,
    token: `[redacted, from ${config.tokenSource}${config.tokenFile ? ` ${config.tokenFile}` : ''}]`,
    local: config.localText,
    reconnectMaxSeconds: config.reconnectMaxMs / 1000,
    pingIntervalSeconds: config.pingIntervalMs / 1000,
    pingTimeoutSeconds: config.pingTimeoutMs / 1000,
    gracePeriodSeconds: config.gracePeriodMs / 1000,
    maxTunnels: config.maxTunnels,
    pickupTimeoutSeconds: config.pickupTimeoutMs / 1000,
    localDialTimeoutSeconds: config.localDialTimeoutMs / 1000,
    caFile: config.caFile ?? null,
    insecureSkipTlsVerify: config.insecureSkipTlsVerify,
    logLevel: config.logLevel,
    metricsAddr: config.metricsAddr
      ? `${formatListenAddress(config.metricsAddr)}${config.metricsPorts > 1 ? ` (or the next free port up to ${config.metricsAddr.port + config.metricsPorts - 1})` : ''}`
      : 'off',
    register: config.register,
    advertiseAddress: config.advertiseAddress,
    gpuType: `${config.gpuType}${config.gpuTypeSource === 'auto' ? ' (detected)' : ''}`,
    maxSandboxes: config.maxSandboxes,
    heartbeatIntervalSeconds: config.heartbeatIntervalMs / 1000,
    tlsMaxVersion: config.tlsMaxVersion ?? 'TLSv1.3',
    preconnect: config.preconnect,
    registry: config.registry,
    ...(config.registry === 'sandboxes'
      ? {
          sandboxId: config.sandboxId,
          gpuVendor: config.gpu.vendor,
          renderNode: config.gpu.renderNode,
          diskPaths: config.diskPaths.map((d) => (d.mountPoint === d.statPath ? d.mountPoint : `${d.mountPoint}=${d.statPath}`)),
          heartbeatExtra: config.heartbeatExtraFile ?? null,
          deregisterOnExit: config.deregisterOnExit,
        }
      : {}),
    egressProxy: {
      explicit: config.proxy.explicit ? safeProxy(config.proxy.explicit) : null,
      http: config.proxy.http ? safeProxy(config.proxy.http) : null,
      https: config.proxy.https ? safeProxy(config.proxy.https) : null,
      noProxy: config.proxy.noProxy,
    },
  };
}
