/**
 * `npm run bench -- --wan`: the agent as deployed, across a real round trip.
 *
 * Two network namespaces made here (bench/wan/netns.ts) joined by a link of a
 * chosen RTT: in the "plane" one the project's control plane behind TLS (a
 * certificate from a private CA made here, verified by the agent through
 * --ca-file) and the load, generated next to it as the production front does
 * (wrk against a front that sends every request through a fresh tunnel); in
 * the "host" one the agent (bin/wolf-revdial-client) and the stand-in Wolf on a
 * unix socket. Each RTT gets fresh namespaces, and several agents side by side,
 * one per configuration (defaults, preconnect off, TLS 1.2), driven in
 * interleaved turns so drift on a shared machine hits each alike. Each figure
 * sits beside the same workload without the tunnel: the same front proxying
 * over a fresh plain TCP connection across the link, and for bulk the same
 * transfer straight through the link (which shows whether the link itself,
 * e.g. the userspace delay line, limits the bulk figures).
 *
 *   npm run bench -- --wan                       full run: 0 and 30 ms, 1 GiB transfers
 *   npm run bench -- --wan --smoke               short run for CI (npm run bench:wan:smoke)
 *   npm run bench -- --wan --rtt 0,30,80 --runs 3 --duration 6 --warmup 8 --bulk-mib 1024 --bulk-runs 1
 *   npm run bench -- --wan --link delay-line     force the link kind (veth, netem, delay-line)
 *
 * Needs root, `ip netns`, ping, wrk and openssl; anywhere else it says why in
 * one line and exits 0. Prints a table per RTT, writes bench/results/wan-*.json.
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IpcClient } from '../ipc.js';
import { clkTck, cpuSeconds, loadAverage, median } from '../proc.js';
import { type DelayLineStats, destroyAllSync, HOST_ADDR, type LinkKind, PLANE_ADDR, type PingStats, removeStale, unavailableReason, WanLab } from './netns.js';
import { makePki } from './tls.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const NODE = process.execPath;
const BIN = join(ROOT, 'bin/wolf-revdial-client');
const RESULTS = join(ROOT, 'bench/results');
const SERVICES = fileURLToPath(new URL('../', import.meta.url));
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const CONNECTED = 'Connected to control plane via RevDial';
const PATH = '/api/v1/system/health';

interface Options {
  smoke: boolean;
  rtts: number[];
  runs: number;
  durationS: number;
  concurrency: number[];
  bulkBytes: number;
  bulkRuns: number;
  /** How long each agent's idle CPU is sampled, right after it connected. */
  idleMs: number;
  /** Seconds of load each agent gets at the highest concurrency before any figure is taken. */
  warmupS: number;
  link?: LinkKind;
}

function parseArgs(argv: string[]): Options {
  const smoke = argv.includes('--smoke');
  const o: Options = smoke
    ? { smoke, rtts: [0, 30], runs: 1, durationS: 2, concurrency: [1, 32], bulkBytes: 64 * MiB, bulkRuns: 1, idleMs: 2000, warmupS: 4 }
    : { smoke, rtts: [0, 30], runs: 3, durationS: 6, concurrency: [1, 32], bulkBytes: GiB, bulkRuns: 1, idleMs: 5000, warmupS: 8 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => String(argv[++i]);
    if (a === '--wan' || a === '--smoke') continue;
    else if (a === '--rtt') o.rtts = next().split(',').map(Number);
    else if (a === '--runs') o.runs = Number(next());
    else if (a === '--duration') o.durationS = Number(next());
    else if (a === '--concurrency') o.concurrency = next().split(',').map(Number);
    else if (a === '--bulk-mib') o.bulkBytes = Number(next()) * MiB;
    else if (a === '--bulk-runs') o.bulkRuns = Number(next());
    else if (a === '--warmup') o.warmupS = Number(next());
    else if (a === '--link') {
      const k = next();
      if (k !== 'veth' && k !== 'netem' && k !== 'delay-line') throw new Error(`--link: expected veth, netem or delay-line, not ${k}`);
      o.link = k;
    } else throw new Error(`unknown option for --wan: ${a}`);
  }
  if (o.rtts.some((r) => !Number.isFinite(r) || r < 0)) throw new Error('--rtt: expected milliseconds, e.g. 0,30');
  return o;
}

// ---------------------------------------------------------------- the configurations compared

interface Variant {
  key: string;
  label: string;
  env: Record<string, string>;
  /** The agent flag this configuration needs (checked in --help). */
  needs?: string;
  /** Whether the bulk transfers run through this one too. */
  bulk: boolean;
}

const VARIANTS: Variant[] = [
  { key: 'default', label: 'defaults', env: {}, bulk: true },
  { key: 'preconnect0', label: 'preconnect off', env: { REVDIAL_PRECONNECT: '0' }, needs: '--preconnect', bulk: true },
  { key: 'tls12', label: 'TLS 1.2', env: { REVDIAL_TLS_MAX_VERSION: '1.2' }, needs: '--tls-max-version', bulk: false },
];

// ---------------------------------------------------------------- processes in the namespaces

function serviceIn(
  lab: WanLab,
  ns: string,
  script: string,
  env: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; ipc: IpcClient; ready: Record<string, unknown> }> {
  const child = lab.spawnIn(ns, NODE, [join(SERVICES, script)], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ipc = new IpcClient(child);
  return new Promise((resolve, reject) => {
    const onMessage = (msg: Record<string, unknown>): void => {
      if (msg.ready !== true) return;
      child.removeListener('message', onMessage);
      child.removeListener('exit', onExit);
      resolve({ child, ipc, ready: msg });
    };
    const onExit = (code: number | null): void => reject(new Error(`${script} in ${ns} exited (${code}) before it was ready`));
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

interface Agent {
  variant: Variant;
  runnerId: string;
  child: ChildProcess;
  pid: number;
  stderr: () => string;
}

function startAgent(lab: WanLab, variant: Variant, env: NodeJS.ProcessEnv, caFile: string, runnerId: string): Promise<Agent> {
  const child = lab.spawnIn(lab.host, BIN, ['--ca-file', caFile], { env: { ...env, ...variant.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s.length + err.length > 65536 ? '' : s));
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (s: string): void => {
      out += s;
      if (out.includes(CONNECTED)) {
        child.stdout?.removeListener('data', onData);
        child.stdout?.resume();
        child.removeListener('exit', onExit);
        resolve({ variant, runnerId, child, pid: child.pid!, stderr: () => err });
      } else if (out.length > 65536) out = out.slice(-1024);
    };
    const onExit = (code: number | null): void =>
      reject(new Error(`agent (${variant.label}) exited (${code}) before connecting: ${err.slice(0, 800)} ${out.slice(0, 800)}`));
    child.stdout?.setEncoding('utf8').on('data', onData);
    child.once('exit', onExit);
  });
}

const WRK_REPORT = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"durationUs":%d,"errors":%d,"non2xx":%d,"p50Us":%d,"p99Us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
`;

interface WrkResult {
  requests: number;
  durationUs: number;
  errors: number;
  non2xx: number;
  p50Us: number;
  p99Us: number;
}

function wrk(lab: WanLab, script: string, url: string, connections: number, durationS: number, runnerId?: string): Promise<WrkResult> {
  const args = ['-t', String(Math.min(2, connections)), '-c', String(connections), '-d', `${durationS}s`, '--timeout', '10s', '-s', script];
  if (runnerId) args.push('-H', `x-bench-runner: ${runnerId}`);
  args.push(url);
  return new Promise((resolve, reject) => {
    const child = lab.spawnIn(lab.plane, 'wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.once('error', reject);
    child.once('exit', (code) => {
      const line = /WRKJSON (\{.*\})/.exec(out);
      if (code !== 0 || !line?.[1]) reject(new Error(`wrk failed (${code}): ${out.slice(0, 500)}`));
      else resolve(JSON.parse(line[1]) as WrkResult);
    });
  });
}

// ---------------------------------------------------------------- figures

/** Per-run samples of one figure for one column (a configuration or the no-tunnel path). */
type Samples = Record<string, number[]>;

interface RttResult {
  rttMs: number;
  link: LinkKind;
  ping: PingStats;
  /** The delay line's counters, and its CPU over the bulk transfers (`bulkSeconds` long). */
  delayLine?: DelayLineStats & { cpuSeconds?: number; bulkSeconds?: number };
  /** net.ipv4.tcp_wmem / tcp_rmem in the namespaces: the largest send and receive buffers bound a connection to about max/RTT. */
  tcpWmem: string;
  tcpRmem: string;
  /** figure name -> column key -> runs. */
  figures: Record<string, Samples>;
  /** Columns that could not run, with why. */
  missing: Record<string, string>;
  seconds: number;
}

function push(figs: Record<string, Samples>, name: string, column: string, value: number): void {
  const f = (figs[name] ??= {});
  (f[column] ??= []).push(value);
}

function fmt(n: number | undefined, digits?: number): string {
  if (n === undefined || !Number.isFinite(n)) return '-';
  if (digits !== undefined) return n.toFixed(digits);
  const a = Math.abs(n);
  return a >= 1000 ? n.toFixed(0) : a >= 100 ? n.toFixed(1) : a >= 10 ? n.toFixed(2) : n.toFixed(3);
}

const COLUMNS = [...VARIANTS.map((v) => ({ key: v.key, label: `agent, ${v.label}` })), { key: 'direct', label: 'no tunnel' }];

/** The largest of the three sizes of a tcp_wmem / tcp_rmem line. */
function maxBuf(line: string): number {
  return Number(line.trim().split(/\s+/).pop());
}

function cell(r: RttResult, name: string, column: string, show: (v: number) => string): string {
  const runs = r.figures[name]?.[column];
  if (!runs || runs.length === 0) {
    const why = r.missing[column];
    return why ? `n/a: ${why}` : '-';
  }
  const m = median(runs);
  return runs.length > 1 ? `${show(m)} [${fmt(Math.min(...runs))}-${fmt(Math.max(...runs))}]` : show(m);
}

function printRtt(r: RttResult, o: Options): string {
  const inRtt = (v: number): string => (r.rttMs > 0 ? `${(v / r.rttMs).toFixed(2)} RTT (${fmt(v)} ms)` : `${fmt(v)} ms`);
  const rows: [string, string, (v: number) => string][] = [];
  for (const c of o.concurrency) {
    rows.push([`c=${c} requests/s`, `rps c=${c}`, (v) => fmt(v, 0)]);
    rows.push([`c=${c} p50 per request`, `p50 c=${c}`, inRtt]);
    rows.push([`c=${c} p99 per request`, `p99 c=${c}`, inRtt]);
    rows.push([`c=${c} agent CPU per tunnel (ms)`, `cpu c=${c}`, (v) => fmt(v, 3)]);
  }
  rows.push(['agent CPU idle, before any load (ms/s)', 'idle cpu', (v) => fmt(v, 2)]);
  const bulkMiB = o.bulkBytes / MiB;
  rows.push([`download ${bulkMiB} MiB (MiB/s)`, 'bulk down', (v) => fmt(v, 1)]);
  rows.push(['download agent CPU-s per GiB', 'bulk down cpu', (v) => fmt(v, 2)]);
  rows.push([`upload ${bulkMiB} MiB (MiB/s)`, 'bulk up', (v) => fmt(v, 1)]);
  rows.push(['upload agent CPU-s per GiB', 'bulk up cpu', (v) => fmt(v, 2)]);
  const head = ['figure', ...COLUMNS.map((c) => c.label)];
  const body = rows.map(([label, name, show]) => [label, ...COLUMNS.map((c) => cell(r, name, c.key, show))]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  const p = r.ping;
  const lines = [
    '',
    `RTT ${r.rttMs} ms, TLS on (${r.link}); ping ${p.received}/${p.sent}: min/avg/max ${p.minMs}/${p.avgMs}/${p.maxMs} ms` +
      (r.rttMs > 0 ? `; p50/p99 in RTTs of ${r.rttMs} ms` : '') +
      `; tcp_wmem ${r.tcpWmem}, tcp_rmem ${r.tcpRmem}` +
      (r.rttMs > 0
        ? ` (a connection carries at most about its largest send buffer per RTT: ${fmt(maxBuf(r.tcpWmem) / MiB / (r.rttMs / 1000), 0)} MiB/s here)`
        : ''),
    line(head),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...body.map(line),
  ];
  const dl = r.delayLine;
  if (dl) {
    lines.push(
      `delay line: ${dl.forwarded} packets (${(dl.bytes / MiB).toFixed(0)} MiB) forwarded, ${dl.dropped} dropped, most queued ${(dl.maxQueueBytes / MiB).toFixed(1)} MiB, ` +
        `latest packet ${dl.lateMsMax} ms behind time${dl.realtime ? ' (real-time priority)' : ''}` +
        (dl.cpuSeconds !== undefined && dl.bulkSeconds
          ? `; during the bulk transfers it used ${dl.cpuSeconds.toFixed(1)} CPU-s in ${dl.bulkSeconds.toFixed(0)} s (${((dl.cpuSeconds / dl.bulkSeconds) * 100).toFixed(0)}% of one core)`
          : ''),
    );
  }
  for (const dir of ['down', 'up']) {
    const direct = median(r.figures[`bulk ${dir}`]?.direct ?? []);
    const tunnel = median(r.figures[`bulk ${dir}`]?.default ?? []);
    if (Number.isFinite(direct) && Number.isFinite(tunnel)) {
      lines.push(
        `bulk ${dir}: the link alone carried ${fmt(direct, 1)} MiB/s, the tunnel ${fmt(tunnel, 1)} MiB/s (${((tunnel / direct) * 100).toFixed(0)}%)` +
          (tunnel < direct * 0.9 ? ': the link is not what limits the tunnel' : ': the tunnel is as fast as the link alone, which may bound it'),
      );
    }
  }
  const text = lines.join('\n');
  console.log(text);
  return text;
}

// ---------------------------------------------------------------- one RTT

async function runAtRtt(o: Options, rttMs: number, agentFlags: string, tmp: string, script: string, say: (s: string) => void): Promise<RttResult> {
  const t0 = Date.now();
  const lab = await WanLab.create(rttMs, o.link);
  const missing: Record<string, string> = {};
  const figs: Record<string, Samples> = {};
  let delayLine: RttResult['delayLine'];
  let ping: PingStats | undefined;
  let tcpWmem: string | undefined;
  let tcpRmem: string | undefined;
  try {
    ping = lab.ping(10);
    tcpWmem = lab.sysctl('net/ipv4/tcp_wmem');
    tcpRmem = lab.sysctl('net/ipv4/tcp_rmem');
    say(
      `RTT ${rttMs} ms via ${lab.kind} (${lab.plane} ${PLANE_ADDR} <-> ${lab.host} ${HOST_ADDR}): ping min/avg/max ${ping.minMs}/${ping.avgMs}/${ping.maxMs} ms, ${ping.received}/${ping.sent} answered`,
    );
    if (ping.received === 0) throw new Error('no ping answered across the link');
    const pki = makePki(tmp, PLANE_ADDR);
    const token = randomBytes(24).toString('hex');
    const baseEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };
    const wolfSocket = join(tmp, `wolf-${rttMs}.sock`);
    const wolf = await serviceIn(lab, lab.host, 'wolf-process.js', { ...baseEnv, BENCH_WOLF_SOCKET: wolfSocket, BENCH_WOLF_HOST: HOST_ADDR });
    const wolfTcp = String(wolf.ready.local);
    const agents: Agent[] = [];
    const runnerOf = (v: Variant): string => `wolf-wan-${v.key}-${rttMs}`;
    const plane = await serviceIn(lab, lab.plane, 'plane-process.js', {
      ...baseEnv,
      BENCH_TOKEN: token,
      BENCH_RUNNER_ID: runnerOf(VARIANTS[0]!),
      BENCH_WOLF: wolfTcp,
      BENCH_PLANE_HOST: PLANE_ADDR,
      BENCH_TLS_KEY: pki.keyFile,
      BENCH_TLS_CERT: pki.certFile,
    });
    const apiUrl = String(plane.ready.apiUrl);
    const tunnelFront = `${String(plane.ready.tunnelFront)}${PATH}`;
    const directFront = `${String(plane.ready.directFront)}${PATH}`;
    for (const v of VARIANTS) {
      if (v.needs && !agentFlags.includes(v.needs)) {
        missing[v.key] = `agent has no ${v.needs.replace(/^--/, '')}`;
        say(`${v.label}: n/a: agent has no ${v.needs.replace(/^--/, '')}`);
        continue;
      }
      const env = {
        ...baseEnv,
        HELIX_API_URL: apiUrl,
        WOLF_ID: runnerOf(v).replace(/^wolf-/, ''),
        RUNNER_TOKEN: token,
        WOLF_LOCAL_ADDR: `unix://${wolfSocket}`,
        REVDIAL_METRICS_ADDR: '127.0.0.1:0',
      };
      const a = await startAgent(lab, v, env, pki.caFile, runnerOf(v));
      await plane.ipc.call('waitRunner', { runnerId: a.runnerId, timeoutMs: 10_000 });
      agents.push(a);
    }
    say(`plane ${apiUrl} (TLS, private CA); agents ${agents.map((a) => `${a.variant.label} pid ${a.pid}`).join(', ')}; wolf unix://${wolfSocket}`);

    // What each agent spends with no request at all (pings, timers, warm connections kept):
    // part of every per-tunnel figure, and most of it at low request rates.
    const idle0 = agents.map((a) => cpuSeconds(a.pid));
    const idleT0 = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, o.idleMs));
    const idleS = Number(process.hrtime.bigint() - idleT0) / 1e9;
    agents.forEach((a, i) => push(figs, 'idle cpu', a.variant.key, ((cpuSeconds(a.pid) - (idle0[i] ?? 0)) / idleS) * 1e3));

    // Warm-up: TLS sessions, the pool's demand estimate and, above all, V8's
    // JIT. A tunnel runs each function of the path a few times, so the
    // optimizing tiers take a couple of thousand tunnels to settle: after a
    // second at c=8 the first run's CPU per tunnel read some 30% above the
    // later ones. The agent is a daemon; the figures are for its steady state.
    const warmC = Math.max(...o.concurrency);
    await wrk(lab, script, directFront, warmC, 1);
    for (const a of agents) await wrk(lab, script, tunnelFront, warmC, o.warmupS, a.runnerId);

    for (let run = 0; run < o.runs; run++) {
      for (const c of o.concurrency) {
        for (const target of [...agents, undefined]) {
          const key = target?.variant.key ?? 'direct';
          const cpu0 = target ? cpuSeconds(target.pid) : 0;
          const r = await wrk(lab, script, target ? tunnelFront : directFront, c, o.durationS, target?.runnerId);
          const cpu = target ? cpuSeconds(target.pid) - cpu0 : 0;
          if (r.errors > 0 || r.non2xx > 0) throw new Error(`${key} c=${c}: ${r.errors} socket errors, ${r.non2xx} non-2xx of ${r.requests}`);
          const rps = r.requests / (r.durationUs / 1e6);
          push(figs, `rps c=${c}`, key, rps);
          push(figs, `p50 c=${c}`, key, r.p50Us / 1000);
          push(figs, `p99 c=${c}`, key, r.p99Us / 1000);
          push(figs, `requests c=${c}`, key, r.requests);
          if (target) push(figs, `cpu c=${c}`, key, (cpu / r.requests) * 1e3);
          say(
            `run ${run + 1}/${o.runs} c=${c} ${target ? `agent ${target.variant.label}` : 'no tunnel'}: ${rps.toFixed(0)} req/s, p50 ${(r.p50Us / 1000).toFixed(1)} ms, p99 ${(r.p99Us / 1000).toFixed(1)} ms` +
              (target ? `, agent ${((cpu / r.requests) * 1e3).toFixed(3)} ms CPU/tunnel` : ''),
          );
        }
      }
    }

    const bulkMiB = o.bulkBytes / MiB;
    const dlCpu0 = lab.delayLinePid ? cpuSeconds(lab.delayLinePid) : 0;
    const bulkT0 = Date.now();
    for (let run = 0; run < o.bulkRuns; run++) {
      for (const direction of ['down', 'up'] as const) {
        for (const target of [undefined, ...agents.filter((a) => a.variant.bulk)]) {
          const key = target?.variant.key ?? 'direct';
          const cpu0 = target ? cpuSeconds(target.pid) : 0;
          const r = await plane.ipc.call<{ ms: number; bytes: number; sha256: string; expected: string; ok: boolean }>('bulk', {
            direction,
            via: target ? 'tunnel' : 'direct',
            size: o.bulkBytes,
            seed: `wan-${rttMs}-${direction}-${run}-${key}`,
            ...(target ? { runnerId: target.runnerId } : {}),
          });
          const cpu = target ? cpuSeconds(target.pid) - cpu0 : 0;
          if (!r.ok) throw new Error(`bulk ${direction} ${key}: checksum mismatch (${r.bytes} bytes, sha256 ${r.sha256}, expected ${r.expected})`);
          const rate = r.bytes / MiB / (r.ms / 1000);
          push(figs, `bulk ${direction}`, key, rate);
          if (target) push(figs, `bulk ${direction} cpu`, key, cpu / (r.bytes / GiB));
          say(
            `bulk ${direction} ${bulkMiB} MiB ${target ? `agent ${target.variant.label}` : 'no tunnel'}: ${rate.toFixed(1)} MiB/s, sha256 ok` +
              (target ? `, agent ${(cpu / (r.bytes / GiB)).toFixed(2)} CPU-s/GiB` : ''),
          );
        }
      }
    }
    const bulkEnd = Date.now();
    const dlCpu = lab.delayLinePid ? cpuSeconds(lab.delayLinePid) - dlCpu0 : undefined;
    for (const a of agents) {
      if (a.child.exitCode !== null) throw new Error(`agent (${a.variant.label}) exited early: ${a.stderr().slice(0, 800)}`);
    }
    const stats = await lab.destroy();
    if (stats) delayLine = { ...stats, ...(dlCpu !== undefined ? { cpuSeconds: dlCpu, bulkSeconds: (bulkEnd - bulkT0) / 1000 } : {}) };
  } finally {
    await lab.destroy();
  }
  return { rttMs, link: lab.kind, ping, tcpWmem, tcpRmem, ...(delayLine ? { delayLine } : {}), figures: figs, missing, seconds: (Date.now() - t0) / 1000 };
}

// ---------------------------------------------------------------- main

/** The fewest requests any agent's run counted: what bounds the CPU figures' resolution. */
function fewest(results: RttResult[]): number {
  let n = Number.POSITIVE_INFINITY;
  for (const r of results) {
    for (const [name, columns] of Object.entries(r.figures)) {
      if (!name.startsWith('requests ')) continue;
      for (const [key, runs] of Object.entries(columns)) if (key !== 'direct') n = Math.min(n, ...runs);
    }
  }
  return n;
}

export async function runWan(argv: string[]): Promise<number> {
  const why = unavailableReason();
  if (why) {
    console.log(`bench --wan: skipped: ${why}`);
    return 0;
  }
  const o = parseArgs(argv);
  const t0 = Date.now();
  const say = (s: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${s}`);
  const stale = removeStale();
  if (stale.length > 0) say(`removed namespaces left by a killed run: ${stale.join(', ')}`);
  const onSignal = (sig: NodeJS.Signals): void => {
    destroyAllSync();
    console.error(`bench --wan: ${sig}: namespaces removed`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', destroyAllSync);

  const agentFlags = execFileSync(BIN, ['--help'], { encoding: 'utf8' });
  mkdirSync(RESULTS, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), 'revdial-wan-'));
  const script = join(tmp, 'report.lua');
  writeFileSync(script, WRK_REPORT);
  const loads = [loadAverage()];
  const results: RttResult[] = [];
  const printed: string[] = [];
  try {
    for (const rtt of o.rtts) results.push(await runAtRtt(o, rtt, agentFlags, tmp, script, say));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  loads.push(loadAverage());
  for (const r of results) printed.push(printRtt(r, o));
  const result = {
    when: new Date().toISOString(),
    mode: o.smoke ? 'wan-smoke' : 'wan',
    options: o,
    machine: { cpus: cpus().length, node: process.version, loadAverage1m: loads },
    agent: 'bin/wolf-revdial-client',
    columns: COLUMNS,
    variants: VARIANTS,
    results,
    seconds: (Date.now() - t0) / 1000,
  };
  const file = join(RESULTS, `${o.smoke ? 'wan-smoke' : 'wan'}-${result.when.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(
    `\nagent CPU per tunnel: user+sys of the agent's process (/proc/<pid>/stat, in ${(1000 / clkTck()).toFixed(0)} ms ticks) over each run / its requests, ` +
      `so a run of n requests reads to ±${(1000 / clkTck()).toFixed(0)}/n ms (fewest requests in one run: ${fewest(results)}); ` +
      `[min-max] over ${o.runs} run(s); load average (1 min) at start/end ${loads.map((l) => l.toFixed(2)).join(' / ')}`,
  );
  console.log(`written ${file} in ${result.seconds.toFixed(0)} s`);
  return 0;
}
