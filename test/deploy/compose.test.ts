/**
 * docker-compose.example.yaml: Wolf and the agent share the socket directory, the
 * token comes from a file (a compose secret), the agent's health check asks
 * /healthz, and compose waits longer than the agent drains. No engine here, so
 * the file is read, not run.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
/** The agent's default --grace-period, in seconds. */
const DEFAULT_GRACE_PERIOD_S = 30;

interface Service {
  image?: string;
  build?: unknown;
  environment?: Record<string, string>;
  volumes?: string[];
  secrets?: string[];
  user?: string;
  read_only?: boolean;
  cap_drop?: string[];
  stop_grace_period?: string;
  healthcheck?: { test?: string[] };
}

interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
  secrets?: Record<string, { file?: string; environment?: string }>;
}

/** Compose durations as used here: "45s", "1m30s". */
function seconds(duration: string): number {
  const m = /^(?:(\d+)m)?(?:(\d+)s)?$/.exec(duration);
  assert.ok(m && duration !== '', `unsupported duration ${duration}`);
  return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0);
}

describe('docker-compose.example.yaml', () => {
  const compose = parse(readFileSync(join(root, 'docker-compose.example.yaml'), 'utf8')) as Compose;
  const entries = Object.entries(compose.services);
  const agentEntry = entries.find(([, s]) => s.environment?.HELIX_API_URL !== undefined);
  const wolfEntry = entries.find(([, s]) => s.environment?.WOLF_SOCKET_PATH !== undefined);
  assert.ok(agentEntry, 'a service with HELIX_API_URL (the agent)');
  assert.ok(wolfEntry, 'a service with WOLF_SOCKET_PATH (Wolf)');
  const agent = agentEntry[1];
  const wolf = wolfEntry[1];

  test('the agent dials the socket Wolf creates, through one shared named volume', () => {
    const socket = wolf.environment?.WOLF_SOCKET_PATH ?? '';
    assert.equal(agent.environment?.WOLF_LOCAL_ADDR, `unix://${socket}`);
    const volumeAt = (s: Service) => s.volumes?.map((v) => v.split(':')).find((p) => p[1] === dirname(socket))?.[0];
    const shared = volumeAt(wolf);
    assert.ok(shared, `Wolf mounts a volume at ${dirname(socket)} (the directory, not the socket file)`);
    assert.equal(volumeAt(agent), shared);
    assert.ok(compose.volumes && shared in compose.volumes, `${shared} is a named volume`);
  });

  test('the token comes from a secret file, never from the environment', () => {
    assert.equal(agent.environment?.RUNNER_TOKEN, undefined);
    const file = agent.environment?.RUNNER_TOKEN_FILE;
    const secret = agent.secrets?.[0];
    assert.ok(secret, 'the agent has a secret');
    assert.equal(file, `/run/secrets/${secret}`);
    assert.ok(compose.secrets?.[secret]?.file, `secret ${secret} is read from a file`);
  });

  test('health check asks /healthz with node (the image has no curl)', () => {
    const t = agent.healthcheck?.test ?? [];
    assert.equal(t[0], 'CMD');
    assert.equal(t[1], 'node');
    assert.ok(t.join(' ').includes('/healthz'));
    assert.ok(!/\b(pgrep|curl|wget)\b/.test(t.join(' ')));
  });

  test('the health check script works (run against loopback on a free port)', async (t) => {
    const t0 = agent.healthcheck?.test ?? [];
    assert.ok(t0.join(' ').includes('127.0.0.1:9464'), 'asks the default metrics address');
    for (const [status, expected] of [
      [200, 0],
      [503, 1],
    ] as const) {
      const server = createServer((req, res) => res.writeHead(req.url === '/healthz' ? status : 404).end());
      await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
      t.after(() => server.close());
      const port = (server.address() as AddressInfo).port;
      // Same script, pointed at this server instead of 9464 (which may be taken here).
      const argv = t0.slice(2).map((a) => a.replace('127.0.0.1:9464', `127.0.0.1:${port}`));
      const child = spawn(process.execPath, argv, { stdio: 'ignore' });
      const code = await new Promise<number | null>((done) => child.on('exit', done));
      assert.equal(code, expected, `HTTP ${status} -> exit ${expected}`);
    }
  });

  test('compose waits longer than the agent drains', () => {
    assert.ok(agent.stop_grace_period, 'stop_grace_period is set (compose defaults to 10 s)');
    assert.ok(seconds(agent.stop_grace_period) > DEFAULT_GRACE_PERIOD_S);
  });

  test('the agent runs unprivileged', () => {
    assert.ok(agent.user && !/^(0|root)(:|$)/.test(agent.user), 'non-root user');
    assert.equal(agent.read_only, true);
    assert.deepEqual(agent.cap_drop, ['ALL']);
  });
});
