/**
 * Egress through an HTTP CONNECT proxy: one decision (`proxyFor`) for every
 * connection the agent makes to the control plane (control WebSocket, each
 * data WebSocket, warm connections, registry calls), and the two ways to act
 * on it, both undici's: a CONNECT tunnel socket (`tunnel`, under the
 * WebSockets; TLS to the control plane then runs inside it, see connector.ts)
 * and a `Dispatcher` for the registry client.
 *
 * The decision stays here rather than in undici's `EnvHttpProxyAgent`: that
 * one is a dispatcher (it answers requests, it does not hand out the tunnel a
 * WebSocket runs over), it has no equivalent of `--proxy` beside the
 * environment, and its NO_PROXY takes no CIDR blocks (`10.0.0.0/8`), which
 * cluster configurations use.
 *
 * Which proxy: `--proxy` / REVDIAL_PROXY for every scheme; otherwise
 * HTTPS_PROXY for wss/https and HTTP_PROXY for ws/http (lower-case names win,
 * as curl reads them). NO_PROXY applies to both, including `--proxy`.
 *
 * Credentials in the proxy URL are sent as `Proxy-Authorization: Basic` and
 * kept out of everything that might be printed: the URL handed to undici has
 * none, and `safeProxy` is what logs and `--check-config` show.
 */
import { BlockList, type Socket, isIP } from 'node:net';
import type { Dispatcher, Pool } from 'undici';
import { ErrorCodes, RevdialError } from '../errors.js';

export interface ProxyConfig {
  /** `--proxy` / REVDIAL_PROXY: every scheme. */
  explicit?: URL;
  /** HTTP_PROXY / http_proxy: ws:// and http:// targets. */
  http?: URL;
  /** HTTPS_PROXY / https_proxy: wss:// and https:// targets. */
  https?: URL;
  /** NO_PROXY / no_proxy, as given. */
  noProxy: string;
}

export interface TlsSettings {
  ca?: Buffer | undefined;
  rejectUnauthorized: boolean;
}

/**
 * Parses a proxy URL. A bare `host:port` means `http://host:port`, as most
 * tools read HTTP_PROXY. Only http and https proxies speak CONNECT.
 */
export function parseProxyUrl(text: string, source: string): URL {
  const value = text.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new RevdialError(ErrorCodes.CONFIG_INVALID, `${source} is not a URL; expected e.g. http://proxy.example.com:3128`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RevdialError(ErrorCodes.CONFIG_INVALID, `${source}: proxy scheme ${url.protocol} not supported; use an HTTP CONNECT proxy (http:// or https://)`);
  }
  if (!url.hostname) throw new RevdialError(ErrorCodes.CONFIG_INVALID, `${source} names no proxy host`);
  return url;
}

/** Reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY (lower-case first) from an environment. */
export function proxyConfigFromEnv(explicit: URL | undefined, env: NodeJS.ProcessEnv): ProxyConfig {
  const pick = (name: string): [string, string] | undefined => {
    const lower = env[name.toLowerCase()];
    if (lower !== undefined && lower.trim() !== '') return [name.toLowerCase(), lower];
    const upper = env[name];
    if (upper !== undefined && upper.trim() !== '') return [name, upper];
    return undefined;
  };
  const config: ProxyConfig = { noProxy: pick('NO_PROXY')?.[1] ?? '' };
  if (explicit) config.explicit = explicit;
  const http = pick('HTTP_PROXY');
  if (http) config.http = parseProxyUrl(http[1], http[0]);
  const https = pick('HTTPS_PROXY');
  if (https) config.https = parseProxyUrl(https[1], https[0]);
  return config;
}

/** `http://host:port` of a proxy, with `[credentials]@` when it has some: safe to print. */
export function safeProxy(url: URL): string {
  const creds = url.username || url.password ? '[credentials]@' : '';
  return `${url.protocol}//${creds}${url.host}`;
}

/** The proxy URL without credentials, and the `Proxy-Authorization` value they make. */
function splitCredentials(url: URL): { bare: URL; authorization?: string } {
  const bare = new URL(url.href);
  bare.username = '';
  bare.password = '';
  if (!url.username && !url.password) return { bare };
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return { bare, authorization: `Basic ${Buffer.from(pair).toString('base64')}` };
}

function defaultPort(protocol: string): number {
  return protocol === 'https:' || protocol === 'wss:' ? 443 : 80;
}

/**
 * NO_PROXY rules: comma- or space-separated; `*` matches everything; an
 * entry may end in `:port`; `example.com`, `.example.com` and
 * `*.example.com` all match example.com and its subdomains; IP addresses
 * match exactly and `10.0.0.0/8` style CIDR blocks by range.
 */
export function bypassesProxy(target: URL, noProxy: string): boolean {
  const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const port = Number(target.port || defaultPort(target.protocol));
  for (const raw of noProxy.split(/[\s,]+/)) {
    let entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    let entryPort: number | undefined;
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(entry);
    if (m) {
      entry = m[1]!;
      entryPort = Number(m[2]);
    }
    entry = entry.replace(/^\[|\]$/g, '');
    if (entryPort !== undefined && entryPort !== port) continue;
    if (entry.includes('/')) {
      if (cidrContains(entry, host)) return true;
      continue;
    }
    if (isIP(entry) !== 0) {
      if (entry === host) return true;
      continue;
    }
    const domain = entry.replace(/^\*?\./, '');
    if (host === domain || host.endsWith(`.${domain}`)) return true;
  }
  return false;
}

function cidrContains(cidr: string, host: string): boolean {
  const [net, bits] = cidr.split('/');
  const family = isIP(net ?? '');
  const hostFamily = isIP(host);
  if (family === 0 || hostFamily !== family) return false;
  const prefix = Number(bits);
  if (!Number.isInteger(prefix)) return false;
  const list = new BlockList();
  try {
    list.addSubnet(net!, prefix, family === 6 ? 'ipv6' : 'ipv4');
  } catch {
    return false;
  }
  return list.check(host, family === 6 ? 'ipv6' : 'ipv4');
}

type Undici = typeof import('undici');

/** The egress decision and the undici pools that carry it out, built once and shared. */
export class EgressProxy {
  readonly #config: ProxyConfig;
  readonly #pools = new Map<string, Pool>();
  readonly #undici: Undici | undefined;

  /**
   * undici is loaded here, and only when a proxy is configured: it costs an
   * idle agent about 10 MiB of resident memory, which agents without a proxy
   * (most) do not pay.
   */
  static async create(config: ProxyConfig): Promise<EgressProxy> {
    const configured = config.explicit ?? config.https ?? config.http;
    return new EgressProxy(config, configured ? await import('undici') : undefined);
  }

  private constructor(config: ProxyConfig, undici: Undici | undefined) {
    this.#config = config;
    this.#undici = undici;
  }

  /** The proxy for a target URL (with credentials), or `undefined` to dial directly. */
  proxyFor(target: URL): URL | undefined {
    const secure = target.protocol === 'https:' || target.protocol === 'wss:';
    const proxy = this.#config.explicit ?? (secure ? this.#config.https : this.#config.http);
    if (!proxy) return undefined;
    if (bypassesProxy(target, this.#config.noProxy)) return undefined;
    return proxy;
  }

  /** What logs may say about the route to `target`: `direct` or the proxy without credentials. */
  describeRoute(target: URL): string {
    const proxy = this.proxyFor(target);
    return proxy ? `via proxy ${safeProxy(proxy)}` : 'direct';
  }

  /**
   * A CONNECT tunnel through the proxy to `target`'s host and port: a raw
   * socket the caller runs TLS (or plain HTTP) over. Errors name the proxy:
   * REVDIAL_PROXY_FAILED when it cannot be reached, REVDIAL_PROXY_REJECTED
   * when it answers the CONNECT with anything but 200.
   */
  async tunnel(target: URL, signal: AbortSignal): Promise<Socket> {
    const proxy = this.proxyFor(target);
    if (!proxy || !this.#undici) throw new Error(`no proxy applies to ${target.host}`);
    const where = safeProxy(proxy);
    const { bare, authorization } = splitCredentials(proxy);
    let pool = this.#pools.get(bare.origin);
    if (!pool) {
      // One connection per CONNECT (each socket leaves the pool once tunnelled), as many at once as asked.
      pool = new this.#undici.Pool(bare.origin, { connections: null, pipelining: 1 });
      this.#pools.set(bare.origin, pool);
    }
    const host = target.hostname;
    const authority = `${host}:${target.port || defaultPort(target.protocol)}`;
    let answer: Dispatcher.ConnectData;
    try {
      answer = await pool.connect({
        path: authority,
        headers: { host: authority, ...(authorization ? { 'proxy-authorization': authorization } : {}) },
        signal,
      });
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new RevdialError(
        ErrorCodes.PROXY_FAILED,
        `cannot reach the egress proxy ${where} (${code}): check --proxy / REVDIAL_PROXY / HTTPS_PROXY and NO_PROXY`,
        { cause: err },
      );
    }
    const { statusCode, socket } = answer;
    if (statusCode !== 200) {
      socket.destroy();
      const hint =
        statusCode === 407 || statusCode === 401 ? 'check the proxy credentials in the proxy URL' : 'check that the proxy allows CONNECT to this host and port';
      throw new RevdialError(ErrorCodes.PROXY_REJECTED, `egress proxy ${where} refused CONNECT to ${authority} (HTTP ${statusCode}): ${hint}`);
    }
    // undici's own socket settings (keep-alive probes, timeouts) stay; the tunnel is ours now.
    // undici's CONNECT hands back the net.Socket it dialed, typed only as a Duplex.
    // eslint-disable-next-line @typescript-eslint/no-unsafe-class-instance-assignment
    return socket as Socket;
  }

  /**
   * An undici dispatcher for requests to `target`'s origin: through the proxy
   * with CONNECT (also for plain http, never as a forward proxy), or direct;
   * with the same TLS trust as the WebSocket connections. undici is loaded
   * here, on first use: only `--register` needs it, and loading it costs
   * about 10 MiB of resident memory.
   */
  async dispatcherFor(target: URL, tls: TlsSettings): Promise<Dispatcher> {
    const { Agent: UndiciAgent, ProxyAgent } = this.#undici ?? (await import('undici'));
    const requestTls = { rejectUnauthorized: tls.rejectUnauthorized, ...(tls.ca ? { ca: tls.ca } : {}) };
    const proxy = this.proxyFor(target);
    if (!proxy) return new UndiciAgent({ connect: requestTls });
    const { bare, authorization } = splitCredentials(proxy);
    return new ProxyAgent({
      uri: bare.href,
      ...(authorization ? { token: authorization } : {}),
      proxyTunnel: true,
      requestTls,
    });
  }

  /** Closes the proxy pools (tunnels already handed out belong to their users). */
  destroy(): void {
    for (const pool of this.#pools.values()) void pool.destroy().catch(() => undefined);
    this.#pools.clear();
  }
}
