/**
 * Shared test plumbing: a log capture that tests can wait on, a manual clock,
 * and one-call setups of the control plane, the stand-in Wolf and an agent,
 * all on loopback and all closed in `t.after`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import pino, { type Logger } from 'pino';
import type { Clock, Timer } from '../../src/agent/clock.js';
import { ControlPlane, type ControlPlaneOptions } from '../../dev/control-plane/server.js';
import { parseLocalAddress } from '../../src/agent/net/local-dialer.js';
import { StandInWolf, type StandInWolfOptions, digestOf } from '../../dev/stand-in-wolf.js';
import { Agent, type AgentOptions } from '../../src/agent/control/supervisor.js';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const BIN = `${ROOT}bin/wolf-revdial-client`;
export const NODE = process.execPath;

export interface LogLine {
  level: string;
  msg: string;
  code?: string;
  [key: string]: unknown;
}

/** A pino logger whose JSON lines are parsed and kept, with `waitFor`. */
export class LogCapture {
  readonly lines: LogLine[] = [];
  readonly raw: string[] = [];
  readonly log: Logger;
  readonly #events = new EventEmitter();

  constructor(level = 'debug') {
    this.log = pino(
      {
        level,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      { write: (s: string) => this.push(s) },
    );
    this.#events.setMaxListeners(1000);
  }

  push(text: string): void {
    for (const raw of text.split('\n')) {
      if (raw.trim() === '') continue;
      this.raw.push(raw);
      const line = JSON.parse(raw) as LogLine;
      this.lines.push(line);
      this.#events.emit('line', line);
    }
  }

  find(pred: (l: LogLine) => boolean): LogLine | undefined {
    return this.lines.find(pred);
  }

  count(pred: (l: LogLine) => boolean): number {
    return this.lines.filter(pred).length;
  }

  /** Resolves with the first line (already seen or future) that matches. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs = 10_000, fromIndex = 0): Promise<LogLine> {
    const seen = this.lines.slice(fromIndex).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const onLine = (l: LogLine): void => {
        if (!pred(l)) return;
        clearTimeout(timer);
        this.#events.removeListener('line', onLine);
        resolve(l);
      };
      const timer = setTimeout(() => {
        this.#events.removeListener('line', onLine);
        reject(new Error(`no matching log line within ${timeoutMs} ms; last lines:\n${this.raw.slice(-8).join('\n')}`));
      }, timeoutMs);
      this.#events.on('line', onLine);
    });
  }
}

/** A clock that only moves when told to. */
export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  readonly #timers = new Map<number, { at: number; fn: () => void; every?: number }>();

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.#add(fn, ms);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.#add(fn, ms, Math.max(1, ms));
  }

  clearTimeout(timer: Timer | undefined): void {
    if (timer) this.#timers.delete((timer as unknown as { id: number }).id);
  }

  clearInterval(timer: Timer | undefined): void {
    this.clearTimeout(timer);
  }

  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time forward, firing every timer that falls due, in order. */
  tick(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void; every?: number }] | undefined;
      for (const entry of this.#timers) if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      const [id, timer] = next;
      this.#now = timer.at;
      if (timer.every) timer.at += timer.every;
      else this.#timers.delete(id);
      timer.fn();
    }
    this.#now = end;
  }

  #add(fn: () => void, ms: number, every?: number): Timer {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + ms, fn, ...(every ? { every } : {}) });
    return { id, unref: () => undefined } as unknown as Timer;
  }
}

export const TOKEN = randomBytes(16).toString('hex');

export async function startPlane(t: TestContext, options: Partial<ControlPlaneOptions> & { token?: string } = {}): Promise<ControlPlane> {
  const token = options.token ?? TOKEN;
  const plane = new ControlPlane({ authorize: (tok) => tok === token, ...options });
  await plane.listen(0, '127.0.0.1');
  t.after(() => plane.close());
  return plane;
}

export async function startWolf(t: TestContext, options: StandInWolfOptions = {}): Promise<{ wolf: StandInWolf; local: string }> {
  const wolf = new StandInWolf(options);
  const local = await wolf.listen();
  t.after(() => wolf.close());
  return { wolf, local };
}

/** An in-process agent with fast timings, its logs captured. */
export function startAgent(
  t: TestContext,
  plane: ControlPlane,
  local: string,
  overrides: Partial<AgentOptions> & { token?: () => string; apiUrl?: URL } = {},
): { agent: Agent; logs: LogCapture; runnerId: string } {
  const logs = new LogCapture();
  const runnerId = overrides.runnerId ?? `wolf-test-${randomBytes(3).toString('hex')}`;
  const { token, ...rest } = overrides;
  const agent = new Agent({
    apiUrl: new URL(plane.url),
    runnerId,
    local: parseLocalAddress(local),
    transport: { token: token ?? (() => TOKEN), userAgent: 'wolf-revdial-client/test', rejectUnauthorized: true },
    log: logs.log,
    reconnectMaxMs: 200,
    pingIntervalMs: 5_000,
    pingTimeoutMs: 15_000,
    pickupTimeoutMs: 5_000,
    localDialTimeoutMs: 2_000,
    maxTunnels: 64,
    closeBackstopMs: 2_000,
    ...rest,
  });
  agent.start();
  t.after(() => agent.shutdown(0));
  return { agent, logs, runnerId };
}

export async function readBody(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** sha256 and length of a response body (see `expectedDigest`). */
export const sha256Of = digestOf;

/** Environment for a spawned agent: nothing inherited that could send traffic elsewhere. */
export function agentEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  // No ops listener unless a test asks for one: the default port would collide between agents.
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', REVDIAL_METRICS_ADDR: 'off', ...extra };
}

export interface SpawnedAgent {
  child: ChildProcess;
  logs: LogCapture;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface SpawnOptions {
  /** Start the agent inside this cgroup (`cgroup.procs` path): it enters before exec, so Node sizes its heap to the limit. */
  cgroupProcs?: string;
}

/** Runs the real executable (bin/wolf-revdial-client), its stdout parsed as log lines. */
export function spawnAgent(t: TestContext | undefined, env: NodeJS.ProcessEnv, args: string[] = [], options: SpawnOptions = {}): SpawnedAgent {
  const child = options.cgroupProcs
    ? // sh -c SCRIPT $0 $@: the shell moves itself into the cgroup, then becomes the agent (same pid).
      spawn('/bin/sh', ['-c', 'echo $$ > "$0" && exec "$@"', options.cgroupProcs, BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs = new LogCapture();
  let buffered = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (text: string) => {
    buffered += text;
    const end = buffered.lastIndexOf('\n');
    if (end === -1) return;
    logs.push(buffered.slice(0, end));
    buffered = buffered.slice(end + 1);
  });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    err += text;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  t?.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    return exited;
  });
  return { child, logs, stderr: () => err, exited };
}
