/**
 * Renders every kustomization in k8s/ (the default, the base and each overlay)
 * with `kubectl kustomize`, as `kubectl apply -k` would, and checks each
 * object the way an API server would, without a cluster:
 *
 * 1. the OpenAPI schema of the Kubernetes API (kubernetes-models' compiled
 *    validators: types, required fields, formats);
 * 2. no unknown fields. Those validators let extra keys through, while a real API
 *    server with strict field validation (kubectl's default) rejects a typo such as
 *    `readinessProbee`. The TypeScript compiler's excess-property check on the same
 *    package's types catches them, so each manifest is type-checked as an object
 *    literal;
 * 3. the deployment rules (socket sharing or a loopback TCP address, token file,
 *    probes, scrape annotations, ...), each on the renderings it applies to.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const k8sDir = join(root, 'k8s');

/** The agent's default --grace-period, in seconds (src/config.ts). */
const DEFAULT_GRACE_PERIOD_S = 30;
const HEALTH_PORT = 9464;

interface Manifest {
  file: string;
  index: number;
  doc: Record<string, unknown>;
}

/** Kinds the manifests may use: the runtime validator and the type to check against. */
const KINDS: Record<string, { validate: (doc: Record<string, unknown>) => void; module: string; type: string }> = {
  'v1/Namespace': {
    validate: (doc) => new Namespace(doc).validate(),
    module: 'kubernetes-models/v1/Namespace',
    type: 'INamespace',
  },
  'v1/ConfigMap': {
    validate: (doc) => new ConfigMap(doc).validate(),
    module: 'kubernetes-models/v1/ConfigMap',
    type: 'IConfigMap',
  },
  'apps/v1/DaemonSet': {
    validate: (doc) => new DaemonSet(doc).validate(),
    module: 'kubernetes-models/apps/v1/DaemonSet',
    type: 'IDaemonSet',
  },
};

const KUBECTL = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;
const SKIP = KUBECTL ? false : 'kubectl is not installed (it renders the kustomizations: apt-get install -y kubectl; .ci/run installs it)';

/** Every directory under k8s/ with a kustomization.yaml, relative to the repository: k8s, k8s/base, k8s/overlays/... */
function kustomizations(): string[] {
  const dirs = [
    '',
    ...readdirSync(k8sDir, { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('kustomization.yaml'))
      .map((f) => dirname(f))
      .filter((d) => d !== '.'),
  ];
  return [...new Set(dirs)]
    .filter((d) => existsSync(join(k8sDir, d, 'kustomization.yaml')))
    .map((d) => (d === '' ? 'k8s' : `k8s/${d}`))
    .sort();
}

/** `kubectl kustomize DIR`, parsed into objects. */
function render(target: string): Manifest[] {
  const text = execFileSync('kubectl', ['kustomize', join(root, target)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Manifest[] = [];
  parseAllDocuments(text).forEach((d, index) => {
    assert.deepEqual(
      d.errors.map((e) => e.message),
      [],
      `${target} document ${index}: YAML errors`,
    );
    const doc: unknown = d.toJS();
    if (doc === null) return;
    assert.ok(typeof doc === 'object' && !Array.isArray(doc), `${target} document ${index} is not a mapping`);
    out.push({ file: target, index, doc: doc as Record<string, unknown> });
  });
  return out;
}

function kindKey(doc: Record<string, unknown>): string {
  return `${String(doc.apiVersion)}/${String(doc.kind)}`;
}

/**
 * Type-checks object literals against kubernetes-models' interfaces in one
 * in-memory program. Returns the diagnostics per virtual file name.
 */
function typeCheck(sources: Map<string, string>): Map<string, string[]> {
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2023,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const virtual = new Map([...sources].map(([name, text]) => [join(root, 'test', name), text]));
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
    const text = virtual.get(fileName);
    if (text !== undefined) return ts.createSourceFile(fileName, text, languageVersion, true);
    return getSourceFile(fileName, languageVersion, onError, shouldCreate);
  };
  host.fileExists = (fileName) => virtual.has(fileName) || fileExists(fileName);
  host.readFile = (fileName) => virtual.get(fileName) ?? readFile(fileName);
  const program = ts.createProgram([...virtual.keys()], options, host);
  const result = new Map<string, string[]>();
  for (const [fileName] of virtual) {
    const sf = program.getSourceFile(fileName);
    assert.ok(sf, `virtual file ${fileName} missing from the program`);
    const diags = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
    result.set(
      fileName.slice(join(root, 'test').length + 1),
      diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')),
    );
  }
  return result;
}

function literalModule(manifests: { doc: Record<string, unknown> }[]): string {
  const lines: string[] = [];
  const imported = new Set<string>();
  manifests.forEach(({ doc }, i) => {
    const kind = KINDS[kindKey(doc)];
    assert.ok(kind, `no schema for ${kindKey(doc)}`);
    if (!imported.has(kind.type)) {
      lines.push(`import type { ${kind.type} } from '${kind.module}';`);
      imported.add(kind.type);
    }
    lines.push(`export const m${i}: ${kind.type} = ${JSON.stringify(doc, null, 2)};`);
  });
  return lines.join('\n') + '\n';
}

function daemonSet(manifests: Manifest[]): IDaemonSet {
  const found = manifests.filter((m) => kindKey(m.doc) === 'apps/v1/DaemonSet');
  assert.equal(found.length, 1, 'exactly one DaemonSet');
  return found[0]!.doc as unknown as IDaemonSet;
}

function envValue(c: IContainer, name: string): string | undefined {
  return c.env?.find((e) => e.name === name)?.value;
}

/** The sidecar is the container that runs the agent: the one given HELIX_API_URL. */
function agentContainer(ds: IDaemonSet): IContainer {
  const agents = ds.spec?.template.spec?.containers.filter((c) => c.env?.some((e) => e.name === 'HELIX_API_URL')) ?? [];
  assert.equal(agents.length, 1, 'exactly one container must set HELIX_API_URL (the agent)');
  return agents[0]!;
}

/** Parses a --grace-period value as the agent does: seconds, decimals allowed. */
function graceSeconds(agent: IContainer): number {
  const set = envValue(agent, 'REVDIAL_GRACE_PERIOD');
  const fromArgs = agent.args?.findIndex((a) => a === '--grace-period');
  if (fromArgs !== undefined && fromArgs >= 0) return Number(agent.args?.[fromArgs + 1]);
  return set === undefined ? DEFAULT_GRACE_PERIOD_S : Number(set);
}

function portNumber(c: IContainer, port: number | string): number | undefined {
  if (typeof port === 'number') return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

/**
 * What each kustomization must render: how the agent reaches Wolf's API
 * (`none`: left to an overlay) and whether the pod carries scrape annotations.
 * A new overlay must be added here to be checked.
 */
const EXPECT: Record<string, { wolfApi: 'none' | 'unix' | 'tcp'; scraped: boolean }> = {
  k8s: { wolfApi: 'unix', scraped: false },
  'k8s/base': { wolfApi: 'none', scraped: false },
  'k8s/overlays/unix-socket': { wolfApi: 'unix', scraped: false },
  'k8s/overlays/tcp': { wolfApi: 'tcp', scraped: false },
  'k8s/overlays/prometheus': { wolfApi: 'unix', scraped: true },
};

describe('k8s kustomizations', { skip: SKIP }, () => {
  const targets = KUBECTL ? kustomizations() : [];
  const rendered = new Map(targets.map((target) => [target, render(target)]));

  test('the kustomizations are the base and the overlays expected, each rendering objects of kinds we check', () => {
    assert.deepEqual(targets, Object.keys(EXPECT).sort());
    for (const [target, manifests] of rendered) {
      assert.ok(manifests.length > 0, `${target} renders nothing`);
      for (const m of manifests) {
        assert.ok(KINDS[kindKey(m.doc)], `${target}#${m.index}: ${kindKey(m.doc)} has no schema check here; add it to KINDS`);
      }
    }
  });

  test('every rendered object validates against the Kubernetes API schema', () => {
    for (const [target, manifests] of rendered) {
      for (const m of manifests) {
        const kind = KINDS[kindKey(m.doc)];
        assert.ok(kind);
        assert.doesNotThrow(() => kind.validate(m.doc), `${target}#${m.index} (${kindKey(m.doc)})`);
      }
    }
  });

  test('the schema validator rejects a wrongly typed field (the check can fail)', () => {
    const ds = structuredClone(daemonSet(rendered.get('k8s')!));
    (ds.spec as { template: { spec: { terminationGracePeriodSeconds: unknown } } }).template.spec.terminationGracePeriodSeconds = '45s';
    assert.throws(() => new DaemonSet(ds).validate(), /terminationGracePeriodSeconds/);
  });

  test('no rendered object has a field the Kubernetes API does not know (strict field validation)', () => {
    const typo = structuredClone(daemonSet(rendered.get('k8s')!));
    const agent = agentContainer(typo) as IContainer & Record<string, unknown>;
    agent.readinessProbee = agent.readinessProbe;
    const sources = new Map([...rendered].map(([target, manifests]) => [`${target.replace(/\//g, '-')}.virtual.ts`, literalModule(manifests)]));
    sources.set('k8s-typo.virtual.ts', literalModule([{ doc: typo as unknown as Record<string, unknown> }]));
    const diags = typeCheck(sources);
    for (const target of rendered.keys()) {
      assert.deepEqual(diags.get(`${target.replace(/\//g, '-')}.virtual.ts`), [], `${target} renders fields the API does not define`);
    }
    // The same check on a copy with a misspelt field must complain about it.
    const typoDiags = diags.get('k8s-typo.virtual.ts') ?? [];
    assert.ok(
      typoDiags.some((d) => d.includes('readinessProbee')),
      `typo not caught: ${typoDiags.join('; ')}`,
    );
  });

  for (const [target, expected] of Object.entries(EXPECT)) {
    describe(target, () => {
      const manifests = (): Manifest[] => {
        const m = rendered.get(target);
        assert.ok(m, `${target} was not rendered`);
        return m;
      };

      if (expected.wolfApi === 'unix') {
        test('Wolf and the agent share the socket directory through an emptyDir', () => {
          const ds = daemonSet(manifests());
          const pod = ds.spec?.template.spec;
          assert.ok(pod);
          const agent = agentContainer(ds);
          const wolf = pod.containers.find((c) => c !== agent && c.env?.some((e) => e.name === 'WOLF_SOCKET_PATH'));
          assert.ok(wolf, 'a Wolf container with WOLF_SOCKET_PATH');
          const socketPath = envValue(wolf, 'WOLF_SOCKET_PATH');
          // The explicit check narrows socketPath to a string for the lines below; `?.` would not.
          // eslint-disable-next-line @typescript-eslint/prefer-optional-chain
          assert.ok(socketPath !== undefined && socketPath.startsWith('/'), 'WOLF_SOCKET_PATH is absolute');
          assert.equal(envValue(agent, 'WOLF_LOCAL_ADDR'), `unix://${socketPath}`, 'the agent dials the socket Wolf creates');
          const dir = dirname(socketPath);
          const mountOf = (c: IContainer) => c.volumeMounts?.find((v) => v.mountPath === dir)?.name;
          const volume = mountOf(wolf);
          assert.ok(volume, `Wolf mounts ${dir}`);
          assert.equal(mountOf(agent), volume, `the agent mounts the same volume at ${dir}`);
          assert.ok(pod.volumes?.find((v) => v.name === volume)?.emptyDir, `${volume} is an emptyDir`);
        });
      } else if (expected.wolfApi === 'tcp') {
        test("the agent dials Wolf's API on a loopback TCP port, with no socket volume", () => {
          const ds = daemonSet(manifests());
          const agent = agentContainer(ds);
          const addr = envValue(agent, 'WOLF_LOCAL_ADDR') ?? '';
          assert.match(addr, /^(127\.0\.0\.1|localhost|\[::1\]):\d{1,5}$/, 'WOLF_LOCAL_ADDR is host:port on loopback (the pod shares one network namespace)');
          for (const c of ds.spec?.template.spec?.containers ?? []) assert.equal(envValue(c, 'WOLF_SOCKET_PATH'), undefined, `${c.name}: no WOLF_SOCKET_PATH`);
          assert.equal(ds.spec?.template.spec?.volumes?.find((v) => v.emptyDir) ?? undefined, undefined, 'no socket emptyDir');
        });
      } else {
        test("the base leaves the link to Wolf's API to an overlay", () => {
          const ds = daemonSet(manifests());
          assert.equal(envValue(agentContainer(ds), 'WOLF_LOCAL_ADDR'), undefined);
        });
      }

      if (expected.scraped) {
        test("Prometheus scrape annotations name the agent's metrics port and path", () => {
          const ds = daemonSet(manifests());
          const agent = agentContainer(ds);
          const annotations = ds.spec?.template.metadata?.annotations ?? {};
          assert.equal(annotations['prometheus.io/scrape'], 'true');
          assert.equal(annotations['prometheus.io/path'], '/metrics');
          assert.equal(Number(annotations['prometheus.io/port']), HEALTH_PORT);
          assert.equal(envValue(agent, 'REVDIAL_METRICS_ADDR'), `0.0.0.0:${annotations['prometheus.io/port']}`, 'the agent serves /metrics on that port');
        });
      } else {
        test('no scrape annotations (the prometheus overlay adds them)', () => {
          const annotations = daemonSet(manifests()).spec?.template.metadata?.annotations ?? {};
          assert.deepEqual(
            Object.keys(annotations).filter((k) => k.startsWith('prometheus.io/')),
            [],
          );
        });
      }

      test('the token comes from a Secret mounted as a file, never from a literal', () => {
        const ds = daemonSet(manifests());
        const agent = agentContainer(ds);
        assert.equal(envValue(agent, 'RUNNER_TOKEN'), undefined, 'no RUNNER_TOKEN literal');
        assert.equal(
          agent.env?.find((e) => e.name === 'RUNNER_TOKEN'),
          undefined,
          'file preferred over an env var',
        );
        const tokenFile = envValue(agent, 'RUNNER_TOKEN_FILE');
        assert.ok(tokenFile, 'RUNNER_TOKEN_FILE is set');
        const mount = agent.volumeMounts?.find((v) => v.mountPath === dirname(tokenFile));
        assert.ok(mount, `a volume is mounted at ${dirname(tokenFile)}`);
        assert.equal(mount.readOnly, true);
        const volume = ds.spec?.template.spec?.volumes?.find((v) => v.name === mount.name);
        assert.ok(volume?.secret?.secretName, `${mount.name} is a Secret volume`);
        for (const m of manifests()) assert.notEqual(m.doc.kind, 'Secret', `${target}: no Secret with a token in git`);
      });

      test('WOLF_ID comes from the node name', () => {
        const agent = agentContainer(daemonSet(manifests()));
        const wolfId = agent.env?.find((e) => e.name === 'WOLF_ID');
        assert.equal(wolfId?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
      });

      test('probes hit /readyz and /healthz on the port the agent listens on, reachable by the kubelet', () => {
        const agent = agentContainer(daemonSet(manifests()));
        const ready = agent.readinessProbe?.httpGet;
        const live = agent.livenessProbe?.httpGet;
        assert.equal(ready?.path, '/readyz');
        assert.equal(live?.path, '/healthz');
        assert.equal(portNumber(agent, ready.port), HEALTH_PORT);
        assert.equal(portNumber(agent, live.port), HEALTH_PORT);
        // The default 127.0.0.1:9464 is not reachable from the kubelet.
        assert.equal(envValue(agent, 'REVDIAL_METRICS_ADDR'), `0.0.0.0:${HEALTH_PORT}`);
      });

      test('the agent runs non-root, read-only, with no capabilities and bounded resources', () => {
        const agent = agentContainer(daemonSet(manifests()));
        const sc = agent.securityContext;
        assert.equal(sc?.runAsNonRoot, true);
        assert.ok((sc.runAsUser ?? 0) > 0, 'a numeric non-zero runAsUser (runAsNonRoot cannot check a named USER)');
        assert.equal(sc.readOnlyRootFilesystem, true);
        assert.equal(sc.allowPrivilegeEscalation, false);
        assert.deepEqual(sc.capabilities?.drop, ['ALL']);
        assert.equal(sc.privileged ?? false, false);
        for (const kind of ['requests', 'limits'] as const) {
          for (const res of ['cpu', 'memory']) {
            assert.ok(agent.resources?.[kind]?.[res] !== undefined, `agent resources.${kind}.${res}`);
          }
        }
      });

      test('the kubelet waits longer than the agent drains', () => {
        const ds = daemonSet(manifests());
        const grace = graceSeconds(agentContainer(ds));
        assert.ok(Number.isFinite(grace));
        const termination = ds.spec?.template.spec?.terminationGracePeriodSeconds ?? 30;
        assert.ok(termination > grace, `terminationGracePeriodSeconds ${termination} must exceed --grace-period ${grace}`);
      });

      test('the DaemonSet lands on GPU nodes only', () => {
        const pod = daemonSet(manifests()).spec?.template.spec;
        const selects =
          Object.keys(pod?.nodeSelector ?? {}).some((k) => k.includes('gpu')) ||
          pod?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution !== undefined;
        assert.ok(selects, 'a GPU nodeSelector or required node affinity');
        assert.ok(
          pod?.tolerations?.some((t) => t.key?.includes('gpu')),
          'tolerates the GPU taint',
        );
      });

      test('the agent image is pinned to this version, not :latest', () => {
        const agent = agentContainer(daemonSet(manifests()));
        const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
        assert.ok(agent.image?.endsWith(`:${pkg.version}`), `${agent.image} should end with :${pkg.version}`);
      });
    });
  }
});
