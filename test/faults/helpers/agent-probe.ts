/**
 * Preloaded into a spawned agent (NODE_OPTIONS="--import=<this> --expose-gc")
 * so a test can ask, with SIGUSR2, what the process holds: open fds, active
 * libuv/timer resources by type, and live listeners (process events and
 * `abort` listeners on every AbortSignal still alive). Answers one line on
 * stderr: `PROBE {"fds":..,"resources":{..},"listeners":..}`.
 *
 * Leaks per reconnect (a timer, a socket, a listener on the shutdown
 * signal) show up as numbers that grow with the number of reconnects.
 */
import { readdirSync } from 'node:fs';
import { getEventListeners } from 'node:events';

const signals: WeakRef<AbortSignal>[] = [];
// Called below with .apply(this, ...), so it is never unbound.
// eslint-disable-next-line @typescript-eslint/unbound-method
const originalAdd = EventTarget.prototype.addEventListener;
EventTarget.prototype.addEventListener = function addEventListener(this: EventTarget, ...args: Parameters<EventTarget['addEventListener']>): void {
  if (this instanceof AbortSignal) signals.push(new WeakRef(this));
  originalAdd.apply(this, args);
};

function report(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  for (let i = signals.length - 1; i >= 0; i--) if (signals[i]!.deref() === undefined) signals.splice(i, 1);
  // A signal may have been recorded more than once: count each once.
  const seen = new Set<AbortSignal>();
  let abortListeners = 0;
  for (const ref of signals) {
    const s = ref.deref();
    if (s === undefined || seen.has(s)) continue;
    seen.add(s);
    abortListeners += getEventListeners(s, 'abort').length;
  }
  const resources: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
  let processListeners = 0;
  for (const name of process.eventNames()) processListeners += process.listenerCount(name);
  const line = {
    fds: readdirSync('/proc/self/fd').length,
    resources,
    processListeners,
    abortListeners,
    liveSignals: seen.size,
    heapUsed: process.memoryUsage().heapUsed,
  };
  process.stderr.write(`PROBE ${JSON.stringify(line)}\n`);
}

process.on('SIGUSR2', report);
