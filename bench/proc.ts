/**
 * What one process costs, read from /proc so each figure belongs to that
 * process alone (not the load generator's, not the control plane's).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let clockTicks: number | undefined;

/** `getconf CLK_TCK`: the unit of utime/stime in /proc/<pid>/stat. */
export function clkTck(): number {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  return clockTicks;
}

/** utime + stime of a live process, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields after its ")".
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / clkTck();
}

/** utime and stime of a live process, in seconds: how much of its CPU is the kernel's (socket syscalls). */
export function cpuSplit(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / clkTck(), sys: Number(fields[12]) / clkTck() };
}

/** Resident set size (VmRSS) in MiB. */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!m?.[1]) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/**
 * The anonymous (private) part of the RSS in MiB: heap, stacks, buffers. The
 * rest is file-backed: pages of the Node binary (code, built-in sources),
 * shared with every other Node process and reclaimable by the kernel.
 */
export function rssAnonMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(status);
  if (!m?.[1]) throw new Error(`no RssAnon for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/** 1-minute load average of the machine, to report how busy it was. */
export function loadAverage(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

/** Measures the CPU a process spends while `work` runs. */
export async function cpuDuring<T>(pid: number, work: () => Promise<T>): Promise<{ result: T; cpu: number }> {
  const before = cpuSeconds(pid);
  const result = await work();
  return { result, cpu: cpuSeconds(pid) - before };
}

export function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Spread of runs around their median, as a fraction: (max - min) / median. */
export function spread(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x));
  if (v.length < 2) return 0;
  const m = median(v);
  return m === 0 ? 0 : (Math.max(...v) - Math.min(...v)) / m;
}
