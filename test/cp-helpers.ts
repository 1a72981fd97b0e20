/**
 * Helpers for the control-plane registry/scheduler tests: a fake clock that
 * only moves when told, and a JSON client for the plane's HTTP APIs.
 */
import type { Clock, Timer } from '../src/clock.js';

interface Entry {
  at: number;
  fn: () => void;
  every: number | null;
}

/** A Clock whose time moves only with `tick(ms)`; timers fire in time order. */
export class FakeClock implements Clock {
  #now: number;
  #timers = new Map<number, Entry>();
  #next = 1;

  constructor(start = Date.parse('2025-01-01T00:00:00Z')) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.#add(fn, ms, null);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.#add(fn, ms, Math.max(1, ms));
  }

  clearTimeout(timer: Timer | undefined): void {
    if (timer) this.#timers.delete((timer as FakeTimer).id);
  }

  clearInterval(timer: Timer | undefined): void {
    this.clearTimeout(timer);
  }

  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way. */
  tick(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let dueId = -1;
      let due: Entry | undefined;
      for (const [id, e] of this.#timers) {
        if (e.at <= end && (!due || e.at < due.at)) {
          due = e;
          dueId = id;
        }
      }
      if (!due) break;
      this.#now = due.at;
      if (due.every === null) this.#timers.delete(dueId);
      else due.at += due.every;
      due.fn();
    }
    this.#now = end;
  }

  #add(fn: () => void, ms: number, every: number | null): Timer {
    const id = this.#next++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn, every });
    return new FakeTimer(id);
  }
}

class FakeTimer implements Timer {
  constructor(readonly id: number) {}
  unref(): this {
    return this;
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
