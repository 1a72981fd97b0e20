/**
 * The multi-Wolf demo, both registry generations on one control plane.
 *
 * 2025 (`--registry wolf-instances`): the Wolf registry, health monitor and
 * least-loaded scheduler; N stand-in Wolf APIs, each behind its own agent
 * process with a different GPU type. It creates placements (session
 * containers), shows how they spread, routes a request to each through its
 * holder's RevDial tunnel, stops one agent (SIGTERM: it deregisters), kills
 * another (SIGKILL: its heartbeats stop and the monitor marks it offline) and
 * shows new placements going to the survivors.
 *
 * 2026 (`--registry sandboxes`): one more agent, as runner `hydra-<id>` in
 * front of a stand-in host socket, registers its host by connecting, beats
 * at once with its GPU and disk facts, is reached through its tunnel, and is
 * marked offline by the reaper after a SIGKILL. Exits 0 when every
 * expectation held.
 *
 *   npm run demo:multi [-- --wolves 3 --placements 20 --agent-cmd dist/wolf-revdial-client --verbose]
 *
 * Time is shortened so the failover takes seconds: agents heartbeat every
 * 0.5 s, the monitor checks every 0.5 s and calls an instance offline after
 * 3 s without a heartbeat (defaults: 60 s and 2 min); the host reaper sweeps
 * every 0.5 s and calls a host offline after 3 s (defaults: 1 and 5 min).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { type Fleet, createFleet } from './control-plane/fleet.js';
import type { WolfInstance } from './control-plane/registry.js';
import type { SandboxHost } from './control-plane/sandbox-hosts.js';
import type { Placement } from './control-plane/placements.js';
import { StandInWolf } from './stand-in-wolf.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

const { values: args } = parseArgs({
  options: {
    wolves: { type: 'string', default: '3' },
    placements: { type: 'string', default: '20' },
    'max-sandboxes': { type: 'string', default: '10' },
    'agent-cmd': { type: 'string', default: join(root, 'bin', 'wolf-revdial-client') },
    verbose: { type: 'boolean', default: false },
  },
});

const GPU_TYPES = ['nvidia', 'amd', 'none'];
const HEARTBEAT_S = 0.5;
const CHECK_MS = 500;
const OFFLINE_AFTER_MS = 3_000;
const WAIT_MS = 20_000;

const say = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};

interface Node {
  name: string;
  runnerId: string;
  gpu: string;
  wolf: StandInWolf;
  local: string;
  agent?: ChildProcess;
  exited?: Promise<number | null>;
}

/** Whether this agent build has both registry clients (`--register` and `--registry`). */
function agentRegisters(cmd: string): boolean {
  const help = spawnSync(cmd, ['--help'], { encoding: 'utf8', timeout: 15_000 });
  // spawnSync leaves stdout null when the command cannot start, which its type does not say.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
  const out = help.stdout ?? '';
  return ['--register', '--registry', '--heartbeat-interval'].every((flag) => new RegExp(`${flag}\\b`).test(out));
}

/** Resolves when `emitter` emits `event` with arguments that satisfy `pred`. */
function waitForEvent<T extends unknown[]>(emitter: EventEmitter, event: string, pred: (...a: T) => boolean, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`));
    }, WAIT_MS);
    const on = (...a: unknown[]): void => {
      if (!pred(...(a as T))) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(a as T);
    };
    emitter.on(event, on);
  });
}

/** Starts one agent process for `n` with the demo's environment plus `flags`. */
function spawnAgent(agentCmd: string, n: Node, token: string, fleet: Fleet, flags: string[]): ChildProcess {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };
  Object.assign(env, {
    HELIX_API_URL: fleet.plane.url,
    WOLF_ID: n.name,
    RUNNER_TOKEN: token,
    WOLF_LOCAL_ADDR: n.local,
    LOG_LEVEL: 'info',
    REVDIAL_METRICS_ADDR: '127.0.0.1:0',
  });
  const agent = spawn(agentCmd, flags, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  agent.stdout.setEncoding('utf8');
  agent.stdout.on('data', (text: string) => {
    if (!args.verbose) return;
    for (const line of text.split('\n').filter(Boolean)) say(`  ${n.name} | ${line}`);
  });
  return agent;
}

async function api(fleet: Fleet, token: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${fleet.plane.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, json };
}

function table(fleet: Fleet, nodes: Node[]): void {
  say('    instance  gpu     status    placements');
  for (const n of nodes) {
    const i = fleet.registry.findByName(n.name);
    const count = i ? `${i.connected_sandboxes}/${i.max_sandboxes}` : '-';
    const bar = i ? '#'.repeat(i.connected_sandboxes) : '';
    say(`    ${n.name.padEnd(8)}  ${n.gpu.padEnd(6)}  ${(i?.status ?? 'gone').padEnd(8)}  ${count.padEnd(5)}  ${bar}`);
  }
}

async function run(): Promise<boolean> {
  const wolves = Number(args.wolves);
  const total = Number(args.placements);
  const max = Number(args['max-sandboxes']);
  if (!Number.isInteger(wolves) || wolves < 3) throw new Error('--wolves must be 3 or more (one is stopped, one killed, one survives)');
  if (!Number.isInteger(total) || total < 1) throw new Error('--placements must be 1 or more');
  if (!Number.isInteger(max) || max * wolves < total) throw new Error('--max-sandboxes times --wolves must hold --placements');

  const agentCmd = args['agent-cmd'];
  const dir = mkdtempSync(join(tmpdir(), 'wolf-revdial-multi-'));
  const token = randomBytes(24).toString('hex');
  const planeLog = pino(
    { level: args.verbose ? 'debug' : 'info', timestamp: false, base: null },
    {
      write: (s: string) => {
        for (const raw of s.split('\n').filter(Boolean)) {
          const line = JSON.parse(raw) as { level: number; msg: string };
          if (args.verbose || ((line.msg.startsWith('Wolf ') || line.msg.startsWith('Host ')) && line.level >= 30)) say(`  plane | ${line.msg}`);
        }
      },
    },
  );
  const fleet = createFleet({
    authorize: (t) => t === token,
    log: planeLog,
    checkIntervalMs: CHECK_MS,
    offlineAfterMs: OFFLINE_AFTER_MS,
    hostOfflineAfterMs: OFFLINE_AFTER_MS,
    hostSweepMs: CHECK_MS,
    graceMs: 1_000,
  });
  const nodes: Node[] = [];
  let hydra: Node | undefined;
  let ok = true;
  const check = (pass: boolean, what: string): void => {
    say(`${pass ? 'PASS' : 'FAIL'}  ${what}`);
    ok &&= pass;
  };

  try {
    await fleet.plane.listen(0, '127.0.0.1');
    fleet.monitor.start();
    say(`control plane  ${fleet.plane.url}  (registry, health monitor every ${CHECK_MS} ms, offline after ${OFFLINE_AFTER_MS / 1000} s)`);
    if (!agentRegisters(agentCmd))
      throw new Error(`${agentCmd} has no --register / --registry / --heartbeat-interval: build the current agent (npm run build)`);
    say(`agents         register themselves (--registry wolf-instances, heartbeat every ${HEARTBEAT_S} s)`);

    for (let k = 0; k < wolves; k++) {
      const name = `node-${k + 1}`;
      const wolf = new StandInWolf({ socketPath: join(dir, `${name}.sock`) });
      const local = await wolf.listen();
      nodes.push({ name, runnerId: `wolf-${name}`, gpu: GPU_TYPES[k % GPU_TYPES.length]!, wolf, local });
    }

    // Start every agent and wait until each is both connected and registered.
    const allRegistered = waitForEvent<[WolfInstance]>(
      fleet.registry,
      'registered',
      () => nodes.every((n) => fleet.registry.findByName(n.name)),
      'every Wolf to register',
    );
    for (const n of nodes) {
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };
      Object.assign(env, {
        HELIX_API_URL: fleet.plane.url,
        WOLF_ID: n.name,
        RUNNER_TOKEN: token,
        WOLF_LOCAL_ADDR: n.local,
        LOG_LEVEL: 'info',
        REVDIAL_METRICS_ADDR: '127.0.0.1:0',
      });
      const flags = [
        '--registry',
        'wolf-instances',
        '--gpu-type',
        n.gpu,
        '--max-sandboxes',
        String(max),
        '--heartbeat-interval',
        String(HEARTBEAT_S),
        '--advertise-address',
        n.local,
      ];
      const connected = fleet.plane.waitForRunner(n.runnerId, WAIT_MS);
      const agent = spawn(agentCmd, flags, { env, stdio: ['ignore', 'pipe', 'inherit'] });
      n.agent = agent;
      n.exited = new Promise((resolve) => agent.once('exit', (code) => resolve(code)));
      agent.stdout.setEncoding('utf8');
      agent.stdout.on('data', (text: string) => {
        if (!args.verbose) return;
        for (const line of text.split('\n').filter(Boolean)) say(`  ${n.name} | ${line}`);
      });
      await connected;
      say(`${n.name.padEnd(13)}  ${n.runnerId} connected (pid ${agent.pid}), GPU ${n.gpu}, Wolf API ${n.local}`);
    }
    if (nodes.some((n) => !fleet.registry.findByName(n.name))) await allRegistered;
    else allRegistered.catch(() => undefined);
    const listed = await api(fleet, token, 'GET', '/api/v1/wolf-instances');
    check(
      listed.status === 200 && Array.isArray(listed.json) && listed.json.length === wolves && listed.json.every((i: WolfInstance) => i.status === 'online'),
      `GET /api/v1/wolf-instances: ${wolves} instances, all online`,
    );

    // 0. A 2026 host beside them: registered by its control connection, first beat at once.
    say(`\n== a 2026 host: --registry sandboxes, runner hydra-host-1 in front of its sandbox socket`);
    const hostWolf = new StandInWolf({ socketPath: join(dir, 'hydra.sock') });
    hydra = { name: 'host-1', runnerId: 'hydra-host-1', gpu: 'detected', wolf: hostWolf, local: await hostWolf.listen() };
    const firstBeat = waitForEvent<[SandboxHost]>(fleet.hosts, 'heartbeat', (h) => h.id === 'host-1', 'the first heartbeat of host-1');
    hydra.agent = spawnAgent(agentCmd, hydra, token, fleet, ['--registry', 'sandboxes', '--heartbeat-interval', String(HEARTBEAT_S)]);
    const hydraAgent = hydra.agent;
    hydra.exited = new Promise((resolve) => hydraAgent.once('exit', (code) => resolve(code)));
    const [beat] = await firstBeat;
    check(
      beat.status === 'online' && beat.last_seen !== null && beat.disk_usage.length === 2 && beat.render_node !== '',
      `host-1 registered by its control connection, then its first heartbeat: gpu_vendor ${beat.gpu_vendor || '""'}, render_node ${beat.render_node}, disks ${beat.disk_usage.map((d) => `${d.mount_point} ${d.used_percent.toFixed(0)}% ${d.alert_level}`).join(', ')}`,
    );
    const hostList = await api(fleet, token, 'GET', '/api/v1/sandboxes');
    check(
      hostList.status === 200 && Array.isArray(hostList.json) && (hostList.json as SandboxHost[]).map((h) => h.id).join() === 'host-1',
      'GET /api/v1/sandboxes lists the host, and only it (the Wolf instances are the 2025 registry)',
    );
    const viaHost = await fleet.plane.request(hydra.runnerId, { path: '/api/v1/system/health' });
    viaHost.resume();
    check(viaHost.statusCode === 200, `a request to hydra-host-1 goes through its tunnel to the host socket: ${viaHost.statusCode}`);

    // 1. Spread.
    say(`\n== ${total} placements, POST /api/v1/placements`);
    const made: Placement[] = [];
    for (let k = 0; k < total; k++) {
      const r = await api(fleet, token, 'POST', '/api/v1/placements', {});
      if (r.status !== 201) throw new Error(`POST /api/v1/placements -> ${r.status} ${JSON.stringify(r.json)}`);
      made.push(r.json as Placement);
    }
    table(fleet, nodes);
    const counts = nodes.map((n) => fleet.registry.findByName(n.name)?.connected_sandboxes ?? -1);
    check(Math.max(...counts) - Math.min(...counts) <= 1, `even spread: ${counts.join(' / ')} (no Wolf more than one above another)`);

    // 2. Routing: every placement's request reaches its own holder's Wolf.
    const before = nodes.map((n) => n.wolf.requests);
    let healthy = 0;
    for (const s of made) {
      const r = await api(fleet, token, 'GET', `/api/v1/placements/${s.id}/proxy/api/v1/system/health`);
      if (r.status === 200 && (r.json as { status?: string }).status === 'ok') healthy++;
    }
    const served = nodes.map((n, k) => n.wolf.requests - before[k]!);
    const held = nodes.map((n) => made.filter((s) => s.instance_name === n.name).length);
    check(
      healthy === total && served.every((v, k) => v === held[k]),
      `routing: ${healthy}/${total} GET /api/v1/placements/{id}/proxy/api/v1/system/health answered 200; each Wolf served exactly its own (${served.join(' / ')})`,
    );

    // 3. GPU filter.
    const amd = nodes.find((n) => n.gpu === 'amd')!;
    const gpuPick = await api(fleet, token, 'POST', '/api/v1/placements', { gpu_type: 'amd' });
    check(
      gpuPick.status === 201 && (gpuPick.json as Placement).instance_name === amd.name,
      `{"gpu_type":"amd"} placed on ${(gpuPick.json as Placement).instance_name} (the amd Wolf)`,
    );
    if (gpuPick.status === 201) made.push(gpuPick.json as Placement);
    const tpu = await api(fleet, token, 'POST', '/api/v1/placements', { gpu_type: 'tpu' });
    check(
      tpu.status === 503 && (tpu.json as { code?: string }).code === 'REVDIAL_NO_INSTANCE_AVAILABLE',
      `{"gpu_type":"tpu"} -> ${tpu.status} ${(tpu.json as { code?: string }).code}: ${(tpu.json as { error?: string }).error}`,
    );

    // 4. SIGTERM: the agent drains and deregisters.
    const stopped = nodes[0]!;
    say(`\n== SIGTERM ${stopped.name} (pid ${stopped.agent?.pid})`);
    const gone = waitForEvent<[WolfInstance]>(fleet.registry, 'deregistered', (i) => i.name === stopped.name, `${stopped.name} to deregister`);
    stopped.agent?.kill('SIGTERM');
    const code = await stopped.exited;
    await gone;
    check(code === 0 && !fleet.registry.findByName(stopped.name), `${stopped.name} exited with code ${code} and is no longer registered`);

    // 5. SIGKILL: the tunnel drops at once (degraded), heartbeats stop (offline).
    const killed = nodes[1]!;
    say(`\n== SIGKILL ${killed.name} (pid ${killed.agent?.pid})`);
    const killedId = fleet.registry.findByName(killed.name)?.id;
    const t0 = performance.now();
    const degraded = waitForEvent<[WolfInstance]>(
      fleet.registry,
      'status',
      (i) => i.name === killed.name && i.status === 'degraded',
      `${killed.name} degraded`,
    );
    const offline = waitForEvent<[WolfInstance]>(fleet.registry, 'status', (i) => i.name === killed.name && i.status === 'offline', `${killed.name} offline`);
    killed.agent?.kill('SIGKILL');
    await killed.exited;
    await degraded;
    const tDegraded = performance.now() - t0;
    await offline;
    const tOffline = performance.now() - t0;
    check(
      fleet.registry.get(killedId ?? '')?.status === 'offline',
      `${killed.name}: degraded ${(tDegraded / 1000).toFixed(1)} s after the kill (tunnel gone), offline after ${(tOffline / 1000).toFixed(1)} s (last heartbeat older than ${OFFLINE_AFTER_MS / 1000} s)`,
    );

    // 6. New placements go to the survivors only, until they are full.
    const survivors = nodes.slice(2);
    const room = survivors.reduce((sum, n) => {
      const i = fleet.registry.findByName(n.name);
      return sum + (i ? i.max_sandboxes - i.connected_sandboxes : 0);
    }, 0);
    say(`\n== new placements after the failures, until the survivors are full (${room} free slots)`);
    const fresh: Placement[] = [];
    let refusal: { status: number; json: unknown } | undefined;
    for (let k = 0; k <= room; k++) {
      const r = await api(fleet, token, 'POST', '/api/v1/placements', {});
      if (r.status !== 201) {
        refusal = r;
        break;
      }
      fresh.push(r.json as Placement);
    }
    made.push(...fresh);
    table(fleet, nodes);
    check(
      fresh.length === room && room > 0 && fresh.every((s) => survivors.some((n) => n.name === s.instance_name)),
      `${fresh.length} placed, all on ${survivors.map((n) => n.name).join(', ')}: ${fresh.map((s) => s.instance_name).join(', ')}`,
    );
    check(
      refusal?.status === 503 && (refusal.json as { code?: string }).code === 'REVDIAL_NO_INSTANCE_AVAILABLE',
      `the next one -> ${refusal?.status} ${(refusal?.json as { code?: string } | undefined)?.code}: ${(refusal?.json as { error?: string } | undefined)?.error}`,
    );
    const onSurvivor = fresh[0]!;
    const ping = await api(fleet, token, 'GET', `/api/v1/placements/${onSurvivor.id}/proxy/api/v1/system/health`);
    check(ping.status === 200, `a new placement on ${onSurvivor.instance_name} answers through its tunnel: ${ping.status}`);
    const orphan = made.find((s) => s.instance_name === killed.name)!;
    const dead = await api(fleet, token, 'GET', `/api/v1/placements/${orphan.id}/proxy/api/v1/system/health`);
    check(
      dead.status === 502 && (dead.json as { code?: string }).code === 'REVDIAL_PLACEMENT_UNREACHABLE',
      `a placement held by the killed ${killed.name} -> ${dead.status} ${(dead.json as { code?: string }).code}`,
    );

    // 7. Destroy everything: every count back to zero.
    say(`\n== DELETE every placement`);
    let deleted = 0;
    for (const s of made) if ((await api(fleet, token, 'DELETE', `/api/v1/placements/${s.id}`)).status === 200) deleted++;
    table(fleet, nodes);
    const left = fleet.registry.list().map((i) => i.connected_sandboxes);
    check(
      deleted === made.length && left.every((c) => c === 0) && fleet.placements.list().length === 0,
      `${deleted}/${made.length} deleted, every count back to 0`,
    );

    for (const n of survivors) {
      n.agent?.kill('SIGTERM');
      const c = await n.exited;
      check(c === 0, `${n.name} stopped with SIGTERM, exit code ${c}`);
    }

    // 8. The 2026 host killed: no more heartbeats, the reaper marks it offline.
    say(`\n== SIGKILL hydra-host-1 (pid ${hydra.agent.pid})`);
    const t1 = performance.now();
    const reaped = waitForEvent<[SandboxHost]>(fleet.hosts, 'status', (h) => h.id === 'host-1' && h.status === 'offline', 'host-1 offline');
    hydra.agent.kill('SIGKILL');
    await hydra.exited;
    await reaped;
    check(
      fleet.hosts.get('host-1')?.status === 'offline',
      `host-1 offline ${((performance.now() - t1) / 1000).toFixed(1)} s after the kill (no heartbeat for ${OFFLINE_AFTER_MS / 1000} s), still listed`,
    );
  } catch (err) {
    check(false, `demo failed: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    for (const n of hydra ? [...nodes, hydra] : nodes) {
      if (n.agent?.exitCode === null && n.agent.signalCode === null) n.agent.kill('SIGKILL');
    }
    await fleet.close();
    for (const n of hydra ? [...nodes, hydra] : nodes) await n.wolf.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return ok;
}

run().then(
  (ok) => {
    say(
      ok
        ? '\nMulti-Wolf demo passed: even spread, routing through each tunnel, failover to the survivor; a 2026 host registered, beat and was reaped.'
        : '\nMulti-Wolf demo FAILED.',
    );
    process.exitCode = ok ? 0 : 1;
  },
  (err: unknown) => {
    say(`multi-demo: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 2;
  },
);
