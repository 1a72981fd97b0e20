/**
 * The demo: an embedded control plane, a stand-in Wolf API on a unix socket
 * and the agent as its own process, all on this machine. Sends requests through
 * the tunnel, checks every byte, stops the agent with SIGTERM and exits 0 when
 * everything held.
 *
 * The control plane serves both registry generations; `--registry` picks the
 * agent's: `sandboxes` (default, 2026: runner `hydra-demo`, the host
 * registered by its control connection and a heartbeat at once),
 * `wolf-instances` (2025: runner `wolf-demo`, registered and deregistered on
 * SIGTERM) or `off`.
 *
 *   npm run demo [-- --agent-cmd dist/wolf-revdial-client --download-mb 64 --upload-mb 16 --registry wolf-instances]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { createFleet } from './control-plane/fleet.js';
import type { WolfInstance } from './control-plane/registry.js';
import type { SandboxHost } from './control-plane/sandbox-hosts.js';
import { StandInWolf, digestOf, expectedDigest } from './stand-in-wolf.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

const { values: args } = parseArgs({
  options: {
    'agent-cmd': { type: 'string', default: join(root, 'bin', 'wolf-revdial-client') },
    'download-mb': { type: 'string', default: '64' },
    'upload-mb': { type: 'string', default: '16' },
    quiet: { type: 'boolean', default: false },
    registry: { type: 'string', default: 'sandboxes' },
  },
});

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function readAll(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function waitExit(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

/** Resolves with the first `event` of `emitter` whose first argument satisfies `pred`. */
function waitFor<T>(emitter: NodeJS.EventEmitter, event: string, pred: (value: T) => boolean, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    const on = (value: T): void => {
      if (!pred(value)) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(value);
    };
    emitter.on(event, on);
  });
}

async function run(): Promise<boolean> {
  const mode = args.registry;
  if (!['off', 'wolf-instances', 'sandboxes'].includes(mode)) throw new Error('--registry must be off, wolf-instances or sandboxes');
  const dir = mkdtempSync(join(tmpdir(), 'wolf-revdial-demo-'));
  const token = randomBytes(24).toString('hex');
  const wolfId = 'demo';
  const runnerId = mode === 'sandboxes' ? `hydra-${wolfId}` : `wolf-${wolfId}`;
  const fleet = createFleet({ authorize: (t) => t === token, log: pino({ level: 'silent' }) });
  const plane = fleet.plane;
  const wolf = new StandInWolf({ socketPath: join(dir, 'wolf.sock') });
  let agent: ChildProcess | undefined;
  let ok = true;
  const check = (pass: boolean, what: string): void => {
    say(`${pass ? 'PASS' : 'FAIL'}  ${what}`);
    ok &&= pass;
  };
  try {
    await plane.listen(0, '127.0.0.1');
    const local = await wolf.listen();
    say(`control plane  ${plane.url}  (embedded)`);
    say(`Wolf API       ${local}  (stand-in)`);

    const env: NodeJS.ProcessEnv = { ...process.env };
    // Deleting is the only way to unset an environment variable.
    // eslint-disable-next-line @typescript-eslint/no-dynamic-delete
    for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'NO_PROXY', 'no_proxy']) delete env[k];
    Object.assign(env, {
      HELIX_API_URL: plane.url,
      WOLF_ID: wolfId,
      RUNNER_TOKEN: token,
      WOLF_LOCAL_ADDR: local,
      LOG_LEVEL: 'info',
      REVDIAL_METRICS_ADDR: '127.0.0.1:0',
      REVDIAL_REGISTRY: mode,
    });
    const started = performance.now();
    const connected = plane.waitForRunner(runnerId, 15_000);
    const firstBeat = waitFor<SandboxHost>(fleet.hosts, 'heartbeat', (h) => h.id === wolfId, 15_000);
    const registered = waitFor<WolfInstance>(fleet.registry, 'registered', (i) => i.name === wolfId, 15_000);
    if (mode !== 'sandboxes') firstBeat.catch(() => undefined);
    if (mode !== 'wolf-instances') registered.catch(() => undefined);
    agent = spawn(args['agent-cmd'], [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    agent.stdout?.setEncoding('utf8');
    agent.stdout?.on('data', (text: string) => {
      if (args.quiet) return;
      for (const line of text.split('\n').filter(Boolean)) say(`  agent | ${line}`);
    });
    await connected;
    say(`agent          connected as ${runnerId} in ${(performance.now() - started).toFixed(0)} ms (pid ${agent.pid}), registry ${mode}`);
    if (mode === 'sandboxes') {
      const host = await firstBeat;
      check(
        host.status === 'online' && host.last_seen !== null,
        `2026 registry: host ${host.id} registered by the control connection, first heartbeat at once (gpu_vendor ${host.gpu_vendor || '""'}, render_node ${host.render_node}, ${host.disk_usage.length} disks)`,
      );
    } else if (mode === 'wolf-instances') {
      const instance = await registered;
      check(instance.status === 'online', `2025 registry: Wolf instance ${instance.name} registered (gpu_type ${instance.gpu_type})`);
    }

    const health = await plane.request(runnerId, { path: '/api/v1/system/health' });
    const body = JSON.parse((await readAll(health)).toString('utf8')) as { status?: string };
    check(health.statusCode === 200 && body.status === 'ok', `GET /api/v1/system/health -> ${health.statusCode} ${JSON.stringify(body)}`);

    const downloadBytes = Number(args['download-mb']) * 1024 * 1024;
    let t0 = performance.now();
    const dl = await plane.request(runnerId, { path: `/bytes?size=${downloadBytes}&seed=demo` });
    const got = await digestOf(dl);
    let secs = (performance.now() - t0) / 1000;
    check(
      got.bytes === downloadBytes && got.sha256 === expectedDigest(downloadBytes, 'demo'),
      `download ${args['download-mb']} MiB: ${got.bytes} bytes, sha256 ${got.sha256.slice(0, 16)}… matches, ${(got.bytes / 1048576 / secs).toFixed(0)} MiB/s`,
    );

    const uploadBytes = Number(args['upload-mb']) * 1024 * 1024;
    const payload = randomBytes(uploadBytes);
    const want = createHash('sha256').update(payload).digest('hex');
    t0 = performance.now();
    const up = await plane.request(runnerId, {
      method: 'POST',
      path: '/upload',
      headers: { 'content-type': 'application/octet-stream' },
      body: payload,
    });
    const answer = JSON.parse((await readAll(up)).toString('utf8')) as { bytes: number; sha256: string };
    secs = (performance.now() - t0) / 1000;
    check(
      answer.bytes === uploadBytes && answer.sha256 === want,
      `upload ${args['upload-mb']} MiB: Wolf received ${answer.bytes} bytes, sha256 matches, ${(uploadBytes / 1048576 / secs).toFixed(0)} MiB/s`,
    );

    const events = await plane.request(runnerId, { path: '/api/v1/events?keepaliveMs=100' });
    let seen = '';
    for await (const chunk of events) {
      seen += (chunk as Buffer).toString('utf8');
      if (seen.includes(':keepalive')) break;
    }
    events.destroy();
    check(seen.startsWith('data: {"event":"hello"}') && seen.includes(':keepalive'), 'GET /api/v1/events: event stream open, keep-alive received');

    agent.kill('SIGTERM');
    const code = await waitExit(agent);
    check(code === 0, `SIGTERM: agent exited with code ${code}`);
    if (mode === 'wolf-instances') check(fleet.registry.list().length === 0, '2025 registry: deregistered on SIGTERM');
    if (mode === 'sandboxes')
      check(fleet.hosts.get(wolfId) !== undefined, '2026 registry: the host stays listed after SIGTERM (no --deregister-on-exit), as production hosts do');
  } catch (err) {
    check(false, `demo failed: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    if (agent?.exitCode === null) agent.kill('SIGKILL');
    await fleet.close();
    await wolf.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return ok;
}

run().then(
  (ok) => {
    say(ok ? '\nDemo passed: every byte went through the tunnel and came back intact.' : '\nDemo FAILED.');
    process.exitCode = ok ? 0 : 1;
  },
  (err: unknown) => {
    // Cleanup itself failed (closing the stand-ins): report it instead of an unhandled rejection.
    say(`\nDemo FAILED: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
