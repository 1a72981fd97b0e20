/**
 * Egress through an HTTP CONNECT proxy: one decision (`proxyFor`) for every
 * connection the agent makes to the control plane (control WebSocket, each
 * data WebSocket, registry calls), and the two ways to act on it: an
 * `http.Agent` for `ws` and an undici `Dispatcher` for the registry client.
 *
 * Which proxy: `--proxy` / REVDIAL_PROXY for every scheme; otherwise
 * HTTPS_PROXY for wss/https and HTTP_PROXY for ws/http (lower-case names win,
 * as curl reads them). NO_PROXY applies to both, including `--proxy`.
 *
 * Credentials in the proxy URL are sent as `Proxy-Authorization: Basic` and
 * kept out of everything that might be printed: the URL handed to the proxy
 * libraries has none (https-proxy-agent logs its URL under DEBUG), and
 * `safeProxy` is what logs and `--check-config` show.
 */
import assert from 'node:assert/strict';
import type { Agent as HttpAgent, ClientRequest } from 'node:http';
import { BlockList, type Socket, isIP } from 'node:net';
import type { HttpsProxyAgent } from 'https-proxy-agent';
import type { Dispatcher } from 'undici';
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
    list.addSubnet(net as string, prefix, family === 6 ? 'ipv6' : 'ipv4');
  } catch {
    return false;
  }
  return list.check(host, family === 6 ? 'ipv6' : 'ipv4');
}

type ConnectOpts = Parameters<HttpsProxyAgent<string>['connect']>[1];
/** Builds the `http.Agent` for one proxy; `secure` says whether the target is wss/https. */
type ConnectAgentFactory = (proxy: URL, secure: boolean) => HttpAgent;

/**
 * An https-proxy-agent that turns a refused CONNECT (407, 403, 502, ...) and
 * an unreachable proxy into coded errors naming the proxy, instead of a
 * handshake "rejected by the control plane" that would send the operator to
 * the wrong place. The class is defined once the module is loaded (see
 * `EgressProxy.create`), hence the factory.
 */
function connectAgentFactory(Base: typeof HttpsProxyAgent): ConnectAgentFactory {
  class ConnectProxyAgent extends Base<string> {
    readonly #secure: boolean;
    readonly #where: string;

    constructor(proxy: URL, secure: boolean) {
      const { bare, authorization } = splitCredentials(proxy);
      super(bare, {
        ...(authorization ? { headers: { 'Proxy-Authorization': authorization } } : {}),
        keepAlive: false,
      });
      this.#secure = secure;
      this.#where = safeProxy(proxy);
    }

    // ws hands the agent plain request options; say which kind of target it is
    // instead of letting agent-base guess from a stack trace.
    override isSecureEndpoint(): boolean {
      return this.#secure;
    }

    override async connect(req: ClientRequest, opts: ConnectOpts): Promise<Socket> {
      let status = 200;
      let statusText = '';
      const onProxyConnect = (res: { statusCode: number; statusText: string }): void => {
        status = res.statusCode;
        statusText = res.statusText;
      };
      req.once('proxyConnect', onProxyConnect);
      let socket: Socket;
      try {
        socket = await super.connect(req, opts);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        throw new RevdialError(
          ErrorCodes.PROXY_FAILED,
          `cannot reach the egress proxy ${this.#where} (${code}): check --proxy / REVDIAL_PROXY / HTTPS_PROXY and NO_PROXY`,
          { cause: err },
        );
      } finally {
        req.removeListener('proxyConnect', onProxyConnect);
      }
      if (status !== 200) {
        socket.destroy();
        const hint =
          status === 407 || status === 401 ? 'check the proxy credentials in the proxy URL' : 'check that the proxy allows CONNECT to this host and port';
        throw new RevdialError(
          ErrorCodes.PROXY_REJECTED,
          `egress proxy ${this.#where} refused CONNECT to ${opts.host}:${opts.port} (HTTP ${status}${statusText ? ` ${statusText}` : ''}): ${hint}`,
        );
      }
      return socket;
    }
  }
  return (proxy, secure) => new ConnectProxyAgent(proxy, secure);
}

/** The egress decision and the agents that carry it out, built once and shared. */
export class EgressProxy {
  readonly #config: ProxyConfig;
  readonly #agents = new Map<string, HttpAgent>();
  readonly #makeAgent: ConnectAgentFactory | undefined;

  /**
   * https-proxy-agent is loaded here, and only when a proxy is configured:
   * `ws` asks for its agent synchronously (`agentFor`), so it has to be in
   * hand before the first connection. Without a proxy it is never loaded: it
   * and what it pulls in cost an idle agent about 3 MiB of resident memory.
   */
  static async create(config: ProxyConfig): Promise<EgressProxy> {
    const configured = config.explicit ?? config.https ?? config.http;
    const makeAgent = configured ? connectAgentFactory((await import('https-proxy-agent')).HttpsProxyAgent) : undefined;
    return new EgressProxy(config, makeAgent);
  }

  private constructor(config: ProxyConfig, makeAgent: ConnectAgentFactory | undefined) {
    this.#config = config;
    this.#makeAgent = makeAgent;
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

  /** An `http.Agent` that tunnels `ws`/`wss` through the proxy, or `undefined` (direct). */
  agentFor(target: URL): HttpAgent | undefined {
    const proxy = this.proxyFor(target);
    if (!proxy) return undefined;
    const secure = target.protocol === 'https:' || target.protocol === 'wss:';
    const key = `${secure ? 's' : 'p'} ${proxy.href}`;
    let agent = this.#agents.get(key);
    if (!agent) {
      // create() loads it whenever the config names a proxy, and proxyFor()
      // finds one only in the config: never dial directly instead.
      assert.ok(this.#makeAgent, 'https-proxy-agent is loaded whenever a proxy is configured');
      agent = this.#makeAgent(proxy, secure);
      this.#agents.set(key, agent);
    }
    return agent;
  }

  /**
   * An undici dispatcher for requests to `target`'s origin: through the proxy
   * with CONNECT (also for plain http, never as a forward proxy), or direct;
   * with the same TLS trust as the WebSocket connections. undici is loaded
   * here, on first use: only `--register` needs it, and loading it costs
   * about 10 MiB of resident memory.
   */
  async dispatcherFor(target: URL, tls: TlsSettings): Promise<Dispatcher> {
    const { Agent: UndiciAgent, ProxyAgent } = await import('undici');
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

  /** Closes pooled sockets of the agents handed out. */
  destroy(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}
