/**
 * A control plane in its own process, to kill (SIGKILL: no goodbye on any
 * socket) and start again on the same port, as a crashed or rolled-out
 * control plane would be.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { NODE, TOKEN } from '../../helpers/harness.js';

const CHILD = fileURLToPath(new URL('./plane-child.js', import.meta.url));

export interface PlaneProcessOptions {
  token?: string;
  graceMs?: number;
  pickupTimeoutMs?: number;
}

export class PlaneProcess {
  port = 0;
  /** When the current process printed LISTENING (Date.now()). */
  listeningAt = 0;
  starts = 0;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  readonly #options: PlaneProcessOptions;

  constructor(options: PlaneProcessOptions = {}) {
    this.#options = options;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Starts the plane (on the previous port after the first start); resolves once it listens. */
  async start(): Promise<number> {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      PLANE_TOKEN: this.#options.token ?? TOKEN,
      PLANE_PORT: String(this.port),
      PLANE_GRACE_MS: String(this.#options.graceMs ?? 5_000),
      PLANE_PICKUP_TIMEOUT_MS: String(this.#options.pickupTimeoutMs ?? 5_000),
    };
    const child = spawn(NODE, [CHILD], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    this.starts++;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      stderr += s;
    });
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (s: string) => {
        out += s;
        const m = /LISTENING (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => reject(new Error(`control plane process exited (${code}) before listening: ${stderr.slice(-500)}`)));
    });
    this.listeningAt = Date.now();
    this.port = port;
    return port;
  }

  /** SIGKILL, and wait until the process is gone (its sockets closed by the kernel). */
  async kill(): Promise<void> {
    const child = this.#child;
    if (child?.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await this.#exited;
    this.#child = undefined;
  }

  /** GET through the runner's tunnel: `{status, body}`; status 502 with `{code}` when the plane could not reach it. */
  fetch(runnerId: string, path: string, timeoutMs = 10_000): Promise<{ status: number; body: Buffer }> {
    const query = new URLSearchParams({ runner: runnerId, path });
    return new Promise((resolve, reject) => {
      const req = http.get(`${this.url}/test/fetch?${query.toString()}`, { agent: false, timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
    });
  }
}
