/**
 * `npm run bench`: the agent as users run it (bin/wolf-revdial-client), the
 * project's control plane and a stand-in Wolf API, each in its own process on
 * loopback; load from `wrk`; every figure beside the same workload sent
 * without the tunnel. Prints a table and writes bench/results/<name>.json.
 *
 *   npm run bench                  full run (several runs per figure, medians)
 *   npm run bench -- --smoke       short run for CI: asserts only completion and checksums
 *   npm run bench -- --cpu-prof    also writes the agent's CPU profile under bench/results/profiles/
 *   npm run bench -- --dist        drives the packaged executable (dist/) instead of bin/
 *   npm run bench -- --wolf-tcp    the agent dials Wolf on 127.0.0.1 instead of a unix socket
 *   npm run bench -- --agent-cmd ./wrapper.sh   runs this executable as the agent (a wrapper that
 *                                  moves itself into a memory cgroup, then execs bin/, for example)
 *   npm run bench -- --node-args '--trace-gc' --agent-log /tmp/agent.log
 *                                  experiments: runs build/wolf-revdial-client.cjs (what bin/ runs) with these Node flags, keeps its output
 *   npm run bench -- --runs 5 --duration 8 --bulk-mib 1024 --idle 1000
 *   npm run bench -- --tls-cost    client CPU per TLS connection: new context, shared, resumed 1.3 / 1.2 (bench/tls-cost.ts)
 *   npm run bench -- --wan         across a real round trip, TLS on, in network namespaces (bench/wan/run.ts)
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IpcClient } from './ipc.js';
import { cpuSeconds, cpuSplit, loadAverage, median, rssAnonMiB, rssMiB, spread } from './proc.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const NODE = process.execPath;
const BIN = join(ROOT, 'bin/wolf-revdial-client');
/** What bin/ runs: the agent bundled by `npm run build`. */
const AGENT_JS = 'build/wolf-revdial-client.cjs';
const DIST = join(ROOT, 'dist/wolf-revdial-client');
const RESULTS = join(ROOT, 'bench/results');
const HERE = fileURLToPath(new URL('.', import.meta.url));
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const CONNECTED = 'Connected to control plane via RevDial';
/** On loopback the sender's system call also runs the receiver's TCP input, so this part holds some of the peers' work. */
const KERNEL_NOTE = "system time; on loopback it includes the peers' TCP receive processing";

// ---------------------------------------------------------------- options

interface Options {
  smoke: boolean;
  runs: number;
  durationS: number;
  concurrency: number[];
  bulkBytes: number;
  idleTunnels: number;
  startRuns: number;
  cpuProf: boolean;
  /** Drive the packaged executable (dist/wolf-revdial-client) instead of bin/. */
  dist: boolean;
  /**
   * Give the agent (and the no-tunnel proxy) Wolf's TCP address instead of its
   * unix socket. Real deployments use the socket (/var/run/wolf/wolf.sock).
   */
  wolfTcp: boolean;
  /** Node flags for the agent, run as `node <flags> build/wolf-revdial-client.cjs` (experiments such as --trace-gc). */
  nodeArgs?: string[];
  /** Append the agent's stdout and stderr to this file. */
  agentLog?: string;
  /** Run this executable as the agent instead of bin/ (same environment, no arguments). */
  agentCmd?: string;
}

function parseArgs(argv: string[]): Options {
  const smoke = argv.includes('--smoke');
  const o: Options = smoke
    ? {
        smoke,
        runs: 1,
        durationS: 2,
        concurrency: [1, 32, 128],
        bulkBytes: 128 * MiB,
        idleTunnels: 1000,
        startRuns: 3,
        cpuProf: false,
        dist: false,
        wolfTcp: false,
      }
    : { smoke, runs: 3, durationS: 6, concurrency: [1, 32, 128], bulkBytes: GiB, idleTunnels: 1000, startRuns: 7, cpuProf: false, dist: false, wolfTcp: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): number => Number(argv[++i]);
    if (a === '--runs') o.runs = next();
    else if (a === '--duration') o.durationS = next();
    else if (a === '--bulk-mib') o.bulkBytes = next() * MiB;
    else if (a === '--idle') o.idleTunnels = next();
    else if (a === '--start-runs') o.startRuns = next();
    else if (a === '--concurrency') o.concurrency = String(argv[++i]).split(',').map(Number);
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--dist') o.dist = true;
    else if (a === '--wolf-tcp') o.wolfTcp = true;
    else if (a === '--node-args') o.nodeArgs = String(argv[++i]).split(' ').filter(Boolean);
    else if (a === '--agent-log') o.agentLog = String(argv[++i]);
    else if (a === '--agent-cmd') o.agentCmd = String(argv[++i]);
    else if (a !== '--smoke') throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---------------------------------------------------------------- processes

const started: ChildProcess[] = [];

function forkService(script: string, env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; ipc: IpcClient; ready: Record<string, unknown> }> {
  const child = fork(join(HERE, script), [], { env, execPath: NODE, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  started.push(child);
  const ipc = new IpcClient(child);
  return new Promise((resolve, reject) => {
    const onMessage = (msg: Record<string, unknown>): void => {
      if (msg.ready !== true) return;
      child.removeListener('message', onMessage);
      child.removeListener('exit', onExit);
      resolve({ child, ipc, ready: msg });
    };
    const onExit = (code: number | null): void => reject(new Error(`${script} exited (${code}) before it was ready`));
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

interface AgentProcess {
  child: ChildProcess;
  pid: number;
  /** ms from spawn to the "Connected" log line. */
  connected: Promise<number>;
  exited: Promise<number | null>;
  stderr: () => string;
}

/** Starts the agent the way users do: the executable, configured by environment. */
function startAgent(command: string, args: string[], env: NodeJS.ProcessEnv, logFile?: string): AgentProcess {
  const t0 = process.hrtime.bigint();
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  if (logFile) {
    const log = createWriteStream(logFile, { flags: 'a' });
    child.stdout.on('data', (b: Buffer) => log.write(b));
    child.stderr.on('data', (b: Buffer) => log.write(b));
    child.once('exit', () => log.end());
  }
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    err += s;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const connected = new Promise<number>((resolve, reject) => {
    let buffered = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      buffered += s;
      if (buffered.includes(CONNECTED)) {
        resolve(Number(process.hrtime.bigint() - t0) / 1e6);
        buffered = '';
      } else if (buffered.length > 65536) buffered = buffered.slice(-1024);
    });
    void exited.then((code) => reject(new Error(`agent exited (${code}) before connecting: ${err.slice(0, 500)}`)));
  });
  connected.catch(() => undefined);
  if (child.pid === undefined) throw new Error(`cannot start ${command}`);
  return { child, pid: child.pid, connected, exited, stderr: () => err };
}

async function stopAgent(agent: AgentProcess): Promise<void> {
  if (agent.child.exitCode !== null || agent.child.signalCode !== null) return;
  agent.child.kill('SIGTERM');
  const timer = setTimeout(() => agent.child.kill('SIGKILL'), 10_000);
  await agent.exited;
  clearTimeout(timer);
}

function agentEnv(apiUrl: string, wolfId: string, token: string, local: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    HELIX_API_URL: apiUrl,
    WOLF_ID: wolfId,
    RUNNER_TOKEN: token,
    WOLF_LOCAL_ADDR: local,
    // Metrics stay on, as users run it, but on a free port: several agents start here.
    REVDIAL_METRICS_ADDR: '127.0.0.1:0',
  };
}

function distOrFail(dist: string | undefined): string {
  if (!dist) throw new Error(`${DIST} missing: run npm run package first`);
  return dist;
}

// ---------------------------------------------------------------- wrk

const WRK_REPORT = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"durationUs":%d,"errors":%d,"non2xx":%d,"p50Us":%d,"p99Us":%d,"meanUs":%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
`;

interface WrkResult {
  requests: number;
  durationUs: number;
  errors: number;
  non2xx: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
}

function wrk(script: string, url: string, connections: number, durationS: number): Promise<WrkResult> {
  const threads = Math.min(2, connections);
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${durationS}s`, '--timeout', '10s', '-s', script, url];
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(child);
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.once('error', reject);
    child.once('exit', (code) => {
      const line = /WRKJSON (\{.*\})/.exec(out);
      if (code !== 0 || !line?.[1]) reject(new Error(`wrk failed (${code}): ${out.slice(0, 500)}`));
      else resolve(JSON.parse(line[1]) as WrkResult);
    });
  });
}

// ---------------------------------------------------------------- figures

interface Figure {
  section: string;
  name: string;
  unit: string;
  /** Median over runs, through the tunnel (or of the agent). */
  value: number;
  /** The same workload without the tunnel, when there is one. */
  direct?: number;
  directLabel?: string;
  /** value / direct. */
  ratio?: number;
  /** Target: value must be <= (or >= when `higherIsBetter`) this. */
  target?: number;
  higherIsBetter?: boolean;
  runs: number[];
  directRuns?: number[];
  /** (max - min) / median over runs. */
  spread: number;
  note?: string;
}

const figures: Figure[] = [];

function figure(f: Omit<Figure, 'value' | 'spread' | 'ratio' | 'direct'> & { runs: number[]; directRuns?: number[] }): Figure {
  const value = median(f.runs);
  const full: Figure = { ...f, value, spread: spread(f.runs) };
  if (f.directRuns) {
    full.direct = median(f.directRuns);
    full.ratio = value / full.direct;
  }
  figures.push(full);
  return full;
}

function fmt(n: number | undefined, unit = ''): string {
  if (n === undefined || !Number.isFinite(n)) return '-';
  const a = Math.abs(n);
  const s = a >= 1000 ? n.toFixed(0) : a >= 100 ? n.toFixed(1) : a >= 10 ? n.toFixed(2) : n.toFixed(3);
  return unit ? `${s} ${unit}` : s;
}

function verdict(f: Figure): string {
  if (f.target === undefined) return '';
  const ok = f.higherIsBetter ? f.value >= f.target : f.value <= f.target;
  return `${ok ? 'ok  ' : 'MISS'} ${f.higherIsBetter ? '>=' : '<='} ${fmt(f.target)}`;
}

function printTable(): void {
  const rows = figures.map((f) => [
    f.section,
    f.name,
    fmt(f.value, f.unit),
    f.direct === undefined ? '-' : `${fmt(f.direct, f.unit)}${f.directLabel ? ` (${f.directLabel})` : ''}`,
    f.ratio === undefined ? '-' : `${f.ratio.toFixed(2)}x`,
    `±${(f.spread * 50).toFixed(0)}%`,
    verdict(f),
  ]);
  const head = ['section', 'figure', 'tunnel/agent (median)', 'without tunnel', 'ratio', 'noise', 'target'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  console.log(`\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const loads: number[] = [loadAverage()];
  const say = (s: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${s}`);
  for (const tool of ['wrk']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${tool} not found: apt-get install -y wrk`, { cause: err });
    }
  }
  if (!existsSync(join(ROOT, AGENT_JS))) throw new Error(`${AGENT_JS} missing: run npm run build`);
  mkdirSync(RESULTS, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), 'revdial-bench-'));
  const script = join(tmp, 'report.lua');
  writeFileSync(script, WRK_REPORT);
  // The packaged executable runs from a copy, installed as INTEGRATION.md does
  // (`install -m 0755`). dist/ itself is the file postject just wrote: while
  // the page cache still holds that write, each page fault maps larger pieces
  // of the 105 MB file and its RSS reads ~15 MiB higher (62.3 vs 77.5 MiB
  // measured; the same file after `echo 1 > /proc/sys/vm/drop_caches`: 62.3).
  let dist: string | undefined;
  if (existsSync(DIST)) {
    dist = join(tmp, 'wolf-revdial-client');
    copyFileSync(DIST, dist);
    chmodSync(dist, 0o755);
  }

  const token = randomBytes(24).toString('hex');
  const wolfId = `bench-${randomBytes(3).toString('hex')}`;
  const runnerId = `wolf-${wolfId}`;
  const baseEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };

  // Wolf listens on a unix socket, as in real deployments, and on TCP for wrk's
  // direct figures (wrk cannot dial a socket). The agent and the no-tunnel
  // proxy get the socket unless --wolf-tcp.
  const wolfSocket = join(tmp, 'wolf.sock');
  const wolf = await forkService('wolf-process.js', { ...baseEnv, BENCH_WOLF_SOCKET: wolfSocket });
  const wolfTcp = String(wolf.ready.local);
  const local = o.wolfTcp ? wolfTcp : `unix://${wolfSocket}`;
  const wolfPid = Number(wolf.ready.pid);
  const plane = await forkService('plane-process.js', {
    ...baseEnv,
    BENCH_TOKEN: token,
    BENCH_RUNNER_ID: runnerId,
    BENCH_WOLF: wolfTcp,
    ...(o.wolfTcp ? {} : { BENCH_WOLF_SOCKET: wolfSocket }),
  });
  const apiUrl = String(plane.ready.apiUrl);
  const tunnelFront = String(plane.ready.tunnelFront);
  const directFront = String(plane.ready.directFront);
  const wolfUrl = `http://${wolfTcp}`;
  const profDir = join(RESULTS, 'profiles');

  const env = agentEnv(apiUrl, wolfId, token, local);
  const nodeArgs = [...(o.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : []), ...(o.nodeArgs ?? [])];
  const agent =
    nodeArgs.length > 0
      ? startAgent(NODE, [...nodeArgs, join(ROOT, AGENT_JS)], env, o.agentLog)
      : startAgent(o.agentCmd ?? (o.dist ? distOrFail(dist) : BIN), [], env, o.agentLog);
  const connectMs = await agent.connected;
  await plane.ipc.call('waitRunner', { runnerId, timeoutMs: 10_000 });
  say(`agent pid ${agent.pid} connected in ${connectMs.toFixed(0)} ms; plane ${apiUrl}, wolf ${local}`);
  const checks: string[] = [];

  // -- RSS idle (after a moment of rest), beside a bare Node process doing nothing.
  await new Promise((r) => setTimeout(r, 1000));
  const rssIdle = rssMiB(agent.pid);
  const rssIdleAnon = rssAnonMiB(agent.pid);
  const bare = spawn(NODE, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  started.push(bare);
  await new Promise((r) => setTimeout(r, 500));
  const bareRss = rssMiB(bare.pid!);
  const bareRssAnon = rssAnonMiB(bare.pid!);
  bare.kill('SIGKILL');
  figure({ section: 'memory', name: 'RSS idle', unit: 'MiB', runs: [rssIdle], directRuns: [bareRss], directLabel: 'bare node', target: 64 });
  figure({
    section: 'memory',
    name: 'RSS idle, anonymous part',
    unit: 'MiB',
    runs: [rssIdleAnon],
    directRuns: [bareRssAnon],
    directLabel: 'bare node',
    note: 'the rest of the RSS is file-backed pages of the Node binary, shared and reclaimable',
  });

  // -- 4. Before any load, so the figure is what the idle tunnels cost, not what the load left behind.
  say(`opening ${o.idleTunnels} idle tunnels`);
  const wolfRss0 = rssMiB(wolfPid);
  const a0 = cpuSeconds(agent.pid);
  const opened = await plane.ipc.call<number>('openIdle', { count: o.idleTunnels, via: 'tunnel' });
  const openCpu = cpuSeconds(agent.pid) - a0;
  await new Promise((r) => setTimeout(r, 1000));
  const rssTunnels = rssMiB(agent.pid);
  await plane.ipc.call('closeIdle');
  const wolfRssTunnels = rssMiB(wolfPid);
  const opened2 = await plane.ipc.call<number>('openIdle', { count: o.idleTunnels, via: 'direct' });
  await new Promise((r) => setTimeout(r, 1000));
  const wolfRssDirect = rssMiB(wolfPid);
  await plane.ipc.call('closeIdle');
  if (opened !== o.idleTunnels || opened2 !== o.idleTunnels) throw new Error(`opened ${opened}/${opened2} of ${o.idleTunnels} idle streams`);
  checks.push(`${o.idleTunnels} idle tunnels opened (event streams answered 200)`);
  figure({
    section: 'memory',
    name: `RSS with ${o.idleTunnels} idle tunnels`,
    unit: 'MiB',
    runs: [rssTunnels],
    directRuns: [wolfRssDirect],
    directLabel: `wolf with ${o.idleTunnels} direct conns`,
    ...(o.idleTunnels >= 1000 ? { target: 128 } : {}),
    note: `wolf RSS before ${wolfRss0.toFixed(1)} MiB, with the tunnels ${wolfRssTunnels.toFixed(1)} MiB`,
  });
  figure({ section: 'memory', name: 'agent CPU per idle tunnel opened', unit: 'µs', runs: [(openCpu / o.idleTunnels) * 1e6] });

  // -- 1. fresh tunnel per request, small JSON GET.
  const path = '/api/v1/system/health';
  say(`warm-up: ${path} through each path`);
  for (const url of [wolfUrl, directFront, tunnelFront]) await wrk(script, `${url}${path}`, 8, 1);
  const rate: Record<
    string,
    Record<number, { rps: number[]; p50: number[]; p99: number[]; agentCpuPerReq: number[]; agentSysPerReq: number[]; wolfCpuPerReq: number[] }>
  > = {};
  for (const target of ['wolf', 'proxy', 'tunnel']) {
    rate[target] = {};
    for (const c of o.concurrency)
      (rate[target] as Record<number, unknown>)[c] = { rps: [], p50: [], p99: [], agentCpuPerReq: [], agentSysPerReq: [], wolfCpuPerReq: [] };
  }
  for (let run = 0; run < o.runs; run++) {
    for (const c of o.concurrency) {
      // Interleaved, so drift on a shared machine hits every path alike.
      for (const [target, url] of [
        ['wolf', wolfUrl],
        ['proxy', directFront],
        ['tunnel', tunnelFront],
      ] as const) {
        const a0 = cpuSeconds(agent.pid);
        const s0 = cpuSplit(agent.pid);
        const w0 = cpuSeconds(wolfPid);
        const r = await wrk(script, `${url}${path}`, c, o.durationS);
        const agentCpu = cpuSeconds(agent.pid) - a0;
        const s1 = cpuSplit(agent.pid);
        const wolfCpu = cpuSeconds(wolfPid) - w0;
        if (r.errors > 0 || r.non2xx > 0) throw new Error(`${target} c=${c}: ${r.errors} socket errors, ${r.non2xx} non-2xx of ${r.requests}`);
        const slot = rate[target]?.[c];
        if (!slot) continue;
        slot.rps.push(r.requests / (r.durationUs / 1e6));
        slot.p50.push(r.p50Us / 1000);
        slot.p99.push(r.p99Us / 1000);
        slot.agentCpuPerReq.push((agentCpu / r.requests) * 1e6);
        slot.agentSysPerReq.push(((s1.sys - s0.sys) / r.requests) * 1e6);
        slot.wolfCpuPerReq.push((wolfCpu / r.requests) * 1e6);
        say(
          `run ${run + 1}/${o.runs} c=${c} ${target}: ${(r.requests / (r.durationUs / 1e6)).toFixed(0)} req/s, p50 ${(r.p50Us / 1000).toFixed(2)} ms, p99 ${(r.p99Us / 1000).toFixed(2)} ms${target === 'tunnel' ? `, agent ${((agentCpu / r.requests) * 1e6).toFixed(0)} µs CPU/tunnel (user ${(((s1.user - s0.user) / r.requests) * 1e6).toFixed(0)}, sys ${(((s1.sys - s0.sys) / r.requests) * 1e6).toFixed(0)})` : ''}`,
        );
      }
    }
  }
  checks.push('request rate: every response 2xx, no socket errors');
  for (const c of o.concurrency) {
    const t = rate.tunnel?.[c];
    const w = rate.wolf?.[c];
    const p = rate.proxy?.[c];
    if (!t || !w || !p) continue;
    figure({
      section: `GET c=${c}`,
      name: 'requests/s',
      unit: 'req/s',
      runs: t.rps,
      directRuns: w.rps,
      directLabel: 'wolf',
      higherIsBetter: true,
      ...(c === 32 ? { target: 2500 } : {}),
    });
    figure({ section: `GET c=${c}`, name: 'requests/s vs same proxy without tunnel', unit: 'req/s', runs: t.rps, directRuns: p.rps, directLabel: 'proxy' });
    figure({ section: `GET c=${c}`, name: 'p50', unit: 'ms', runs: t.p50, directRuns: w.p50, directLabel: 'wolf' });
    // The tunnel's own latency: the same proxy over a fresh TCP connection instead of a tunnel.
    const added = t.p50.map((v, i) => v - (p.p50[i] ?? Number.NaN));
    figure({
      section: `GET c=${c}`,
      name: 'p50 added by the tunnel',
      unit: 'ms',
      runs: added,
      ...(c === 1 ? { target: 1 } : {}),
      note: 'tunnel front minus proxy front, same run',
    });
    figure({ section: `GET c=${c}`, name: 'p99', unit: 'ms', runs: t.p99, directRuns: w.p99, directLabel: 'wolf', ...(c === 32 ? { target: 26 } : {}) });
    figure({
      section: `GET c=${c}`,
      name: 'agent CPU per tunnel',
      unit: 'µs',
      runs: t.agentCpuPerReq,
      directRuns: w.wolfCpuPerReq,
      directLabel: 'wolf CPU/req direct',
      target: 200,
    });
    figure({ section: `GET c=${c}`, name: 'agent CPU per tunnel, kernel part', unit: 'µs', runs: t.agentSysPerReq, note: KERNEL_NOTE });
  }

  // -- 2/3. bulk through one tunnel, checksum-verified, with the agent's CPU.
  const bulkMiB = o.bulkBytes / MiB;
  for (const direction of ['down', 'up'] as const) {
    const mbps: number[] = [];
    const directMbps: number[] = [];
    const cpuPerGiB: number[] = [];
    const sysPerGiB: number[] = [];
    const wolfCpuPerGiB: number[] = [];
    for (let run = 0; run < o.runs; run++) {
      for (const via of ['direct', 'tunnel'] as const) {
        const seed = `${direction}-${run}-${via}`;
        const a0 = cpuSeconds(agent.pid);
        const s0 = cpuSplit(agent.pid);
        const w0 = cpuSeconds(wolfPid);
        const r = await plane.ipc.call<{ ms: number; bytes: number; sha256: string; expected: string; ok: boolean }>('bulk', {
          direction,
          via,
          size: o.bulkBytes,
          seed,
        });
        const agentCpu = cpuSeconds(agent.pid) - a0;
        const s1 = cpuSplit(agent.pid);
        const wolfCpu = cpuSeconds(wolfPid) - w0;
        if (!r.ok) throw new Error(`bulk ${direction} ${via}: checksum mismatch (${r.bytes} bytes, sha256 ${r.sha256}, expected ${r.expected})`);
        const rate = r.bytes / MiB / (r.ms / 1000);
        if (via === 'tunnel') {
          mbps.push(rate);
          cpuPerGiB.push(agentCpu / (r.bytes / GiB));
          sysPerGiB.push((s1.sys - s0.sys) / (r.bytes / GiB));
        } else {
          directMbps.push(rate);
          wolfCpuPerGiB.push(wolfCpu / (r.bytes / GiB));
        }
        say(
          `bulk ${direction} ${bulkMiB} MiB ${via} run ${run + 1}: ${rate.toFixed(0)} MiB/s, sha256 ok${via === 'tunnel' ? `, agent ${(agentCpu / (r.bytes / GiB)).toFixed(2)} CPU-s/GiB (user ${((s1.user - s0.user) / (r.bytes / GiB)).toFixed(2)}, sys ${((s1.sys - s0.sys) / (r.bytes / GiB)).toFixed(2)})` : ''}`,
        );
      }
    }
    checks.push(`bulk ${direction}: ${o.runs * 2} transfers of ${bulkMiB} MiB, sha256 verified`);
    const label = direction === 'down' ? 'download' : 'upload';
    figure({
      section: `bulk ${label}`,
      name: `${bulkMiB} MiB throughput`,
      unit: 'MiB/s',
      runs: mbps,
      directRuns: directMbps,
      directLabel: 'wolf',
      higherIsBetter: true,
    });
    figure({
      section: `bulk ${label}`,
      name: 'agent CPU per GiB',
      unit: 'CPU-s',
      runs: cpuPerGiB,
      directRuns: wolfCpuPerGiB,
      directLabel: 'wolf CPU/GiB direct',
      target: 1.0,
    });
    figure({ section: `bulk ${label}`, name: 'agent CPU per GiB, kernel part', unit: 'CPU-s', runs: sysPerGiB, note: KERNEL_NOTE });
  }

  const rssAfterLoad = rssMiB(agent.pid);
  figure({ section: 'memory', name: 'RSS right after the load', unit: 'MiB', runs: [rssAfterLoad] });
  // Like the idle figure, after a rest: the last transfer's buffers are garbage until the next GC.
  await new Promise((r) => setTimeout(r, 2000));
  figure({ section: 'memory', name: 'RSS idle 2 s after the load', unit: 'MiB', runs: [rssMiB(agent.pid)] });
  figure({ section: 'memory', name: 'RSS idle 2 s after the load, anonymous part', unit: 'MiB', runs: [rssAnonMiB(agent.pid)] });

  // -- 5. start to connected, beside a bare `node -e 0` start to exit.
  // The first start of each executable also gives its idle RSS, taken as for the main agent.
  const startTimes = async (command: string): Promise<{ times: number[]; rssIdle: number }> => {
    const times: number[] = [];
    let rssIdle = Number.NaN;
    for (let i = 0; i < o.startRuns; i++) {
      const a = startAgent(command, [], agentEnv(apiUrl, `start-${i}-${randomBytes(2).toString('hex')}`, token, local));
      times.push(await a.connected);
      if (i === 0) {
        await new Promise((r) => setTimeout(r, 1000));
        rssIdle = rssMiB(a.pid);
      }
      await stopAgent(a);
      if (a.child.exitCode !== 0) throw new Error(`${command} exited ${a.child.exitCode} after SIGTERM: ${a.stderr()}`);
    }
    return { times, rssIdle };
  };
  const bareStart: number[] = [];
  for (let i = 0; i < o.startRuns; i++) {
    const s = process.hrtime.bigint();
    execFileSync(NODE, ['-e', '0']);
    bareStart.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const binStart = await startTimes(BIN);
  figure({
    section: 'start',
    name: 'bin/wolf-revdial-client start to connected',
    unit: 'ms',
    runs: binStart.times,
    directRuns: bareStart,
    directLabel: 'node -e 0',
    target: 300,
  });
  figure({
    section: 'start',
    name: 'bin/wolf-revdial-client RSS idle',
    unit: 'MiB',
    runs: [binStart.rssIdle],
    target: 64,
    note: 'first start, 1 s after connecting',
  });
  if (dist) {
    const distStart = await startTimes(dist);
    figure({
      section: 'start',
      name: 'dist/wolf-revdial-client start to connected',
      unit: 'ms',
      runs: distStart.times,
      directRuns: bareStart,
      directLabel: 'node -e 0',
      target: 300,
    });
    figure({
      section: 'start',
      name: 'dist/wolf-revdial-client RSS idle',
      unit: 'MiB',
      runs: [distStart.rssIdle],
      target: 64,
      note: 'first start, 1 s after connecting',
    });
  }
  checks.push(`start: ${o.startRuns} starts per executable connected and exited 0 on SIGTERM`);

  await stopAgent(agent);
  if (agent.child.exitCode !== 0) throw new Error(`agent exited ${agent.child.exitCode} after SIGTERM: ${agent.stderr()}`);
  loads.push(loadAverage());

  printTable();
  const result = {
    when: new Date().toISOString(),
    mode: o.smoke ? 'smoke' : 'full',
    options: o,
    machine: { cpus: (await import('node:os')).cpus().length, node: process.version, loadAverage1m: loads },
    agent: nodeArgs.length > 0 ? `node ${nodeArgs.join(' ')} ${AGENT_JS}` : (o.agentCmd ?? (o.dist ? 'dist/wolf-revdial-client' : 'bin/wolf-revdial-client')),
    checks,
    figures,
    seconds: (Date.now() - t0) / 1000,
  };
  const file = join(RESULTS, `${o.smoke ? 'smoke' : 'bench'}-${result.when.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nchecks: ${checks.join('; ')}`);
  console.log(
    `load average (1 min) at start/end: ${loads.map((l) => l.toFixed(2)).join(' / ')}; noise = ±half the spread (max-min)/median over ${o.runs} run(s)`,
  );
  console.log(`written ${file} in ${result.seconds.toFixed(0)} s`);
  if (o.cpuProf) console.log(`agent CPU profile under ${profDir}`);
  rmSync(tmp, { recursive: true, force: true });
}

function cleanup(): void {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

if (process.argv.includes('--tls-cost')) {
  // Client CPU per TLS connection by how the agent dials (bench/tls-cost.ts).
  const { runTlsCost } = await import('./tls-cost.js');
  process.exit(await runTlsCost(process.argv.slice(2)));
}

if (process.argv.includes('--wan')) {
  // The WAN mode (network namespaces, TLS, a real round trip) lives in bench/wan/.
  const { runWan } = await import('./wan/run.js');
  process.exit(await runWan(process.argv.slice(2)));
}

main().then(
  () => {
    cleanup();
    process.exit(0);
  },
  (err: unknown) => {
    console.error(`bench failed: ${err instanceof Error ? err.stack : String(err)}`);
    cleanup();
    process.exit(1);
  },
);
