/**
 * Helpers for the control-plane registry/scheduler tests: a fake clock that
 * only moves when told, and a JSON client for the plane's HTTP APIs.
 */
import { ManualClock } from './harness.js';

/** The shared manual clock, starting at a realistic date so timestamps read well. */
export class FakeClock extends ManualClock {
  constructor(start = Date.parse('2025-01-01T00:00:00Z')) {
    super(start);
  }
}

export interface JsonAnswer {
  status: number;
  body: unknown;
}

/** One HTTP call with an optional bearer token and JSON body; parses a JSON answer. */
export async function call(base: string, method: string, path: string, token: string | null, body?: unknown): Promise<JsonAnswer> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    // A hung call fails the test with a stack naming it, instead of the file's timeout.
    signal: AbortSignal.timeout(15_000),
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* plain text */
  }
  return { status: res.status, body: parsed };
}

/** Field access on an unknown JSON value, for assertions. */
export function field(value: unknown, name: string): unknown {
  return value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[name] : undefined;
}
