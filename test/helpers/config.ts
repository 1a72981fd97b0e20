/**
 * Parses agent flags and environment the way the executable does (config.ts),
 * without exiting: for the unit tests of settings.
 */
import { buildProgram, resolveConfig, type Config } from '../../src/agent/config.js';

export const BASE_ENV = { HELIX_API_URL: 'https://api.example.com', WOLF_ID: 'box-1', RUNNER_TOKEN: 'tok' };

export function configOf(args: string[], env: NodeJS.ProcessEnv = {}, gpuPaths?: { dev: string; drmClass: string }): Config {
  const program = buildProgram()
    .exitOverride()
    .configureOutput({ writeErr: () => undefined });
  const full = { ...BASE_ENV, ...env };
  // commander reads variables from process.env; set them for the parse only.
  const saved = { ...process.env };
  Object.assign(process.env, full);
  try {
    program.parse(args, { from: 'user' });
    return resolveConfig(program, full, gpuPaths ? { gpuPaths } : {});
  } finally {
    // Deleting is the only way to unset an environment variable.
    // eslint-disable-next-line @typescript-eslint/no-dynamic-delete
    for (const k of Object.keys(full)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}
