/**
 * Preloaded into a spawned agent (`NODE_OPTIONS=--import=<this file>`): keeps
 * every module the process resolves, and on SIGUSR2 writes one line to
 * stderr, `MODULES {"resolved": [...urls], "builtins": [...] | null}`, the
 * second being Node's own list of the built-in modules it has loaded, internal
 * ones included (`process.moduleLoadList`: undocumented, hence the null if a
 * Node release drops it). test/startup-footprint.test.ts reads it to check
 * what an idle agent has loaded.
 */
import { registerHooks } from 'node:module';

const resolved = new Set<string>();
registerHooks({
  resolve(specifier, context, nextResolve) {
    const result = nextResolve(specifier, context);
    resolved.add(result.url);
    return result;
  },
});

process.on('SIGUSR2', () => {
  const list = (process as unknown as { moduleLoadList?: unknown }).moduleLoadList;
  const report = { resolved: [...resolved], builtins: Array.isArray(list) ? list : null };
  process.stderr.write(`MODULES ${JSON.stringify(report)}\n`);
});
