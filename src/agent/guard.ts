/**
 * Hooks the agent calls on its request path (metrics observers, the logger)
 * are not allowed to break it: an exception thrown by one is caught where it
 * is called, so a tunnel finishes whatever a counter or a log destination does.
 * Without this, a throw inside a WebSocket 'message' handler would reach
 * `uncaughtException` and end the process, and one in a pick-up would answer
 * `pickup-failed` for a tunnel that was in fact up.
 */
import type { Logger } from 'pino';

const LOG_METHODS = new Set<PropertyKey>(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/**
 * The same logger, except that a log call never throws (a destination or a
 * hook that throws, a serializer tripping on a field). The first such failure
 * is reported once on stderr; the rest are dropped.
 */
export function guardLogger(log: Logger): Logger {
  const state = { reported: false };
  return wrapLogger(log, state);
}

function wrapLogger(log: Logger, state: { reported: boolean }): Logger {
  return new Proxy(log, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      if (prop === 'child') {
        return (...args: Parameters<Logger['child']>) => wrapLogger(target.child(...args) as unknown as Logger, state);
      }
      if (!LOG_METHODS.has(prop)) return value;
      const method = value as (...args: unknown[]) => void;
      return (...args: unknown[]): void => {
        try {
          method.apply(target, args);
        } catch (err) {
          if (state.reported) return;
          state.reported = true;
          try {
            process.stderr.write(`wolf-revdial-client: a log call failed and was dropped (further failures are not reported): ${String(err)}\n`);
          } catch {
            /* nowhere left to report it */
          }
        }
      };
    },
  });
}

/**
 * An observer whose every method is guarded: a throw is handed to `onError`
 * (which must not throw either; it is guarded too) and the caller goes on.
 */
export function guardObserver<T extends object>(observer: T, onError: (hook: string, err: unknown) => void): T {
  const guarded: Record<string, unknown> = {};
  for (const key of methodNames(observer)) {
    const fn = (observer as Record<string, unknown>)[key];
    if (typeof fn !== 'function') continue;
    const bound = (fn as (...args: unknown[]) => unknown).bind(observer);
    guarded[key] = (...args: unknown[]): unknown => {
      try {
        return bound(...args);
      } catch (err) {
        try {
          onError(key, err);
        } catch {
          /* the error handler itself failed: nothing more to do */
        }
        return undefined;
      }
    };
  }
  return guarded as T;
}

/** Own and inherited method names, getters left alone (observers are often class instances). */
function methodNames(obj: object): string[] {
  const names = new Set<string>();
  for (let o: object | null = obj; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const [name, d] of Object.entries(Object.getOwnPropertyDescriptors(o))) {
      if (name !== 'constructor' && typeof d.value === 'function') names.add(name);
    }
  }
  return [...names];
}
