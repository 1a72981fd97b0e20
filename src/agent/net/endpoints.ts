/**
 * Where the agent connects (PROTOCOL.md, "Control connection" and "Data
 * connection"). Every URL the agent dials is built here, so the rule that the
 * token only ever goes to the configured origin is enforced in one place.
 */
import { ErrorCodes, RevdialError } from '../errors.js';

const CONTROL_PATH = '/api/v1/revdial';
const ADVERTISED_PATH = '/revdial';

/** The control plane's WebSocket origin (`ws(s)://host[:port]`) and base path (`/base` or ''). */
export function webSocketBase(apiUrl: URL): { origin: string; basePath: string } {
  const scheme = apiUrl.protocol === 'https:' || apiUrl.protocol === 'wss:' ? 'wss:' : 'ws:';
  return { origin: `${scheme}//${apiUrl.host}`, basePath: apiUrl.pathname.replace(/\/+$/, '') };
}

/** `GET {ws|wss}://HOST[/base]/api/v1/revdial?runnerid=RUNNER_ID` */
export function controlUrl(apiUrl: URL, runnerId: string): URL {
  const { origin, basePath } = webSocketBase(apiUrl);
  const url = new URL(`${basePath}${CONTROL_PATH}?runnerid=${encodeURIComponent(runnerId)}`, origin);
  // Belt and braces for config.ts: the token only ever goes to the configured origin.
  if (url.origin !== origin) {
    throw new RevdialError(ErrorCodes.CONFIG_INVALID, `the API URL's base path ${JSON.stringify(basePath)} would leave ${origin}`);
  }
  return url;
}

/**
 * Turns a `connPath` into the data connection's URL: same scheme, host and
 * port as the control connection. The advertised `/revdial...` is rewritten to
 * `[/base]/api/v1/revdial...`; any other absolute path is used as is. Anything
 * that could name another origin (`http://x`, `//x`, `/\x`) is refused.
 */
export function dataUrl(apiUrl: URL, connPath: string): URL {
  const { origin, basePath } = webSocketBase(apiUrl);
  if (!connPath.startsWith('/') || connPath.startsWith('//')) {
    throw refuse(connPath, 'it must be a path starting with a single "/"');
  }
  // WHATWG URL parsing reads "\" as "/" for ws/wss, so "/\evil" would mean "//evil".
  // eslint-disable-next-line no-control-regex
  if (/[\\\x00-\x20\x7f]/.test(connPath)) {
    throw refuse(connPath, 'it contains a backslash, space or control character');
  }
  let path = connPath;
  const rest = connPath.slice(ADVERTISED_PATH.length);
  if (connPath.startsWith(ADVERTISED_PATH) && (rest === '' || /^[?/#]/.test(rest))) {
    path = `${basePath}${CONTROL_PATH}${rest}`;
  }
  const url = new URL(path, origin);
  url.hash = '';
  if (url.origin !== origin) {
    throw refuse(connPath, `it resolves to ${url.origin}`);
  }
  return url;
}

function refuse(connPath: string, why: string): RevdialError {
  const shown = connPath.length > 120 ? `${connPath.slice(0, 119)}…` : connPath;
  return new RevdialError(
    ErrorCodes.CONN_PATH_INVALID,
    `refusing connPath ${JSON.stringify(shown)}: ${why}; the agent only dials the configured control plane`,
  );
}

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/** True for `localhost`, `*.localhost`, `127.0.0.0/8` and `[::1]`. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return LOOPBACK_HOSTS.has(h) || h.endsWith('.localhost') || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** The origin of a URL without credentials, path or query: safe to log. */
export function safeOrigin(url: URL): string {
  return `${url.protocol}//${url.host}`;
}
