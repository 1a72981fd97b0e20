/**
 * The placement API of the control plane (this project's, not part of PROTOCOL.md):
 *
 *   POST   /api/v1/placements                  {"gpu_type"?}  → 201 {"id","instance_id","instance_name","runner_id","gpu_type","created_at"}
 *                                             503 REVDIAL_NO_INSTANCE_AVAILABLE (with "details") when no Wolf qualifies
 *   GET    /api/v1/placements                  → 200 [placement, ...]
 *   GET    /api/v1/placements/{id}             → 200 placement; 404 REVDIAL_PLACEMENT_NOT_FOUND
 *   DELETE /api/v1/placements/{id}             → 200 {"status":"ok"}; 404 REVDIAL_PLACEMENT_NOT_FOUND
 *   ANY    /api/v1/placements/{id}/proxy/PATH  → PATH (with its query) on the holder's Wolf API,
 *                                             through its RevDial tunnel; 502 REVDIAL_PLACEMENT_UNREACHABLE
 *
 * All need `Authorization: Bearer TOKEN` (authorize(token, null)). The proxy
 * never forwards that header, nor hop-by-hop headers, to Wolf.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Readable, pipeline } from 'node:stream';
import { ErrorCodes, codeOf, describe } from '../../src/agent/errors.js';
import type { Logger } from '../../src/agent/logger.js';
import { type Authorize, bearerToken, discardBody, readJsonObject, sendError, sendJson, sendUnauthorized } from './http-util.js';
import type { Placements } from './placements.js';
import { NoInstanceAvailableError } from './scheduler.js';
import type { ControlPlane } from './server.js';

export const PLACEMENTS_PREFIX = '/api/v1/placements';

/** Request bodies without Content-Length are buffered (Wolf needs the length) up to this size. */
export const MAX_BUFFERED_BODY = 16 * 1024 * 1024;

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'authorization',
]);

const PROXY_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

export interface PlacementsApiOptions {
  authorize: Authorize;
  basePath?: string;
  log?: Logger;
}

function forwardHeaders(headers: IncomingMessage['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name)) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

async function bufferBody(req: IncomingMessage): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BUFFERED_BODY) return null;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

export function installPlacementsApi(plane: ControlPlane, placements: Placements, options: PlacementsApiOptions): void {
  const prefix = `${(options.basePath ?? '').replace(/\/+$/, '')}${PLACEMENTS_PREFIX}`;
  const log = options.log;

  const proxy = async (id: string, path: string, req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const headers = forwardHeaders(req.headers);
    let body: Buffer | Readable | undefined;
    if (req.headers['content-length'] !== undefined) {
      body = req.headers['content-length'] === '0' ? Buffer.alloc(0) : req;
    } else if (req.headers['transfer-encoding'] !== undefined) {
      const buffered = await bufferBody(req);
      if (buffered === null) {
        sendError(res, 413, ErrorCodes.REGISTRY_REQUEST_INVALID, `a body without Content-Length may be at most ${MAX_BUFFERED_BODY} bytes`);
        return;
      }
      body = buffered;
    }
    const abort = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    let answer: IncomingMessage;
    try {
      answer = await placements.request(id, { method: req.method ?? 'GET', path, headers, ...(body !== undefined ? { body } : {}) }, abort.signal);
    } catch (err) {
      const code = codeOf(err);
      log?.warn({ placementId: id, code, err: describe(err) }, `Request for placement ${id} failed: ${describe(err)}`);
      if (!res.headersSent) sendError(res, code === ErrorCodes.PLACEMENT_NOT_FOUND ? 404 : 502, code, describe(err));
      return;
    }
    const out: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(answer.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
    }
    res.writeHead(answer.statusCode ?? 502, out);
    pipeline(answer, res, () => answer.destroy());
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const rest = url.pathname.slice(prefix.length);
    const m = /^(?:\/?|\/([^/]+)|\/([^/]+)\/proxy(\/.*)?)$/.exec(rest);
    const token = bearerToken(req);
    if (!m) {
      discardBody(req);
      res.writeHead(404, { 'content-type': 'text/plain' }).end('404 page not found\n');
      return;
    }
    if (token === null || !options.authorize(token, null)) {
      discardBody(req);
      sendUnauthorized(res);
      return;
    }
    if (m[2] !== undefined) {
      await proxy(m[2], `${m[3] ?? '/'}${url.search}`, req, res);
      return;
    }
    if (m[1] === undefined) {
      if (req.method === 'POST') {
        let gpuType: string | undefined;
        try {
          const body = await readJsonObject(req, ErrorCodes.REGISTRY_REQUEST_INVALID);
          if (body.gpu_type !== undefined && body.gpu_type !== null) {
            if (typeof body.gpu_type !== 'string') {
              sendError(res, 400, ErrorCodes.REGISTRY_REQUEST_INVALID, '"gpu_type" must be a string');
              return;
            }
            gpuType = body.gpu_type;
          }
        } catch (err) {
          sendError(res, 400, codeOf(err), describe(err));
          return;
        }
        try {
          sendJson(res, 201, placements.create({ gpuType }));
        } catch (err) {
          if (!(err instanceof NoInstanceAvailableError)) throw err;
          log?.warn({ code: err.code, ...err.details }, err.message);
          sendJson(res, 503, { error: err.message, code: err.code, details: err.details });
        }
        return;
      }
      discardBody(req);
      if (req.method === 'GET') sendJson(res, 200, placements.list());
      else sendError(res, 405, ErrorCodes.REGISTRY_REQUEST_INVALID, 'method not allowed on this path');
      return;
    }
    discardBody(req);
    const id = m[1];
    if (req.method === 'GET' || req.method === 'DELETE') {
      const placement = placements.get(id);
      if (!placement) {
        sendError(res, 404, ErrorCodes.PLACEMENT_NOT_FOUND, `no placement with id ${id}`);
        return;
      }
      if (req.method === 'GET') sendJson(res, 200, placement);
      else {
        placements.destroy(id);
        sendJson(res, 200, { status: 'ok' });
      }
      return;
    }
    sendError(res, 405, ErrorCodes.REGISTRY_REQUEST_INVALID, 'method not allowed on this path');
  };

  for (const method of PROXY_METHODS) plane.route(method, PLACEMENTS_PREFIX, handle);
}
