/**
 * INTEGRATION.md and the deployment files must agree with the agent that ships.
 * The agent's options are read at test time from `build/src/agent/main.js --help`, so
 * options added later are held to the same rule without editing this test:
 *
 * - every flag the guide shows for the agent, and every variable it names, is one
 *   the agent accepts;
 * - every flag and every variable the agent accepts is in the guide's
 *   configuration table;
 * - the variables the systemd unit, the k8s manifests and the compose example set
 *   for the agent are ones it accepts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { ErrorCodes } from '../../src/agent/errors.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
// The Node running the tests: node_modules/.bin/node under npm scripts on Linux x64.
const nodeBin = process.execPath;
const entry = join(root, 'build/src/agent/main.js');

/** Variables of other programs the guide has to name (Wolf's own settings). */
const NOT_THE_AGENTS = new Set(['WOLF_SOCKET_PATH']);
/** Which upper-case words in the guide are meant as the agent's variables. */
const AGENT_VARIABLE = /\b(?:HELIX|WOLF|RUNNER|REVDIAL)_[A-Z0-9_]+\b|\bLOG_LEVEL\b|\b(?:HTTPS?|NO|ALL)_PROXY\b/g;
const FLAG = /(?<![\w-])--[a-z][a-z0-9-]*/g;

interface Help {
  text: string;
  flags: Set<string>;
  /** Variables bound to an option: commander's `(env: NAME)`. */
  optionVariables: Set<string>;
  /** The `doctor` subcommand's own flags (`doctor --help`), besides the agent's. */
  doctorFlags: Set<string>;
  /** Every upper-case NAME_LIKE_THIS word in --help: options' variables and any the help text mentions. */
  mentionedVariables: Set<string>;
}

/** Option flags of one `--help` text: lines "  -V, --version   ..." or "  --api-url <url>   ..." (descriptions are indented further). */
function helpFlags(text: string): Set<string> {
  const flags = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^ {2}((?:-[A-Za-z], )?--[a-z][a-z0-9-]*)/.exec(line);
    if (m) flags.add(/--[a-z][a-z0-9-]*/.exec(m[1]!)![0]);
  }
  return flags;
}

function agentHelp(): Help {
  const doctor = spawnSync(nodeBin, [entry, 'doctor', '--help'], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' }, timeout: 20_000 });
  assert.equal(doctor.status, 0, `${entry} doctor --help exited ${doctor.status}: ${doctor.stderr}`);
  const run = spawnSync(nodeBin, [entry, '--help'], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '' },
    timeout: 20_000,
  });
  assert.equal(run.error, undefined, `cannot run ${entry}: ${String(run.error)} (npm run build first)`);
  assert.equal(run.status, 0, `${entry} --help exited ${run.status}: ${run.stderr}`);
  const text = run.stdout;
  const flat = text.replace(/\s+/g, ' ');
  const flags = new Set<string>();
  for (const line of text.split('\n')) {
    // Option lines: "  -V, --version   ..." or "  --api-url <url>   ..."; descriptions are indented further.
    const m = /^ {2}((?:-[A-Za-z], )?--[a-z][a-z0-9-]*)/.exec(line);
    if (m) flags.add(/--[a-z][a-z0-9-]*/.exec(m[1]!)![0]);
  }
  const optionVariables = new Set([...flat.matchAll(/\benv: ([A-Z][A-Z0-9_]*)\)/g)].map((m) => m[1]!));
  const mentionedVariables = new Set([...flat.matchAll(/\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b/g)].map((m) => m[0]));
  return { text, flags, optionVariables, doctorFlags: helpFlags(doctor.stdout), mentionedVariables };
}

/** Splits markdown into prose (fenced blocks removed) and the fenced blocks' lines. */
function splitMarkdown(md: string): { prose: string; fenced: string[] } {
  const prose: string[] = [];
  const fenced: string[] = [];
  let inFence = false;
  for (const line of md.split('\n')) {
    if (/^\s*```/.test(line)) {
      inFence = !inFence;
      continue;
    }
    (inFence ? fenced : prose).push(line);
  }
  return { prose: prose.join('\n'), fenced };
}

/**
 * Flags the guide attributes to the agent: inline code that starts with a flag,
 * and command lines (inline or in code blocks) that run the agent. Other tools'
 * flags (`groupadd --system`, `kubectl --from-file`) sit on their own command
 * lines and are not counted.
 */
function guideFlags(md: string): Set<string> {
  const { prose, fenced } = splitMarkdown(md);
  const flags = new Set<string>();
  // Inline code that is a flag (`--ca-file`, `--api-url <url>`) or an agent command.
  const spans = [...prose.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!.trim());
  for (const span of spans) if (span.startsWith('--')) flags.add(/^--[a-z][a-z0-9-]*/.exec(span)?.[0] ?? span);
  const commands = [...spans.filter((s) => !s.startsWith('--')), ...fenced.join('\n').replace(/\\\n/g, ' ').split('\n')];
  for (const command of commands) {
    const words = command
      .trim()
      .replace(/^\$\s+/, '')
      .split(/\s+/);
    while (words.length > 0 && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0]!)) words.shift(); // VAR=value prefixes
    if (words[0] === 'sudo' || words[0] === 'exec') words.shift();
    const program = words[0] ?? '';
    if (program.endsWith('wolf-revdial-client') || program.endsWith('build/src/agent/main.js')) {
      for (const f of command.matchAll(FLAG)) flags.add(f[0]);
    }
  }
  return flags;
}

function guideVariables(md: string): Set<string> {
  const errorCodes = new Set<string>(Object.values(ErrorCodes));
  return new Set([...md.matchAll(AGENT_VARIABLE)].map((m) => m[0]).filter((v) => !errorCodes.has(v) && !NOT_THE_AGENTS.has(v)));
}

/** The first table after the "## Configuration" heading: one entry per row. */
function configurationTable(md: string): string[] {
  const lines = md.split('\n');
  const start = lines.findIndex((l) => /^##\s+Configuration\b/.test(l));
  assert.ok(start >= 0, 'INTEGRATION.md has a "## Configuration" section');
  const rows: string[] = [];
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^##\s/.test(line)) break;
    if (line.startsWith('|')) rows.push(line);
    else if (rows.length > 0) break;
  }
  assert.ok(rows.length > 2, 'the configuration table has rows');
  return rows.slice(2); // header and separator
}

function difference(a: Set<string>, b: Set<string>): string[] {
  return [...a].filter((x) => !b.has(x)).sort();
}

/** What the agent accepts that the table rows do not mention. */
function missingFromTable(rows: string[], help: Help): { flags: string[]; variables: string[] } {
  const table = rows.join('\n');
  const tableFlags = new Set([...table.matchAll(FLAG)].map((m) => m[0]));
  const tableVars = new Set([...table.matchAll(/\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b/g)].map((m) => m[0]));
  return { flags: difference(help.flags, tableFlags), variables: difference(help.optionVariables, tableVars) };
}

describe('INTEGRATION.md agrees with the agent', () => {
  const md = readFileSync(join(root, 'INTEGRATION.md'), 'utf8');
  const help = agentHelp();
  const accepted = new Set([...help.optionVariables, ...help.mentionedVariables]);

  test('--help lists options with their variables (the parser below works)', () => {
    for (const f of ['--help', '--version', '--api-url', '--wolf-id']) assert.ok(help.flags.has(f), `--help shows ${f}`);
    for (const v of ['HELIX_API_URL', 'WOLF_ID']) assert.ok(help.optionVariables.has(v), `--help shows (env: ${v})`);
  });

  test('every flag the guide shows for the agent exists', () => {
    const flags = guideFlags(md);
    assert.ok(flags.size > 5, 'the guide shows the agent flags');
    assert.deepEqual(difference(flags, new Set([...help.flags, ...help.doctorFlags])), [], 'flags in INTEGRATION.md that the agent does not accept');
  });

  test('every variable the guide names is one the agent accepts', () => {
    const vars = guideVariables(md);
    assert.deepEqual(difference(vars, accepted), [], 'variables in INTEGRATION.md that the agent does not know (not in --help)');
  });

  test('the configuration table lists every flag and every variable of the agent', () => {
    assert.deepEqual(missingFromTable(configurationTable(md), help), { flags: [], variables: [] });
  });

  test('the checks catch a stale guide (they can fail)', () => {
    const stale = md.replace('## Configuration', '## Configuration\n\nAlso `--no-such-flag` and `REVDIAL_NO_SUCH_VAR`.');
    assert.deepEqual(difference(guideFlags(stale), new Set([...help.flags, ...help.doctorFlags])), ['--no-such-flag']);
    assert.deepEqual(difference(guideVariables(stale), accepted), ['REVDIAL_NO_SUCH_VAR']);
    // Drop the --api-url row: the table check must report the flag and its variable.
    const rows = configurationTable(md).filter((r) => !r.startsWith('| `--api-url'));
    assert.deepEqual(missingFromTable(rows, help), { flags: ['--api-url'], variables: ['HELIX_API_URL'] });
  });
});

describe("README.md's configuration table agrees with the agent", () => {
  // The README also shows other commands' flags (npm run demo -- --agent-cmd ...),
  // so only its configuration table is held to the agent's options.
  const rows = configurationTable(readFileSync(join(root, 'README.md'), 'utf8'));
  const help = agentHelp();

  test('every flag in the table exists', () => {
    const tableFlags = new Set([...rows.join('\n').matchAll(FLAG)].map((m) => m[0]));
    assert.deepEqual(difference(tableFlags, help.flags), [], 'flags in the README table that the agent does not accept');
  });

  test('the table lists every flag and every variable of the agent', () => {
    assert.deepEqual(missingFromTable(rows, help), { flags: [], variables: [] });
  });
});

describe('deployment files set only variables the agent accepts', () => {
  const help = agentHelp();
  const accepted = new Set([...help.optionVariables, ...help.mentionedVariables]);

  function check(where: string, names: string[]): void {
    assert.ok(names.length > 0, `${where}: found no variables (parser out of date?)`);
    assert.deepEqual(difference(new Set(names), accepted), [], `${where}: variables the agent does not accept`);
  }

  test('systemd unit', () => {
    const unit = readFileSync(join(root, 'systemd/wolf-revdial-client.service'), 'utf8');
    const names = [...unit.matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=/gm)].map((m) => m[1]!);
    // The env file example in the unit's install notes.
    for (const m of unit.matchAll(/printf '([^']*)'/g)) for (const v of m[1]!.matchAll(/([A-Z_]+)=/g)) names.push(v[1]!);
    check('systemd/wolf-revdial-client.service', names);
  });

  test('systemd template unit (one instance per Wolf)', () => {
    const unit = readFileSync(join(root, 'systemd/wolf-revdial-client@.service'), 'utf8');
    const names = [...unit.matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=/gm)].map((m) => m[1]!);
    for (const m of unit.matchAll(/printf '([^']*)'/g)) for (const v of m[1]!.matchAll(/([A-Z_]+)=/g)) names.push(v[1]!);
    check('systemd/wolf-revdial-client@.service', names);
    // Instances share a host: none may pin the metrics address, or the second would exit 2.
    assert.doesNotMatch(unit, /^Environment=REVDIAL_METRICS_ADDR=/m);
    assert.match(unit, /^EnvironmentFile=\/etc\/wolf-revdial-client\/%i\.env$/m);
  });

  test('k8s agent container', () => {
    const names: string[] = [];
    // The base and every overlay's patches (kustomize: k8s/base, k8s/overlays/*).
    const files = readdirSync(join(root, 'k8s'), { recursive: true, encoding: 'utf8' }).filter((f) => /\.ya?ml$/.test(f));
    for (const file of files) {
      for (const doc of parseAllDocuments(readFileSync(join(root, 'k8s', file), 'utf8'))) {
        const obj = doc.toJS() as { spec?: { template?: { spec?: { containers?: { name?: string; env?: { name: string }[] }[] } } } } | null;
        for (const c of obj?.spec?.template?.spec?.containers ?? []) {
          if (c.name === 'revdial-agent' || c.env?.some((e) => e.name === 'HELIX_API_URL')) names.push(...(c.env ?? []).map((e) => e.name));
        }
      }
    }
    check('k8s/', names);
  });

  test('compose agent service', () => {
    const compose = parse(readFileSync(join(root, 'docker-compose.example.yaml'), 'utf8')) as {
      services: Record<string, { environment?: Record<string, string> }>;
    };
    const agents = Object.values(compose.services).filter((s) => s.environment?.HELIX_API_URL !== undefined);
    assert.equal(agents.length, 1, 'one agent service');
    check('docker-compose.example.yaml', Object.keys(agents[0]!.environment ?? {}));
  });
});
