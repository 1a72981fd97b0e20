/**
 * The 2026 control plane's host endpoints (PROTOCOL.md, "Registry, 2026
 * generation"), answering as the production server does:
 *
 *   POST   /api/v1/sandboxes/{id}/heartbeat  JSON body → 200 {"status":"ok"} (unknown ids too, nothing changes);
 *                                             not JSON, or a field of the wrong type → 400 `Invalid request body`
 *   POST   /api/v1/sandboxes/register        full-row upsert → 200 the host; no id → 400 `Sandbox ID is required`
 *   GET    /api/v1/sandboxes                 → 200 [host, ...]
 *   GET    /api/v1/sandboxes/{id}            → 200 host; 404 unknown id
 *   DELETE /api/v1/sandboxes/{id}            → 200 {"status":"deleted"} (unknown ids too)
 *
 * Every call needs `Authorization: Bearer TOKEN` (authorize(token, runnerId),
 * the runner id `hydra-<id>` where a host is named, null for the list);
 * errors are plain text lines, as Go's http.Error writes them. Installing
 * also hooks the implicit registration: each control connection's runner id
 * goes to `SandboxHosts.connected`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../../src/agent/logger.js';
import type { Dialer } from './dialer.js';
import { type Authorize, MAX_JSON_BODY, bearerToken, discardBody, sendJson } from './http-util.js';
import type { DiskUsageRow, HeartbeatBody, SandboxHosts } from './sandbox-hosts.js';
import type { ControlPlane, RouteHandler } from './server.js';

export const SANDBOX_HOSTS_PREFIX = '/api/v1/sandboxes';

export interface SandboxHostsApiOptions {
  authorize: Authorize;
  basePath?: string;
  log?: Logger;
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff' }).end(`${text}\n`);
}

async function readText(req: IncomingMessage): Promise<string | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_JSON_BODY) return null;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const STRINGS = ['gpu_vendor', 'render_node', 'instance_type', 'helix_version', 'id', 'status'] as const;

/** Decodes a body the way Go's json.Decoder into the heartbeat struct would: null on any mismatch. */
export function decodeHostBody(text: string): (HeartbeatBody & { id?: string; status?: string }) | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  for (const k of STRINGS) if (o[k] !== undefined && o[k] !== null && typeof o[k] !== 'string') return null;
  if (o.privileged_mode_enabled !== undefined && o.privileged_mode_enabled !== null && typeof o.privileged_mode_enabled !== 'boolean') return null;
  if (o.desktop_versions !== undefined && o.desktop_versions !== null) {
    const d = o.desktop_versions;
    if (typeof d !== 'object' || Array.isArray(d) || Object.values(d).some((x) => typeof x !== 'string')) return null;
  }
  if (o.disk_usage !== undefined && o.disk_usage !== null) {
    if (!Array.isArray(o.disk_usage)) return null;
    for (const row of o.disk_usage as unknown[]) {
      if (row === null || typeof row !== 'object' || Array.isArray(row)) return null;
      const r = row as Record<string, unknown>;
      if (r.mount_point !== undefined && typeof r.mount_point !== 'string') return null;
      if (r.alert_level !== undefined && typeof r.alert_level !== 'string') return null;
      for (const n of ['total_bytes', 'used_bytes', 'avail_bytes', 'used_percent']) {
        if (r[n] !== undefined && typeof r[n] !== 'number') return null;
      }
    }
  }
  const out: HeartbeatBody & { id?: string; status?: string } = {};
  for (const k of STRINGS) if (typeof o[k] === 'string') out[k] = o[k];
  if (typeof o.privileged_mode_enabled === 'boolean') out.privileged_mode_enabled = o.privileged_mode_enabled;
  if (o.desktop_versions) out.desktop_versions = o.desktop_versions as Record<string, string>;
  if (Array.isArray(o.disk_usage)) out.disk_usage = o.disk_usage as DiskUsageRow[];
  return out;
}

/** The route handler alone (tests put a faulty one in front of it). */
export function sandboxHostsHandler(hosts: SandboxHosts, options: SandboxHostsApiOptions): RouteHandler {
  const prefix = `${(options.basePath ?? '').replace(/\/+$/, '')}${SANDBOX_HOSTS_PREFIX}`;
  const log = options.log;
  return async (req, res, url) => {
    const rest = url.pathname.slice(prefix.length);
    const m = /^(?:\/?|\/register|\/([^/]+)|\/([^/]+)\/heartbeat)$/.exec(rest);
    if (!m) {
      discardBody(req);
      sendText(res, 404, '404 page not found');
      return;
    }
    const id = rest === '/register' ? undefined : (m[1] ?? m[2]);
    const token = bearerToken(req);
    if (token === null || !options.authorize(token, id === undefined ? null : `hydra-${id}`)) {
      discardBody(req);
      sendText(res, 401, 'unauthorized');
      return;
    }
    if (req.method === 'POST' && (m[2] !== undefined || rest === '/register')) {
      const text = await readText(req);
      const body = text === null ? null : decodeHostBody(text);
      if (body === null) {
        sendText(res, 400, 'Invalid request body');
        return;
      }
      if (m[2] !== undefined) {
        const host = hosts.heartbeat(m[2], body);
        if (host) log?.debug({ hostId: host.id, gpuVendor: host.gpu_vendor }, `Heartbeat from host ${host.id}`);
        sendJson(res, 200, { status: 'ok' });
        return;
      }
      if (!body.id) {
        sendText(res, 400, 'Sandbox ID is required');
        return;
      }
      sendJson(res, 200, hosts.upsert(body.id, body));
      return;
    }
    discardBody(req);
    if ((rest === '' || rest === '/') && req.method === 'GET') {
      sendJson(res, 200, hosts.list());
      return;
    }
    if (m[1] !== undefined && rest !== '/register') {
      if (req.method === 'GET') {
        const host = hosts.get(m[1]);
        if (host) sendJson(res, 200, host);
        else sendText(res, 404, 'Sandbox not found');
        return;
      }
      if (req.method === 'DELETE') {
        if (hosts.delete(m[1])) log?.info({ hostId: m[1] }, `Host ${m[1]} deleted`);
        sendJson(res, 200, { status: 'deleted' });
        return;
      }
    }
    sendText(res, 405, 'Method not allowed');
  };
}

/** Adds the host endpoints and the implicit registration on control connect. */
export function installSandboxHostsApi(plane: ControlPlane, hosts: SandboxHosts, options: SandboxHostsApiOptions): void {
  const handler = sandboxHostsHandler(hosts, options);
  for (const method of ['GET', 'POST', 'DELETE']) plane.route(method, SANDBOX_HOSTS_PREFIX, handler);
  plane.on('dialer', (dialer: Dialer) => {
    const host = hosts.connected(dialer.runnerId);
    if (host) options.log?.info({ hostId: host.id, runnerId: dialer.runnerId }, `Host ${host.id} registered by its control connection`);
  });
}
