/** What /proc says about a process (Linux): open fds, current and peak RSS. */
import { readFileSync, readdirSync } from 'node:fs';

export function openFds(pid: number | 'self' = 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** `{rssKiB, peakRssKiB}` from /proc/<pid>/status (VmRSS, VmHWM). */
export function memory(pid: number | 'self' = 'self'): { rssKiB: number; peakRssKiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssKiB: field('VmRSS'), peakRssKiB: field('VmHWM') };
}

export function cmdline(pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
}
