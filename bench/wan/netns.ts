/**
 * Two network namespaces joined by a link with a chosen round-trip time, for
 * the WAN mode of `npm run bench` (bench/wan/run.ts):
 *
 *   rdwan-<pid>-plane  10.250.0.1/30  <-- link -->  10.250.0.2/30  rdwan-<pid>-host
 *
 * The link is a veth pair (0 ms), a veth pair with `netem` on both ends where
 * the kernel has sch_netem, or else the userspace delay line
 * (bench/wan/delay-line.py) over a TUN device in each namespace. Addresses
 * exist only inside the two namespaces; nothing routes anywhere else.
 * Everything made here is removed by `destroy()`, and by `destroyAllSync()`
 * from exit and signal handlers; namespaces left behind by a benchmark that was
 * killed outright (its pid gone) are removed by the next one.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const PLANE_ADDR = '10.250.0.1';
export const HOST_ADDR = '10.250.0.2';
const PREFIX = 30;
const DEVICE = 'rdwan0';
const NAME_RE = /^rdwan-(\d+)-(plane|host)$/;
const DELAY_LINE = fileURLToPath(new URL('../../../bench/wan/delay-line.py', import.meta.url));

export type LinkKind = 'veth' | 'netem' | 'delay-line';

export interface PingStats {
  sent: number;
  received: number;
  minMs: number;
  avgMs: number;
  maxMs: number;
  mdevMs: number;
}

export interface DelayLineStats {
  forwarded: number;
  bytes: number;
  dropped: number;
  writeRetries: number;
  maxQueueBytes: number;
  lateMsMax: number;
  /** Whether it ran at real-time priority (SCHED_FIFO). */
  realtime: boolean;
}

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[]): { ok: boolean; out: string } {
  try {
    return { ok: true, out: execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    return { ok: false, out: (e.stderr ?? e.message).trim() };
  }
}

/** Why the WAN mode cannot run here (one line), or undefined when it can. */
export function unavailableReason(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces need root (ip netns add)';
  const probe = tryRun('ip', ['netns', 'list']);
  if (!probe.ok) return `ip netns is unavailable: ${probe.out.split('\n')[0] ?? ''}`;
  for (const tool of ['ping', 'wrk', 'openssl']) {
    const found = tryRun('sh', ['-c', `command -v ${tool}`]);
    if (!found.ok) return `${tool} not found`;
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes rdwan-<pid>-* namespaces whose benchmark is gone. Returns their names. */
export function removeStale(): string[] {
  const removed: string[] = [];
  const dir = '/run/netns';
  if (!existsSync(dir)) return removed;
  for (const name of readdirSync(dir)) {
    const m = NAME_RE.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    if (tryRun('ip', ['netns', 'del', name]).ok) removed.push(name);
  }
  return removed;
}

const live = new Set<WanLab>();

/** For exit and signal handlers: removes every lab of this process at once. */
export function destroyAllSync(): void {
  for (const lab of live) lab.destroySync();
}

export class WanLab {
  readonly plane: string;
  readonly host: string;
  readonly rttMs: number;
  kind: LinkKind = 'veth';
  #delayLine?: ChildProcess;
  #delayLineErr = '';
  #delayLineExit?: Promise<void>;
  /** Processes started inside the namespaces: killed before the namespaces go. */
  readonly #children = new Set<ChildProcess>();
  #destroyed = false;

  private constructor(rttMs: number) {
    this.rttMs = rttMs;
    this.plane = `rdwan-${process.pid}-plane`;
    this.host = `rdwan-${process.pid}-host`;
  }

  /**
   * Makes both namespaces and the link. `force` picks the link kind instead of
   * the automatic choice (veth at 0 ms, netem where it exists, else the delay line).
   */
  static async create(rttMs: number, force?: LinkKind): Promise<WanLab> {
    const lab = new WanLab(rttMs);
    live.add(lab);
    try {
      await lab.#setUp(force);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  async #setUp(force?: LinkKind): Promise<void> {
    for (const ns of [this.plane, this.host]) {
      ip(['netns', 'add', ns]);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const oneWay = this.rttMs / 2;
    let kind: LinkKind = force ?? (this.rttMs === 0 ? 'veth' : 'netem');
    if (kind === 'veth' || kind === 'netem') {
      ip(['-n', this.plane, 'link', 'add', DEVICE, 'type', 'veth', 'peer', 'name', DEVICE, 'netns', this.host]);
      if (kind === 'netem') {
        const ok = [this.plane, this.host].every(
          (ns) => tryRun('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', DEVICE, 'root', 'netem', 'delay', `${oneWay}ms`, 'limit', '100000']).ok,
        );
        if (!ok) {
          if (force === 'netem') throw new Error('netem is unavailable here (tc qdisc add ... netem failed)');
          ip(['-n', this.plane, 'link', 'del', DEVICE]);
          kind = 'delay-line';
        }
      }
    }
    if (kind === 'delay-line') await this.#startDelayLine(oneWay);
    this.kind = kind;
    for (const [ns, addr] of [
      [this.plane, PLANE_ADDR],
      [this.host, HOST_ADDR],
    ] as const) {
      ip(['-n', ns, 'addr', 'add', `${addr}/${PREFIX}`, 'dev', DEVICE]);
      ip(['-n', ns, 'link', 'set', DEVICE, 'up']);
    }
  }

  async #startDelayLine(oneWayMs: number): Promise<void> {
    if (!existsSync('/dev/net/tun')) throw new Error('no netem and no /dev/net/tun: cannot make a round trip here');
    // stdin stays open as long as this process lives: the delay line ends when it closes.
    const child = spawn('python3', [DELAY_LINE, this.plane, this.host, String(oneWayMs), DEVICE], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#delayLine = child;
    child.stderr.setEncoding('utf8').on('data', (s: string) => (this.#delayLineErr += s));
    this.#delayLineExit = new Promise((resolve) => child.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (s: string) => {
        out += s;
        if (out.includes('ready\n')) resolve();
      });
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`delay line exited (${code}) before it was ready: ${this.#delayLineErr.slice(-500)}`)));
    });
  }

  /** The delay line's pid (its CPU is worth watching), when there is one. */
  get delayLinePid(): number | undefined {
    return this.#delayLine?.pid;
  }

  /** `ping` from the plane side to the host side. */
  ping(count = 10): PingStats {
    const out = execFileSync('ip', ['netns', 'exec', this.plane, 'ping', '-q', '-n', '-c', String(count), '-i', '0.2', '-W', '2', HOST_ADDR], {
      encoding: 'utf8',
    });
    const tx = /(\d+) packets transmitted, (\d+) received/.exec(out);
    const rtt = /= ([\d.]+)\/([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(out);
    if (!tx || !rtt) throw new Error(`cannot read ping's output: ${out}`);
    return {
      sent: Number(tx[1]),
      received: Number(tx[2]),
      minMs: Number(rtt[1]),
      avgMs: Number(rtt[2]),
      maxMs: Number(rtt[3]),
      mdevMs: Number(rtt[4]),
    };
  }

  /** A sysctl as the plane's namespace sees it (`net/ipv4/tcp_wmem`): namespaces start from the kernel's defaults, not the host's settings. */
  sysctl(path: string): string {
    return execFileSync('ip', ['netns', 'exec', this.plane, 'cat', `/proc/sys/${path}`], { encoding: 'utf8' })
      .trim()
      .replace(/\s+/g, ' ');
  }

  /** Spawns `command` inside a namespace; it is killed when the lab is destroyed. */
  spawnIn(ns: string, command: string, args: string[], options: Parameters<typeof spawn>[2] = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], options);
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    return child;
  }

  /** Stops everything in the namespaces, the delay line, and removes the namespaces. Returns the delay line's counters. */
  async destroy(): Promise<DelayLineStats | undefined> {
    const exits = [...this.#children].map(
      (c) => new Promise<void>((resolve) => (c.exitCode !== null || c.signalCode !== null ? resolve() : c.once('exit', () => resolve()))),
    );
    for (const c of this.#children) c.kill('SIGKILL');
    await Promise.all(exits);
    let stats: DelayLineStats | undefined;
    if (this.#delayLine && this.#delayLine.exitCode === null) {
      this.#delayLine.kill('SIGTERM');
      await this.#delayLineExit;
      const last = this.#delayLineErr.trim().split('\n').pop() ?? '';
      try {
        stats = JSON.parse(last) as DelayLineStats;
      } catch {
        stats = undefined;
      }
    }
    this.destroySync();
    return stats;
  }

  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const c of this.#children) c.kill('SIGKILL');
    this.#delayLine?.kill('SIGKILL');
    for (const ns of [this.plane, this.host]) tryRun('ip', ['netns', 'del', ns]);
    live.delete(this);
  }
}
