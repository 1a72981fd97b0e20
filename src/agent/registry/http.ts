/**
 * What both registry clients share (wolf-instances.ts, the 2025 API, and
 * sandboxes.ts, the 2026 one): the registry's base URL, one bounded JSON
 * call over undici with a time limit on the injected clock, the result
 * classes the metrics count, a jittered back-off, and `probeRegistry`, a
 * read-only check that the registry endpoints answer.
 *
 * undici is only ever reached through a dispatcher handed in (proxy.ts
 * builds it), so importing this module costs nothing until a registry mode
 * is set.
 */
import type { Dispatcher } from 'undici';
import type { Clock } from '../clock.js';
import { safeOrigin } from '../net/endpoints.js';
import { type ErrorCode, ErrorCodes, RevdialError } from '../errors.js';
import type { RegistryResult } from '../ops/metrics.js';

/** Largest answer body read; registry answers are a few hundred bytes (a list may be more). */
export const MAX_ANSWER_BYTES = 64 * 1024;

/** The registry APIs a control plane may offer (`--registry`). */
export const REGISTRY_MODES = ['off', 'wolf-instances', 'sandboxes'] as const;
export type RegistryMode = (typeof REGISTRY_MODES)[number];

/** Collection paths, below the control plane's base path. */
export const REGISTRY_PATHS: Record<Exclude<RegistryMode, 'off'>, string> = {
  'wolf-instances': '/api/v1/wolf-instances',
  sandboxes: '/api/v1/sandboxes',
};

export interface Answer {
  status: number;
  body: unknown;
  /** The first bytes of the body as text, for log lines. */
  text: string;
}

export interface CallOptions {
  method: 'GET' | 'POST' | 'DELETE';
  /** Full URL (from `registryBase` plus a path). */
  url: string;
  token: () => string;
  userAgent: string;
  dispatcher: Dispatcher;
  body?: unknown;
  timeoutMs: number;
  clock: Clock;
  /** Aborts the call (shutdown); its reason is thrown as is. */
  signal?: AbortSignal;
  /** For error messages: where the call went, without credentials. */
  apiUrl: URL;
  /** Default MAX_ANSWER_BYTES; a longer answer is cut there. */
  maxAnswerBytes?: number;
  /** The code of a timed-out call; default REVDIAL_REGISTRY_TIMEOUT (wolf-instances keeps its original REVDIAL_REGISTRY_FAILED). */
  timeoutCode?: ErrorCode;
}

/** `http(s)://host[:port][/base]` + `path`: ws/wss map to http/https. */
export function registryBase(apiUrl: URL, path: string): string {
  const url = new URL(apiUrl.href);
  if (url.protocol === 'ws:') url.protocol = 'http:';
  if (url.protocol === 'wss:') url.protocol = 'https:';
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}${path}`;
}

/**
 * One request with the bearer token and a JSON body. Throws RevdialError:
 * REVDIAL_REGISTRY_TIMEOUT when no complete answer came within `timeoutMs`
 * (the connection is dropped), REVDIAL_REGISTRY_FAILED when the request
 * could not be made. Any HTTP status is an answer, not an error.
 */
export async function callRegistry(o: CallOptions): Promise<Answer> {
  const timeout = new AbortController();
  const timer = o.clock.setTimeout(
    () =>
      timeout.abort(
        new RevdialError(
          o.timeoutCode ?? ErrorCodes.REGISTRY_TIMEOUT,
          `registry ${o.method} to ${safeOrigin(o.apiUrl)} did not answer within ${o.timeoutMs} ms`,
        ),
      ),
    o.timeoutMs,
  );
  const signal = o.signal ? AbortSignal.any([o.signal, timeout.signal]) : timeout.signal;
  try {
    const headers: Record<string, string> = {
      authorization: `Bearer ${o.token()}`,
      'user-agent': o.userAgent,
      accept: 'application/json',
    };
    let payload: string | undefined;
    if (o.body !== undefined) {
      payload = typeof o.body === 'string' ? o.body : JSON.stringify(o.body);
      headers['content-type'] = 'application/json';
    }
    const { request } = await import('undici');
    const res = await request(o.url, {
      method: o.method,
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
      dispatcher: o.dispatcher,
      signal,
      // A redirect could carry the token elsewhere; undici's request does not follow them.
    });
    const text = await readCapped(res.body, o.maxAnswerBytes);
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: res.statusCode, body: parsed, text: text.slice(0, 200) };
  } catch (err) {
    if (o.signal?.aborted) throw o.signal.reason;
    if (timeout.signal.aborted) throw timeout.signal.reason;
    if (err instanceof RevdialError) throw err;
    const code = (err as { code?: string }).code ?? 'UNKNOWN';
    const cause = (err as { cause?: { code?: string } }).cause?.code;
    throw new RevdialError(ErrorCodes.REGISTRY_FAILED, `registry ${o.method} to ${safeOrigin(o.apiUrl)} failed (${cause ?? code})`, { cause: err });
  } finally {
    o.clock.clearTimeout(timer);
  }
}

/** HTTP status → the result class the metrics count. */
export function classify(status: number): RegistryResult {
  if (status >= 200 && status < 300) return 'ok';
  if (status === 404) return 'not_found';
  if (status === 401 || status === 403) return 'rejected';
  return 'error';
}

/** A thrown error → its result class (`timeout` for a call that hit its time limit). */
export function classifyError(err: unknown): RegistryResult {
  return err instanceof RevdialError && err.code === ErrorCodes.REGISTRY_TIMEOUT ? 'timeout' : 'error';
}

export async function readCapped(body: Dispatcher.ResponseData['body'], max = MAX_ANSWER_BYTES): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const buf = chunk as Buffer;
    if (size + buf.length > max) {
      body.destroy();
      break;
    }
    chunks.push(buf);
    size += buf.length;
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface BackoffOptions {
  /** The first retry waits between this and twice this. */
  minMs: number;
  /** No wait is longer than this. */
  maxMs: number;
  factor?: number;
  /** In [0, 1); Math.random by default. */
  random?: () => number;
}

/**
 * The wait before retry number `failures` (1 for the first): p-retry's
 * formula with `randomize: true`, min·factor^(n−1)·[1, 2), capped. Computed
 * here rather than by p-retry because the wait runs on the injected clock and
 * a new control connection cuts it short (sandboxes.ts).
 */
export function backoffDelay(failures: number, o: BackoffOptions): number {
  const factor = o.factor ?? 2;
  const random = 1 + (o.random ?? Math.random)();
  const raw = o.minMs * factor ** Math.max(0, failures - 1) * random;
  return Math.round(Math.min(o.maxMs, raw));
}

export interface ProbeOptions {
  mode: Exclude<RegistryMode, 'off'>;
  apiUrl: URL;
  token: () => string;
  userAgent: string;
  dispatcher: Dispatcher;
  /** In `sandboxes` mode: the host id to look for in the list (the runner id without `hydra-`/`sandbox-`). */
  sandboxId?: string;
  /** In `wolf-instances` mode: the instance name to look for (WOLF_ID). */
  name?: string;
  timeoutMs?: number;
  clock: Clock;
}

export interface ProbeResult {
  /** The list endpoint answered 2xx with a JSON list. */
  ok: boolean;
  url: string;
  status?: number;
  /** A stable code when not ok: REVDIAL_REGISTRY_TIMEOUT, REVDIAL_REGISTRY_FAILED, REVDIAL_AUTH_REJECTED, ... */
  code?: string;
  /** Whether this host is in the list (undefined when the list could not be read). */
  listed?: boolean;
  /** One line for an operator. */
  detail: string;
}

/**
 * Does the registry of `mode` answer? A read-only `GET` of the list
 * (`/api/v1/wolf-instances` or `/api/v1/sandboxes`, token needed): it never
 * registers, heartbeats or changes a row. Never throws.
 */
export async function probeRegistry(o: ProbeOptions): Promise<ProbeResult> {
  const url = registryBase(o.apiUrl, REGISTRY_PATHS[o.mode]);
  const where = `GET ${safeOrigin(o.apiUrl)}${new URL(url).pathname}`;
  let answer: Answer;
  try {
    answer = await callRegistry({
      method: 'GET',
      url,
      token: o.token,
      userAgent: o.userAgent,
      dispatcher: o.dispatcher,
      timeoutMs: o.timeoutMs ?? 5_000,
      clock: o.clock,
      apiUrl: o.apiUrl,
      // A fleet's list: a few hundred bytes per host.
      maxAnswerBytes: 8 * 1024 * 1024,
    });
  } catch (err) {
    const code = err instanceof RevdialError ? err.code : ErrorCodes.REGISTRY_FAILED;
    return { ok: false, url, code, detail: `${where}: ${(err as Error).message}` };
  }
  const result = classify(answer.status);
  if (result === 'rejected') {
    return { ok: false, url, status: answer.status, code: ErrorCodes.AUTH_REJECTED, detail: `${where} answered HTTP ${answer.status}: check RUNNER_TOKEN` };
  }
  if (result === 'not_found') {
    return {
      ok: false,
      url,
      status: answer.status,
      code: ErrorCodes.REGISTRY_FAILED,
      detail: `${where} answered HTTP 404: this control plane has no ${o.mode} registry; check --registry (REVDIAL_REGISTRY)`,
    };
  }
  if (result !== 'ok' || !Array.isArray(answer.body)) {
    return { ok: false, url, status: answer.status, code: ErrorCodes.REGISTRY_FAILED, detail: `${where} answered HTTP ${answer.status} without a JSON list` };
  }
  const want = o.mode === 'sandboxes' ? o.sandboxId : o.name;
  const key = o.mode === 'sandboxes' ? 'id' : 'name';
  const listed =
    want === undefined
      ? undefined
      : answer.body.some((row: unknown) => row !== null && typeof row === 'object' && (row as Record<string, unknown>)[key] === want);
  const count = answer.body.length;
  return {
    ok: true,
    url,
    status: answer.status,
    ...(listed !== undefined ? { listed } : {}),
    detail: `${where} answered HTTP ${answer.status}: ${count} ${o.mode === 'sandboxes' ? 'host' : 'instance'}${count === 1 ? '' : 's'}${listed === undefined ? '' : listed ? `, ${want} listed` : `, ${want} not listed`}`,
  };
}

/** Runner id prefixes the 2026 control plane registers a host for on connect. */
export const SANDBOX_RUNNER_PREFIXES = ['hydra-', 'sandbox-'] as const;
/** Runner ids of per-session desktop containers: never this agent's. */
export const DESKTOP_RUNNER_PREFIX = 'desktop-';

/** The host id a runner id registers (`hydra-gpu1` → `gpu1`), or undefined without a host prefix. */
export function sandboxIdOf(runnerId: string): string | undefined {
  for (const prefix of SANDBOX_RUNNER_PREFIXES) {
    if (runnerId.startsWith(prefix) && runnerId.length > prefix.length) return runnerId.slice(prefix.length);
  }
  return undefined;
}
