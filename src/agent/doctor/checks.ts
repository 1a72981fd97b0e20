/**
 * The doctor's checks, one small function per step, each built on the piece
 * of the agent it checks: the egress proxy's CONNECT tunnel (proxy.ts), the
 * shared TLS settings (tls-context.ts), the WebSocket dial with its coded
 * errors (ws-dial.ts), the local dialer (local-dialer.ts). A check resolves
 * with what it saw, or throws a `StepFailure` that says what is wrong and
 * what to do. Each gets an AbortSignal that fires at its time limit (run.ts)
 * and must let go of its sockets then.
 */
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import net, { isIP } from 'node:net';
import { type DetailedPeerCertificate, type PeerCertificate, type TLSSocket, checkServerIdentity, connect as tlsConnect } from 'node:tls';
import type WebSocket from 'ws';
import type { Config } from '../config.js';
import { type ErrorCode, ErrorCodes, HandshakeRejectedError, RevdialError } from '../errors.js';
import type { DirectConnector } from '../net/connector.js';
import { targetOf } from '../net/connector.js';
import { controlUrl, safeOrigin } from '../net/endpoints.js';
import { describeTarget, dialLocal } from '../net/local-dialer.js';
import { type EgressProxy, safeProxy } from '../net/proxy.js';
import type { TlsSettings } from '../net/tls-context.js';
import { dialWebSocket } from '../net/ws-dial.js';
import { formatListenAddress } from '../ops/server.js';
import { type RegistryMode, probeRegistry } from '../registry/http.js';
import { systemClock } from '../clock.js';
import type { DoctorFlags } from './command.js';

/** A failed step: `message` says what is wrong, `fix` what to do. */
export class StepFailure extends RevdialError {
  readonly fix: string;

  constructor(code: ErrorCode, message: string, fix: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'StepFailure';
    this.fix = fix;
  }
}

/** What every check may use: the configuration and the agent's own transport pieces. */
export interface CheckContext {
  config: Config;
  flags: DoctorFlags;
  proxy: EgressProxy;
  tls: TlsSettings;
  connector: DirectConnector;
  userAgent: string;
}

/** Where the token comes from, for messages (never the token). */
export function tokenSource(config: Config): string {
  if (config.tokenSource === 'file') return `the token file ${config.tokenFile ?? ''}`.trim();
  return config.tokenSource === 'env' ? 'RUNNER_TOKEN' : '--token';
}

function errnoOf(err: unknown): string {
  const cause = err instanceof Error && err.cause !== undefined ? err.cause : err;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : '';
}

function control(ctx: CheckContext): URL {
  return controlUrl(ctx.config.apiUrl, ctx.config.runnerId);
}

/** The host this machine itself resolves: the proxy's when one applies (the proxy resolves the control plane's). */
export function resolvedHost(ctx: CheckContext): { host: string; what: string } {
  const url = control(ctx);
  const proxy = ctx.proxy.proxyFor(url);
  if (proxy) return { host: proxy.hostname.replace(/^\[|\]$/g, ''), what: `the egress proxy ${safeProxy(proxy)}` };
  return { host: targetOf(url).host, what: 'the control plane' };
}

export async function checkDns(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const { host, what } = resolvedHost(ctx);
  if (isIP(host) !== 0) return `${host} is an IP address`;
  let addresses: { address: string }[];
  try {
    addresses = await lookup(host, { all: true });
  } catch (err) {
    signal.throwIfAborted();
    throw new StepFailure(
      ErrorCodes.DNS_FAILED,
      `${host} (${what}) does not resolve (${errnoOf(err) || String(err)})`,
      `check the host name in ${what === 'the control plane' ? 'HELIX_API_URL' : '--proxy / HTTPS_PROXY'} and this host's DNS (getent hosts ${host}; /etc/resolv.conf)`,
      { cause: err },
    );
  }
  signal.throwIfAborted();
  const shown = addresses.slice(0, 4).map((a) => a.address);
  const via = what === 'the control plane' ? '' : ` (${what}; it resolves the control plane's host itself)`;
  return `${host} → ${shown.join(', ')}${addresses.length > shown.length ? ', …' : ''}${via}`;
}

/** A plain TCP connection to host:port, or a coded failure naming it. */
function connectTcp(host: string, port: number, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const done = (err?: Error): void => {
      signal.removeEventListener('abort', onAbort);
      socket.removeAllListeners('connect');
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onAbort = (): void => done(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    socket.once('connect', () => done());
    socket.once('error', (err) => done(err));
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export async function checkTcp(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const url = control(ctx);
  const { host, port } = targetOf(url);
  const proxy = ctx.proxy.proxyFor(url);
  if (proxy) {
    const socket = await proxyTunnel(ctx, url, signal);
    socket.destroy();
    return `the egress proxy ${safeProxy(proxy)} opened a CONNECT tunnel to ${host}:${port}`;
  }
  let socket: net.Socket;
  try {
    socket = await connectTcp(host, port, signal);
  } catch (err) {
    signal.throwIfAborted();
    const code = errnoOf(err);
    const fix =
      code === 'ECONNREFUSED'
        ? `nothing accepts connections there: check the port in HELIX_API_URL and that the control plane (or its load balancer) is up`
        : `check the network path from this host to ${host}:${port} (firewall, routes); behind a proxy set --proxy / HTTPS_PROXY`;
    throw new StepFailure(ErrorCodes.CONNECT_FAILED, `cannot open TCP to ${host}:${port} (${code || String(err)})`, fix, { cause: err });
  }
  const remote = `${socket.remoteAddress ?? host}:${socket.remotePort ?? port}`;
  socket.destroy();
  return `connected to ${remote}`;
}

/** The agent's CONNECT tunnel; its coded errors already name the proxy. */
async function proxyTunnel(ctx: CheckContext, url: URL, signal: AbortSignal): Promise<net.Socket> {
  try {
    return await ctx.proxy.tunnel(url, signal);
  } catch (err) {
    signal.throwIfAborted();
    if (err instanceof RevdialError && (err.code === ErrorCodes.PROXY_FAILED || err.code === ErrorCodes.PROXY_REJECTED)) {
      const fix =
        err.code === ErrorCodes.PROXY_FAILED
          ? 'check the proxy address in --proxy / REVDIAL_PROXY / HTTPS_PROXY, and that the proxy runs; NO_PROXY lists hosts to reach directly'
          : "ask the proxy's administrator to allow CONNECT to the control plane's host and port, or fix the credentials in the proxy URL";
      throw new StepFailure(err.code, err.message.replace(/: check .*$/, ''), fix, { cause: err });
    }
    throw err;
  }
}

function nameOf(part: PeerCertificate['subject'] | undefined): string {
  const cn = part?.CN;
  const value = Array.isArray(cn) ? cn.join(', ') : cn;
  if (value) return `CN=${value}`;
  const o = part?.O;
  return o ? `O=${Array.isArray(o) ? o.join(', ') : o}` : '(no name)';
}

function describeCert(cert: PeerCertificate): string {
  const san = cert.subjectaltname ? ` [${cert.subjectaltname}]` : '';
  return `${nameOf(cert.subject)}${san} issued by ${nameOf(cert.issuer)}`;
}

function isoDate(text: string): string {
  const t = Date.parse(text);
  return Number.isNaN(t) ? text : new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The first certificate of the chain whose validity window `now` falls outside of (the leaf first). */
function outOfDate(cert: DetailedPeerCertificate, now: number, which: 'expired' | 'not-yet'): PeerCertificate {
  const seen = new Set<DetailedPeerCertificate>();
  // Node's type says issuerCertificate is always set; an incomplete chain leaves it undefined.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
  for (let c: DetailedPeerCertificate | undefined = cert; c && !seen.has(c); c = c.issuerCertificate) {
    seen.add(c);
    if (which === 'expired' && Date.parse(c.valid_to) < now) return c;
    if (which === 'not-yet' && Date.parse(c.valid_from) > now) return c;
  }
  return cert;
}

const UNKNOWN_CA = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
]);

/**
 * A TLS handshake that accepts any certificate, then judges it as the agent
 * would (chain, validity, host name) so the failure can say which certificate
 * and why. Nothing is sent over it: no token leaves on an untrusted handshake.
 */
export async function checkTls(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const url = control(ctx);
  const { host, port } = targetOf(url);
  const tunnel = ctx.proxy.proxyFor(url) ? await proxyTunnel(ctx, url, signal) : undefined;
  const { session: _unused, ...options } = ctx.tls.connectOptions(host, port);
  let socket: TLSSocket;
  try {
    socket = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ ...options, ...(tunnel ? { socket: tunnel } : {}), rejectUnauthorized: false, checkServerIdentity: () => undefined });
      const done = (err?: Error): void => {
        signal.removeEventListener('abort', onAbort);
        if (err) {
          s.destroy();
          tunnel?.destroy();
          reject(err);
        } else {
          resolve(s);
        }
      };
      const onAbort = (): void => done(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      s.once('secureConnect', () => done());
      s.once('error', (err: Error) => done(err));
      signal.addEventListener('abort', onAbort, { once: true });
    });
  } catch (err) {
    signal.throwIfAborted();
    throw new StepFailure(
      ErrorCodes.TLS_HANDSHAKE_FAILED,
      `the TLS handshake with ${host}:${port} failed (${errnoOf(err) || (err as Error).message})`,
      'check that HELIX_API_URL is https:// on the port that serves TLS; a proxy that intercepts TLS needs its CA in --ca-file / REVDIAL_CA_FILE',
      { cause: err },
    );
  }
  const cert = socket.getPeerCertificate(true);
  const authError = socket.authorizationError as unknown as Error | string | null;
  const protocol = socket.getProtocol() ?? 'TLS';
  socket.destroy();
  const problem = judgeCertificate(
    ctx,
    host,
    cert,
    authError === null ? '' : typeof authError === 'string' ? authError : ((authError as NodeJS.ErrnoException).code ?? authError.message),
  );
  if (problem && !ctx.config.insecureSkipTlsVerify) throw problem;
  const seen = `${describeCert(cert)}, valid until ${isoDate(cert.valid_to)}, ${protocol}`;
  if (problem) return `verification is OFF (--insecure-skip-tls-verify), and it would fail: ${problem.message}; ${seen}`;
  return seen;
}

function judgeCertificate(ctx: CheckContext, host: string, cert: DetailedPeerCertificate, authCode: string): StepFailure | undefined {
  const now = Date.now();
  const caHint = ctx.config.caFile ? `(now ${ctx.config.caFile})` : '(none set now: the system CAs only)';
  if (authCode === 'CERT_HAS_EXPIRED') {
    const c = outOfDate(cert, now, 'expired');
    return new StepFailure(
      ErrorCodes.TLS_CERT_EXPIRED,
      `certificate ${describeCert(c)} expired on ${isoDate(c.valid_to)}`,
      `renew it where the control plane's TLS ends (the control plane or its load balancer); this host's clock reads ${new Date(now).toISOString()}`,
    );
  }
  if (authCode === 'CERT_NOT_YET_VALID') {
    const c = outOfDate(cert, now, 'not-yet');
    return new StepFailure(
      ErrorCodes.TLS_CERT_NOT_YET_VALID,
      `certificate ${describeCert(c)} is not valid before ${isoDate(c.valid_from)}`,
      `check this host's clock (it reads ${new Date(now).toISOString()}: NTP, timedatectl)`,
    );
  }
  if (authCode !== '') {
    const why = UNKNOWN_CA.has(authCode) ? 'is not signed by a CA this host trusts' : 'was refused';
    return new StepFailure(
      ErrorCodes.TLS_UNTRUSTED,
      `certificate ${describeCert(cert)} ${why} (${authCode})`,
      `for a private CA give its PEM with --ca-file / REVDIAL_CA_FILE ${caHint}; do not turn verification off`,
    );
  }
  const mismatch = checkServerIdentity(host, cert);
  if (mismatch) {
    return new StepFailure(
      ErrorCodes.TLS_HOSTNAME_MISMATCH,
      `certificate ${describeCert(cert)} is not for ${host}`,
      `use a host name the certificate names in HELIX_API_URL, or have the certificate issued for ${host}`,
    );
  }
  return undefined;
}

/** GET /readyz of an ops address: its status and the runner id it names, or undefined when nothing answers. */
function readyz(host: string, port: number, signal: AbortSignal): Promise<{ status: number; runnerId?: string } | undefined> {
  return new Promise((resolve) => {
    const req = http.get({ host, port, path: '/readyz', agent: false, timeout: 1000, signal }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < 4096) body += chunk;
      });
      res.on('end', () => {
        let runnerId: string | undefined;
        try {
          const parsed = JSON.parse(body) as { runnerId?: unknown };
          if (typeof parsed.runnerId === 'string') runnerId = parsed.runnerId;
        } catch {
          runnerId = undefined;
        }
        resolve({ status: res.statusCode ?? 0, ...(runnerId !== undefined ? { runnerId } : {}) });
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/**
 * Where an agent with this runner id answers ready on its ops address (so it
 * holds the control connection), or undefined. With the default address the
 * agent may have moved up its port range, so every port of it is asked; an
 * answer naming another runner id is another agent on this host.
 */
async function runningAgent(ctx: CheckContext, signal: AbortSignal): Promise<string | undefined> {
  const addr = ctx.config.metricsAddr;
  if (!addr || addr.port === 0) return undefined;
  const host = addr.host === '0.0.0.0' ? '127.0.0.1' : addr.host === '::' ? '::1' : addr.host;
  // `metricsPorts` (how far up the default address may have moved) exists once the port range does.
  const declared: unknown = (ctx.config as unknown as Record<string, unknown>).metricsPorts;
  const ports = typeof declared === 'number' && declared > 1 ? Math.min(declared, 64) : 1;
  for (let port = addr.port; port < addr.port + ports && port <= 65535; port++) {
    const answer = await readyz(host, port, signal);
    if (answer?.status === 200 && (answer.runnerId === undefined || answer.runnerId === ctx.config.runnerId)) {
      return formatListenAddress({ host, port });
    }
  }
  return undefined;
}

/**
 * A real control-connection upgrade with the token, closed at once. The
 * control plane routes a runner id to its newest control connection, so this
 * one would take the id over from an agent running here with the same
 * configuration: when that agent answers ready, its connection is the proof
 * and none is opened (unless --force).
 */
export async function checkToken(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const url = control(ctx);
  const { runnerId } = ctx.config;
  if (!ctx.flags.force) {
    const running = await runningAgent(ctx, signal);
    if (running) {
      return `an agent on this host holds a control connection for runner id ${runnerId} (http://${running}/readyz answered 200): not opening another, which would take the runner id over from it (--force opens one anyway)`;
    }
  }
  let ws: WebSocket;
  try {
    ws = await dialWebSocket(url, {
      transport: { token: ctx.config.token, userAgent: ctx.userAgent, rejectUnauthorized: !ctx.config.insecureSkipTlsVerify, connector: ctx.connector },
      handshakeTimeoutMs: ctx.flags.timeoutMs,
      maxPayload: 64 * 1024,
      signal,
    });
  } catch (err) {
    signal.throwIfAborted();
    if (err instanceof HandshakeRejectedError && err.code === ErrorCodes.AUTH_REJECTED) {
      throw new StepFailure(
        ErrorCodes.AUTH_REJECTED,
        `the control plane rejects the runner token (HTTP ${err.status}) for runner id ${runnerId}`,
        `the token is wrong, revoked or not valid for this runner id: put the right one in ${tokenSource(ctx.config)}`,
        { cause: err },
      );
    }
    if (err instanceof HandshakeRejectedError) {
      const fix =
        err.status === 404
          ? `HELIX_API_URL must be the control plane's API base (it serves ${url.pathname}); check its base path`
          : 'check HELIX_API_URL and the control plane (or the proxy or load balancer in front of it, which must pass WebSocket upgrades)';
      throw new StepFailure(err.code, `the control plane answered the upgrade to ${url.pathname} with HTTP ${err.status}`, fix, { cause: err });
    }
    if (err instanceof RevdialError) throw new StepFailure(err.code, err.message, 'see the steps above', { cause: err });
    throw err;
  }
  ws.close(1000);
  // Backstop: a peer that never answers the close does not keep the check alive.
  setTimeout(() => ws.terminate(), 500).unref();
  return `the control plane accepted the token for runner id ${runnerId} (upgrade to ${safeOrigin(url)}${url.pathname}, closed at once)`;
}

function wolfFix(ctx: CheckContext, code: string): string {
  const local = ctx.config.local;
  if (local.kind === 'unix') {
    if (code === 'ENOENT')
      return `no socket at ${local.path}: start Wolf, and make its WOLF_SOCKET_PATH and --local / WOLF_LOCAL_ADDR name the same path (share the directory)`;
    if (code === 'EACCES') {
      return "the agent's user may not open the socket: give it the socket's group (systemd SupplementaryGroups=, Kubernetes fsGroup) and the socket group write permission; run doctor as the agent's user";
    }
    if (code === 'ECONNREFUSED') return `${local.path} exists but nothing accepts on it (a stale socket?): is Wolf running?`;
  }
  if (code === 'ECONNREFUSED') return `nothing listens on ${describeTarget(local)}: is Wolf running, and is --local / WOLF_LOCAL_ADDR right?`;
  return `is Wolf running, and is --local / WOLF_LOCAL_ADDR (${describeTarget(local)}) its API?`;
}

/** GET over a socket already connected; resolves with the status once the head arrives. */
function getStatus(socket: net.Socket, path: string, signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ method: 'GET', path, headers: { host: 'localhost' }, createConnection: () => socket, signal });
    req.once('response', (res) => {
      resolve(res.statusCode ?? 0);
      res.destroy();
      socket.destroy();
    });
    req.once('error', (err) => {
      socket.destroy();
      reject(err);
    });
    req.end();
  });
}

export async function checkWolf(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const { local } = ctx.config;
  const path = ctx.flags.wolfPath;
  let socket: net.Socket;
  try {
    socket = await dialLocal(local, { timeoutMs: ctx.flags.timeoutMs, signal });
  } catch (err) {
    signal.throwIfAborted();
    const code = errnoOf(err);
    if (err instanceof RevdialError) {
      throw new StepFailure(err.code, `cannot connect to ${describeTarget(local)}${code ? ` (${code})` : ''}`, wolfFix(ctx, code), { cause: err });
    }
    throw err;
  }
  socket.resume();
  let status: number;
  try {
    status = await getStatus(socket, path, signal);
  } catch (err) {
    signal.throwIfAborted();
    throw new StepFailure(
      ErrorCodes.WOLF_API_FAILED,
      `${describeTarget(local)} accepted but GET ${path} got no HTTP answer (${errnoOf(err) || (err as Error).message})`,
      `is --local / WOLF_LOCAL_ADDR Wolf's API? (--wolf-path asks for another path)`,
      { cause: err },
    );
  }
  if (status >= 400) {
    throw new StepFailure(
      ErrorCodes.WOLF_API_FAILED,
      `${describeTarget(local)} answered GET ${path} with HTTP ${status}`,
      status === 404 ? `is --local / WOLF_LOCAL_ADDR Wolf's API? (--wolf-path asks for another path)` : "check Wolf's own logs",
    );
  }
  return `GET ${path} answered HTTP ${status}`;
}

/** The registry API the configuration implies (`--registry`, or `--register` for wolf-instances). */
export function registryMode(config: Config): RegistryMode {
  return config.registry;
}

function registryFix(ctx: CheckContext, code: string | undefined): string {
  if (code === ErrorCodes.AUTH_REJECTED) return `the registry refuses the token: check ${tokenSource(ctx.config)}`;
  if (code === ErrorCodes.REGISTRY_FAILED)
    return 'check --registry / REVDIAL_REGISTRY against what this control plane offers (a 404 means it has no such registry)';
  return 'check the control plane (the steps above reached it)';
}

/**
 * The registry's read-only probe (registry/http.ts `probeRegistry`: a GET of
 * the list, never a registration), with the token, the agent's TLS trust and
 * egress. It says whether this host is listed; not being listed yet is no
 * failure (a wolf-instances agent registers at start, a sandbox at its first
 * control connection).
 */
export async function checkRegistry(ctx: CheckContext, signal: AbortSignal): Promise<string> {
  const mode = registryMode(ctx.config);
  if (mode === 'off') return 'no registry mode set';
  const dispatcher = await ctx.proxy.dispatcherFor(ctx.config.apiUrl, ctx.tls);
  try {
    const result = await probeRegistry({
      mode,
      apiUrl: ctx.config.apiUrl,
      token: ctx.config.token,
      userAgent: ctx.userAgent,
      dispatcher,
      name: ctx.config.wolfId,
      ...(ctx.config.sandboxId !== undefined ? { sandboxId: ctx.config.sandboxId } : {}),
      timeoutMs: ctx.flags.timeoutMs,
      clock: systemClock,
    });
    signal.throwIfAborted();
    if (!result.ok) throw new StepFailure((result.code ?? ErrorCodes.REGISTRY_FAILED) as ErrorCode, result.detail, registryFix(ctx, result.code));
    return result.detail;
  } finally {
    void dispatcher.close().catch(() => undefined);
  }
}
