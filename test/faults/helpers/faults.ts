/**
 * Small pieces the fault tests share: a seeded PRNG (so a failing storm can
 * be replayed with FAULTS_SEED), percentiles, a probe of a spawned agent, and
 * the spawn of an agent with the probe preloaded.
 */
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type SpawnOptions, type SpawnedAgent, TOKEN, agentEnv, spawnAgent } from '../../helpers/harness.js';
import { guardTokens } from './token-guard.js';

export const PROBE = fileURLToPath(new URL('./agent-probe.js', import.meta.url));

/** mulberry32: a tiny deterministic PRNG, values in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function seedFromEnv(): number {
  const fromEnv = Number(process.env.FAULTS_SEED);
  return Number.isSafeInteger(fromEnv) && fromEnv > 0 ? fromEnv : Math.floor(Math.random() * 2 ** 31) + 1;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export interface ProbeReport {
  fds: number;
  resources: Record<string, number>;
  processListeners: number;
  abortListeners: number;
  liveSignals: number;
  heapUsed: number;
}

/** The real executable, with the probe preloaded and its output guarded for the token. */
export function spawnProbedAgent(
  t: TestContext,
  env: Record<string, string>,
  name = 'spawned agent',
  options: SpawnOptions = {},
): SpawnedAgent & { probe: (timeoutMs?: number) => Promise<ProbeReport> } {
  const spawned = spawnAgent(
    t,
    agentEnv({ NODE_OPTIONS: `--import=${PROBE} --expose-gc`, RUNNER_TOKEN: TOKEN, REVDIAL_METRICS_ADDR: '127.0.0.1:0', ...env }),
    [],
    options,
  );
  guardTokens(`${name} stdout`, () => spawned.logs.raw);
  guardTokens(`${name} stderr`, () => spawned.stderr());
  const waiting: ((r: ProbeReport) => void)[] = [];
  let buffered = '';
  spawned.child.stderr?.on('data', (text: string) => {
    buffered += text;
    for (let nl = buffered.indexOf('\n'); nl !== -1; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.startsWith('PROBE ')) waiting.shift()?.(JSON.parse(line.slice(6)) as ProbeReport);
    }
  });
  const probe = (timeoutMs = 5_000): Promise<ProbeReport> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('agent did not answer the probe')), timeoutMs);
      waiting.push((r) => {
        clearTimeout(timer);
        resolve(r);
      });
      spawned.child.kill('SIGUSR2');
    });
  return { ...spawned, probe };
}
