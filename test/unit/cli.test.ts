/**
 * The executable as operators run it: configuration from the environment,
 * exit codes, the one-line error for bad configuration, signals.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mock, test } from 'node:test';
import { startupWarnings } from '../../src/agent/cli.js';
import { buildProgram, resolveConfig } from '../../src/agent/config.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { expectedDigest } from '../../dev/stand-in-wolf.js';
import { LogCapture, TOKEN, agentEnv, sha256Of, spawnAgent, startPlane, startWolf } from '../helpers/harness.js';

const BASE = { HELIX_API_URL: 'http://127.0.0.1:9', WOLF_ID: 'wolf-1', RUNNER_TOKEN: 'sekrit-token-value' };

async function runToExit(env: Record<string, string>, args: string[] = []) {
  const agent = spawnAgent(undefined, agentEnv(env), args);
  const { code } = await agent.exited;
  return { code, stderr: agent.stderr(), logs: agent.logs };
}

test('invalid configuration: exit 2, one clear line on stderr, nothing dialed', async () => {
  const cases: [Record<string, string>, string[], RegExp][] = [
    [{ WOLF_ID: 'w', RUNNER_TOKEN: 't' }, [], /HELIX_API_URL/],
    [{ HELIX_API_URL: 'http://x', RUNNER_TOKEN: 't' }, [], /WOLF_ID/],
    [{ HELIX_API_URL: 'http://x', WOLF_ID: 'w' }, [], /RUNNER_TOKEN/],
    [{ ...BASE, RUNNER_TOKEN_FILE: '/etc/hostname' }, [], /exactly one/],
    [{ ...BASE, RUNNER_TOKEN: '', RUNNER_TOKEN_FILE: '/nonexistent/token' }, [], /cannot read token file/],
    [{ ...BASE, WOLF_ID: 'bad id!' }, [], /--wolf-id/],
    [{ ...BASE, HELIX_API_URL: 'ftp://x' }, [], /scheme/],
    [{ ...BASE, HELIX_API_URL: 'https://user:pw@x' }, [], /credentials/],
    [{ ...BASE, HELIX_API_URL: 'https://api.example.com//evil.example/' }, [], /must not start with/],
    [{ ...BASE, WOLF_LOCAL_ADDR: 'nowhere' }, [], /local Wolf address/],
    [{ ...BASE, REVDIAL_MAX_TUNNELS: '0' }, [], /--max-tunnels/],
    [BASE, ['--reconnect', 'soon'], /--reconnect/],
    [BASE, ['--ping-interval', '30', '--ping-timeout', '10'], /ping-timeout/],
    [{ ...BASE, REVDIAL_INSECURE_SKIP_TLS_VERIFY: 'maybe' }, [], /not a boolean/],
    [BASE, ['--no-such-flag'], /unknown option/],
    [BASE, ['--log-level', 'loud'], /--log-level/],
  ];
  await Promise.all(
    cases.map(async ([env, args, pattern]) => {
      const { code, stderr, logs } = await runToExit(env, args);
      const label = JSON.stringify({ env, args });
      assert.equal(code, 2, label);
      const lines = stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${label}: ${stderr}`);
      assert.match(lines[0] ?? '', /^wolf-revdial-client: invalid configuration: /);
      assert.match(lines[0] ?? '', pattern, label);
      assert.equal(logs.lines.length, 0, 'no log lines: nothing started');
      assert.ok(!stderr.includes('sekrit-token-value'));
    }),
  );
});

test('--help names every option with its variable and default, and never a token', async () => {
  const agent = spawnAgent(undefined, agentEnv({ RUNNER_TOKEN: 'sekrit-token-value' }), ['--help']);
  let out = '';
  agent.child.stdout?.removeAllListeners('data');
  agent.child.stdout?.on('data', (s: string) => {
    out += s;
  });
  assert.equal((await agent.exited).code, 0);
  for (const name of [
    'HELIX_API_URL',
    'WOLF_ID',
    'RUNNER_TOKEN',
    'RUNNER_TOKEN_FILE',
    'WOLF_LOCAL_ADDR',
    'LOG_LEVEL',
    'REVDIAL_RUNNER_ID',
    'REVDIAL_RECONNECT_MAX',
    'REVDIAL_PING_INTERVAL',
    'REVDIAL_PING_TIMEOUT',
    'REVDIAL_GRACE_PERIOD',
    'REVDIAL_MAX_TUNNELS',
    'REVDIAL_CA_FILE',
    'REVDIAL_INSECURE_SKIP_TLS_VERIFY',
  ]) {
    assert.ok(out.replace(/\s+/g, ' ').includes(name), name);
  }
  for (const flag of [
    '--api-url',
    '--wolf-id',
    '--token ',
    '--token-file',
    '--runner-id',
    '--local',
    '--reconnect',
    '--ping-interval',
    '--ping-timeout',
    '--grace-period',
    '--max-tunnels',
    '--ca-file',
    '--insecure-skip-tls-verify',
    '--log-level',
  ]) {
    assert.ok(out.includes(flag), flag);
  }
  assert.match(out.replace(/\s+/g, ' '), /default: "localhost:8080"/);
  assert.ok(!out.includes('sekrit-token-value'));
  assert.match(out, /Exit codes: 0/);
});

test('configuration from the environment; a flag beats its variable; the token file is read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'revdial-cfg-'));
  const file = join(dir, 'token');
  writeFileSync(file, 'from-file\n', { mode: 0o600 });
  const saved = { ...process.env };
  try {
    Object.assign(process.env, {
      HELIX_API_URL: 'https://api.example.com/helix',
      WOLF_ID: 'gpu-node-7',
      RUNNER_TOKEN_FILE: file,
      WOLF_LOCAL_ADDR: 'unix:///var/run/wolf/wolf.sock',
      REVDIAL_RECONNECT_MAX: '2.5',
      DEBUG: 'true',
    });
    delete process.env.RUNNER_TOKEN;
    const program = buildProgram().exitOverride();
    program.parse(['--max-tunnels', '7', '--local', '127.0.0.1:47989'], { from: 'user' });
    const c = resolveConfig(program, process.env);
    assert.equal(c.apiUrl.href, 'https://api.example.com/helix');
    assert.equal(c.runnerId, 'wolf-gpu-node-7');
    assert.equal(c.token(), 'from-file');
    writeFileSync(file, 'rotated\n');
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    try {
      assert.equal(c.token(), 'from-file', 'read at most once a second');
      mock.timers.tick(1000);
      assert.equal(c.token(), 'rotated', 'a rotated token file is picked up');
    } finally {
      mock.timers.reset();
    }
    assert.deepEqual(c.local, { kind: 'tcp', host: '127.0.0.1', port: 47989 });
    assert.equal(c.reconnectMaxMs, 2500);
    assert.equal(c.maxTunnels, 7);
    assert.equal(c.logLevel, 'debug');
    assert.equal(c.insecureSkipTlsVerify, false);
  } finally {
    // Deleting is the only way to unset an environment variable.
    // eslint-disable-next-line @typescript-eslint/no-dynamic-delete
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
});

test('startup warnings: plaintext token to a remote host, TLS verification off, token on argv', () => {
  const logs = new LogCapture();
  const program = buildProgram().exitOverride();
  program.parse(['--api-url', 'http://api.example.com', '--wolf-id', 'w', '--token', 'x', '--insecure-skip-tls-verify'], { from: 'user' });
  startupWarnings(resolveConfig(program, {}), logs.log);
  const warns = logs.lines.filter((l) => l.level === 'warn').map((l) => l.msg);
  assert.equal(warns.length, 3);
  assert.ok(warns.some((m) => m.includes('unencrypted')));
  assert.ok(warns.some((m) => m.includes('TLS verification is OFF')));
  assert.ok(warns.some((m) => m.includes('process list')));
  const quiet = new LogCapture();
  const file = join(mkdtempSync(join(tmpdir(), 'revdial-cfg-')), 'token');
  writeFileSync(file, 'x\n', { mode: 0o600 });
  const p2 = buildProgram().exitOverride();
  p2.parse(['--api-url', 'http://127.0.0.1:8080', '--wolf-id', 'w', '--token-file', file], { from: 'user' });
  startupWarnings(resolveConfig(p2, {}), quiet.log);
  assert.equal(quiet.lines.length, 0, 'loopback over http needs no warning');
});

test('resolveConfig errors carry REVDIAL_CONFIG_INVALID', () => {
  const program = buildProgram().exitOverride();
  program.parse(['--api-url', 'http://127.0.0.1:1'], { from: 'user' });
  assert.throws(() => resolveConfig(program, {}), { code: ErrorCodes.CONFIG_INVALID });
});

test('the executable: connects, serves, drains on SIGTERM (exit 0); a second signal exits at once', async (t) => {
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const env = agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'cli', RUNNER_TOKEN: TOKEN, WOLF_LOCAL_ADDR: local, REVDIAL_METRICS_ADDR: 'off' });
  const agent = spawnAgent(t, env, ['--grace-period', '20']);
  await plane.waitForRunner('wolf-cli', 15_000);
  await agent.logs.waitFor((l) => l.msg.startsWith('RevDial listener ready, proxying connections to local Wolf API at '));

  // A download in flight when SIGTERM arrives completes byte-exact.
  const size = 16 * 1024 * 1024;
  const res = await plane.request('wolf-cli', { path: `/bytes?size=${size}&seed=term&rate=${8 * 1024 * 1024}` });
  const done = sha256Of(res);
  agent.child.kill('SIGTERM');
  await agent.logs.waitFor((l) => l.msg.startsWith('Received SIGTERM'));
  assert.deepEqual(await done, { bytes: size, sha256: expectedDigest(size, 'term') });
  assert.equal((await agent.exited).code, 0);
  assert.ok(agent.logs.find((l) => l.msg === 'Stopped'));
  assert.ok(
    agent.logs.raw.every((l) => !l.includes(TOKEN)),
    'token never logged',
  );

  // Second signal during a drain: exit 143 at once.
  const again = spawnAgent(t, env, ['--grace-period', '60']);
  await plane.waitForRunner('wolf-cli', 15_000);
  const stream = await plane.request('wolf-cli', { path: '/api/v1/events?keepaliveMs=50' });
  stream.resume();
  again.child.kill('SIGTERM');
  await again.logs.waitFor((l) => l.msg.startsWith('Received SIGTERM'));
  again.child.kill('SIGTERM');
  assert.equal((await again.exited).code, 143);
  stream.destroy();
});
