/**
 * The registry's HTTP endpoints, exactly as PROTOCOL.md ("Registry") lists them:
 *
 *   POST   /api/v1/wolf-instances/register        {"name","address","gpu_type","max_sandboxes"}
 *                                                 → 200 the instance {"id","status":"online","connected_sandboxes",...}
 *   POST   /api/v1/wolf-instances/{id}/heartbeat  → 200 {"status":"ok"}; 404 unknown id
 *   GET    /api/v1/wolf-instances                 → 200 [instance, ...]
 *   GET    /api/v1/wolf-instances/{id}            → 200 instance; 404 unknown id (an extra)
 *   DELETE /api/v1/wolf-instances/{id}            → 200 {"status":"ok"}; 404 unknown id
 *
 * Every call needs `Authorization: Bearer RUNNER_TOKEN`, checked with the same
 * `authorize(token, runnerId)` as the RevDial endpoint (runner id `wolf-<name>`
 * where an instance is named, null for the list): 401 otherwise, before any
 * lookup. Errors answer `{"error": message, "code": REVDIAL_...}`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ErrorCodes, RevdialError, codeOf, describe } from '../../src/agent/errors.js';
import type { Logger } from '../../src/agent/logger.js';
import { type Authorize, bearerToken, discardBody, readJsonObject, sendError, sendJson, sendUnauthorized } from './http-util.js';
import { type RegisterInput, type Registry, runnerIdOf } from './registry.js';
import type { ControlPlane } from './server.js';

export const REGISTRY_PREFIX = '/api/v1/wolf-instances';

export interface RegistryApiOptions {
  authorize: Authorize;
  /** The control plane's base path, if it has one. */
  basePath?: string;
  log?: Logger;
}

const NAME = /^[A-Za-z0-9._-]{1,255}$/;

/** Checks a register body; throws REVDIAL_REGISTRY_REQUEST_INVALID naming the bad field. */
export function parseRegisterBody(body: Record<string, unknown>): RegisterInput {
  const bad = (message: string): RevdialError => new RevdialError(ErrorCodes.REGISTRY_REQUEST_INVALID, message);
  const { name, address, gpu_type: gpuType, max_sandboxes: max } = body;
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw bad('"name" is required: letters, digits, ".", "_" and "-", at most 255 (the agent sends WOLF_ID)');
  }
  const input: RegisterInput = { name };
  if (address !== undefined && address !== null) {
    if (typeof address !== 'string' || address.length > 1024) throw bad('"address" must be a string of at most 1024 characters');
    input.address = address;
  }
  if (gpuType !== undefined && gpuType !== null) {
    if (typeof gpuType !== 'string' || gpuType.length > 64) throw bad('"gpu_type" must be a string of at most 64 characters');
    input.gpu_type = gpuType;
  }
  if (max !== undefined && max !== null) {
    if (typeof max !== 'number' || !Number.isSafeInteger(max) || max < 1) throw bad('"max_sandboxes" must be a whole number of 1 or more');
    input.max_sandboxes = max;
  }
  return input;
}

/** Adds the registry endpoints to a control plane. */
export function installRegistryApi(plane: ControlPlane, registry: Registry, options: RegistryApiOptions): void {
  const prefix = `${(options.basePath ?? '').replace(/\/+$/, '')}${REGISTRY_PREFIX}`;
  const log = options.log;

  const handle = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const rest = url.pathname.slice(prefix.length);
    const m = /^(?:\/?|\/register|\/([^/]+)|\/([^/]+)\/heartbeat)$/.exec(rest);
    if (!m) {
      discardBody(req);
      res.writeHead(404, { 'content-type': 'text/plain' }).end('404 page not found\n');
      return;
    }
    const id = m[1] ?? m[2];
    const known = id === undefined ? undefined : registry.get(id);
    const token = bearerToken(req);
    const isRegister = rest === '/register';

    if (isRegister && req.method === 'POST') {
      // The name is in the body, so the body is read before the token check;
      // it is bounded (64 KiB) and a missing token is refused without parsing.
      if (token === null) {
        discardBody(req);
        sendUnauthorized(res);
        return;
      }
      let input: RegisterInput;
      try {
        input = parseRegisterBody(await readJsonObject(req, ErrorCodes.REGISTRY_REQUEST_INVALID));
      } catch (err) {
        // A stranger learns nothing about the body format: 401 first.
        if (!options.authorize(token, null)) sendUnauthorized(res);
        else sendError(res, 400, codeOf(err), describe(err));
        return;
      }
      if (!options.authorize(token, runnerIdOf(input))) {
        sendUnauthorized(res);
        return;
      }
      const instance = registry.register(input);
      log?.info(
        { instanceId: instance.id, name: instance.name, gpuType: instance.gpu_type, maxSandboxes: instance.max_sandboxes, address: instance.address },
        `Wolf instance ${instance.name} registered`,
      );
      sendJson(res, 200, instance);
      return;
    }

    discardBody(req);
    if (token === null || !options.authorize(token, known ? runnerIdOf(known) : null)) {
      sendUnauthorized(res);
      return;
    }
    const notFound = (): void => sendError(res, 404, ErrorCodes.INSTANCE_NOT_FOUND, `no Wolf instance with id ${id ?? ''}: register it first`);

    if (m[2] !== undefined && req.method === 'POST') {
      if (!known) {
        notFound();
        return;
      }
      const instance = registry.heartbeat(known.id);
      log?.debug({ instanceId: instance.id, name: instance.name }, `Heartbeat from Wolf instance ${instance.name}`);
      sendJson(res, 200, { status: 'ok' });
      return;
    }
    if (rest === '' || rest === '/') {
      if (req.method !== 'GET') {
        methodNotAllowed(res);
        return;
      }
      sendJson(res, 200, registry.list());
      return;
    }
    if (m[1] !== undefined && !isRegister) {
      if (req.method === 'GET') {
        if (!known) {
          notFound();
          return;
        }
        sendJson(res, 200, known);
        return;
      }
      if (req.method === 'DELETE') {
        if (!known) {
          notFound();
          return;
        }
        registry.deregister(known.id);
        log?.info({ instanceId: known.id, name: known.name }, `Wolf instance ${known.name} deregistered`);
        sendJson(res, 200, { status: 'ok' });
        return;
      }
    }
    methodNotAllowed(res);
  };

  for (const method of ['GET', 'POST', 'DELETE']) plane.route(method, REGISTRY_PREFIX, handle);
}

function methodNotAllowed(res: ServerResponse): void {
  sendError(res, 405, ErrorCodes.REGISTRY_REQUEST_INVALID, 'method not allowed on this path');
}
