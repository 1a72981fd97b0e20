/**
 * Small HTTP helpers shared by the control plane's JSON APIs (the Wolf
 * registry and the sandbox API): bearer tokens, bounded JSON bodies, and
 * JSON answers that carry an error code next to the message.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type ErrorCode, ErrorCodes, RevdialError } from '../../src/agent/errors.js';

/** Same shape as ControlPlaneOptions.authorize, so one function can guard every endpoint. */
export type Authorize = (token: string, runnerId: string | null) => boolean;

/** Largest JSON body the APIs read; their bodies are a few hundred bytes. */
export const MAX_JSON_BODY = 64 * 1024;

/** The token of an `Authorization: Bearer ...` header, or null. */
export function bearerToken(req: IncomingMessage): string | null {
  const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  return m?.[1] ?? null;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

/** `{"error": message, "code": code}`: clients match on `code`. */
export function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, { error: message, code });
}

/** 401 with the same wording as the RevDial endpoint. */
export function sendUnauthorized(res: ServerResponse): void {
  sendError(res, 401, ErrorCodes.AUTH_REJECTED, 'authentication required');
}

export function invalid(code: ErrorCode, message: string): RevdialError {
  return new RevdialError(code, message);
}

/**
 * Reads a JSON object body. An empty body reads as `{}`. Throws
 * RevdialError(`code`) for a body that is too large, not JSON, or not an object.
 */
export async function readJsonObject(req: IncomingMessage, code: ErrorCode): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_JSON_BODY) throw invalid(code, `request body larger than ${MAX_JSON_BODY} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw invalid(code, 'request body is not valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid(code, 'request body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/** Drains and ignores a body we do not read, so the connection can be reused. */
export function discardBody(req: IncomingMessage): void {
  req.resume();
}
