/**
 * The operations options (config.ts), GPU auto-detection on a fake /dev and
 * /sys, and the real executable: probes and registry wired in `main`, a port
 * in use as a startup error, deregistration on SIGTERM.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { installRegistryApi } from '../../dev/control-plane/registry-api.js';
import { Registry, type WolfInstance } from '../../dev/control-plane/registry.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { detectGpuType } from '../../src/agent/registry/gpu-detect.js';
import { configOf } from '../helpers/config.js';
import { TOKEN, agentEnv, spawnAgent, startPlane, startWolf } from '../helpers/harness.js';
import { get, sample } from '../helpers/ops.js';

test('defaults of the operations options', () => {
  const c = configOf([], {}, { dev: '/nonexistent', drmClass: '/nonexistent' });
  assert.deepEqual(c.metricsAddr, { host: '127.0.0.1', port: 9464 });
  assert.equal(c.register, false);
  assert.equal(c.advertiseAddress, 'wolf-box-1');
  assert.equal(c.gpuType, 'none');
  assert.equal(c.gpuTypeSource, 'auto');
  assert.equal(c.maxSandboxes, 10);
  assert.equal(c.heartbeatIntervalMs, 30_000);
  assert.equal(c.proxy.explicit, undefined);
});

test('flags and variables of the operations options', () => {
  const c = configOf(['--gpu-type', 'amd', '--max-sandboxes', '4'], {
    REVDIAL_METRICS_ADDR: '0.0.0.0:9100',
    REVDIAL_REGISTER: 'true',
    REVDIAL_ADVERTISE_ADDRESS: 'gpu-1.lan:47989',
    REVDIAL_HEARTBEAT_INTERVAL: '2.5',
    REVDIAL_PROXY: 'http://u:p@proxy.corp:3128',
  });
  assert.deepEqual(c.metricsAddr, { host: '0.0.0.0', port: 9100 });
  assert.equal(c.register, true);
  assert.equal(c.advertiseAddress, 'gpu-1.lan:47989');
  assert.equal(c.gpuType, 'amd');
  assert.equal(c.gpuTypeSource, 'flag');
  assert.equal(c.maxSandboxes, 4);
  assert.equal(c.heartbeatIntervalMs, 2_500);
  assert.equal(c.proxy.explicit?.host, 'proxy.corp:3128');
  assert.equal(configOf(['--metrics-addr', 'off']).metricsAddr, null);
  assert.deepEqual(configOf(['--metrics-addr', '[::1]:0']).metricsAddr, { host: '::1', port: 0 });
  // A boolean variable means what it says: "false" is off, not "set".
  assert.equal(configOf([], { REVDIAL_REGISTER: 'false' }).register, false);
  assert.equal(configOf(['--register'], { REVDIAL_REGISTER: 'false' }).register, true);
  assert.throws(() => configOf([], { REVDIAL_REGISTER: 'maybe' }), { code: ErrorCodes.CONFIG_INVALID });
  for (const bad of [
    ['--gpu-type', 'intel'],
    ['--max-sandboxes', '0'],
    ['--metrics-addr', 'nine'],
    ['--proxy', 'socks5://p:1'],
    ['--heartbeat-interval', '0'],
  ]) {
    assert.throws(() => configOf(bad), { code: 'commander.invalidArgument' }, bad.join(' '));
  }
});

test('GPU auto-detection reads device nodes only', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'revdial-gpu-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const host = (name: string, files: Record<string, string>) => {
    const dir = join(root, name);
    for (const [path, content] of Object.entries(files)) {
      mkdirSync(join(dir, path, '..'), { recursive: true });
      writeFileSync(join(dir, path), content);
    }
    mkdirSync(join(dir, 'dev'), { recursive: true });
    mkdirSync(join(dir, 'sys'), { recursive: true });
    return { dev: join(dir, 'dev'), drmClass: join(dir, 'sys') };
  };
  assert.equal(detectGpuType(host('nvidia', { 'dev/nvidia0': '', 'dev/nvidiactl': '' })), 'nvidia');
  assert.equal(detectGpuType(host('amd', { 'dev/dri/renderD128': '', 'sys/renderD128/device/vendor': '0x1002\n' })), 'amd');
  assert.equal(detectGpuType(host('intel', { 'dev/dri/renderD128': '', 'sys/renderD128/device/vendor': '0x8086\n' })), 'none');
  assert.equal(
    detectGpuType(
      host('intel-amd', {
        'dev/dri/renderD128': '',
        'sys/renderD128/device/vendor': '0x8086\n',
        'dev/dri/renderD129': '',
        'sys/renderD129/device/vendor': '0x1002\n',
      }),
    ),
    'amd',
  );
  assert.equal(detectGpuType(host('empty', {})), 'none');
  assert.equal(configOf([], {}, host('nvidia2', { 'dev/nvidia1': '' })).gpuType, 'nvidia');
});

test('the executable: a metrics port in use exits 2 with REVDIAL_OPS_LISTEN_FAILED before dialing', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const port = (busy.address() as AddressInfo).port;
  const plane = await startPlane(t);
  let upgrades = 0;
  plane.server.on('upgrade', () => upgrades++);
  const agent = spawnAgent(t, agentEnv({ HELIX_API_URL: plane.url, WOLF_ID: 'busy', RUNNER_TOKEN: TOKEN, REVDIAL_METRICS_ADDR: `127.0.0.1:${port}` }));
  const { code } = await agent.exited;
  assert.equal(code, 2);
  const fatal = agent.logs.find((l) => l.level === 'fatal');
  assert.equal(fatal?.code, ErrorCodes.OPS_LISTEN_FAILED);
  assert.ok(agent.stderr().includes(`127.0.0.1:${port}`));
  assert.ok(agent.stderr().includes('REVDIAL_METRICS_ADDR'));
  assert.equal(upgrades, 0);
});

test('the executable: probes and metrics served, registered with its fields, deregistered on SIGTERM', async (t) => {
  const plane = await startPlane(t);
  const registry = new Registry();
  installRegistryApi(plane, registry, { authorize: (token) => token === TOKEN });
  const { local } = await startWolf(t);
  const registered = once(registry, 'registered') as Promise<[WolfInstance]>;
  const agent = spawnAgent(
    t,
    agentEnv({
      HELIX_API_URL: plane.url,
      WOLF_ID: 'cli-box',
      RUNNER_TOKEN: TOKEN,
      WOLF_LOCAL_ADDR: local,
      REVDIAL_METRICS_ADDR: '127.0.0.1:0',
      REVDIAL_REGISTER: 'true',
      REVDIAL_GPU_TYPE: 'amd',
      REVDIAL_MAX_SANDBOXES: '3',
      REVDIAL_HEARTBEAT_INTERVAL: '0.2',
    }),
  );
  const serving = await agent.logs.waitFor((l) => typeof l.metricsAddr === 'string', 15_000);
  const port = Number(String(serving.metricsAddr).split(':').pop());
  await plane.waitForRunner('wolf-cli-box', 15_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  assert.equal((await get(port, '/readyz')).status, 200);

  const [instance] = await registered;
  assert.deepEqual(
    { name: instance.name, address: instance.address, gpu_type: instance.gpu_type, max_sandboxes: instance.max_sandboxes },
    { name: 'cli-box', address: 'wolf-cli-box', gpu_type: 'amd', max_sandboxes: 3 },
  );
  await once(registry, 'heartbeat');
  const metrics = (await get(port, '/metrics')).body;
  assert.equal(sample(metrics, 'revdial_control_connected'), 1);
  assert.equal(sample(metrics, 'revdial_registry_registered'), 1);

  const gone = once(registry, 'deregistered');
  agent.child.kill('SIGTERM');
  await gone;
  const { code } = await agent.exited;
  assert.equal(code, 0);
  assert.deepEqual(registry.list(), []);
  assert.ok(!agent.logs.raw.some((l) => l.includes(TOKEN)));
});
