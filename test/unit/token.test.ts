/**
 * token.ts and its use in config.ts: a token an HTTP header cannot carry
 * (a control character, a stray byte in the file, beyond Latin-1) is refused
 * at start with one line naming the setting, never the token; a rotated file
 * that turns bad keeps the last good token and is reported once.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildProgram, resolveConfig } from '../../src/agent/config.js';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import { TokenFile, tokenProblem } from '../../src/agent/token.js';
import { agentEnv, spawnAgent } from '../helpers/harness.js';

const SECRET = 'sekrit-token-value';
const BASE = { HELIX_API_URL: 'http://127.0.0.1:9', WOLF_ID: 'wolf-1' };

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'revdial-token-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function resolve(args: string[], env: Record<string, string>) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const program = buildProgram()
      .exitOverride()
      .configureOutput({ writeErr: () => undefined });
    program.parse(args, { from: 'user' });
    return resolveConfig(program, process.env);
  } finally {
    for (const k of Object.keys(env)) if (!(k in saved)) Reflect.deleteProperty(process.env, k);
    Object.assign(process.env, saved);
  }
}

test('tokenProblem: control characters and non-Latin-1 are named by position; header-safe tokens pass', () => {
  for (const ok of [SECRET, 'a b', 'tab\there', 'caf\u00e9', 'x'.repeat(4096)]) assert.equal(tokenProblem(ok), undefined, ok);
  assert.match(tokenProblem('ab\x01cd') ?? '', /control character \(U\+0001 at position 3\)/);
  assert.match(tokenProblem('abc\x7f') ?? '', /control character/);
  assert.match(tokenProblem('\u0100abc') ?? '', /outside Latin-1/);
  assert.ok(!(tokenProblem(`${SECRET}\x00`) ?? '').includes(SECRET));
});

test('a token with a control character from RUNNER_TOKEN, --token or the file: REVDIAL_CONFIG_INVALID naming the setting, not the token', (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'token');
  writeFileSync(file, `${SECRET}\x01\n`);
  const cases: [string[], Record<string, string>, RegExp][] = [
    [[], { ...BASE, RUNNER_TOKEN: `${SECRET}\x01` }, /RUNNER_TOKEN/],
    [['--token', `\x1b${SECRET}`], BASE, /--token/],
    [[], { ...BASE, RUNNER_TOKEN_FILE: file }, /RUNNER_TOKEN_FILE/],
    [[], { ...BASE, RUNNER_TOKEN: `${SECRET}\u2603` }, /RUNNER_TOKEN.*outside Latin-1/],
  ];
  for (const [args, env, setting] of cases) {
    assert.throws(
      () => resolve(args, env),
      (err: unknown) => {
        assert.ok(err instanceof RevdialError);
        assert.equal(err.code, ErrorCodes.CONFIG_INVALID);
        assert.match(err.message, setting);
        assert.ok(!err.message.includes(SECRET), err.message);
        return true;
      },
    );
  }
  // A trailing newline in the file is still not part of the token.
  writeFileSync(file, `${SECRET}\n`);
  assert.equal(resolve([], { ...BASE, RUNNER_TOKEN_FILE: file }).token(), SECRET);
});

test('the executable: RUNNER_TOKEN or a token file with a stray byte exits 2 with one line, token not shown', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'token');
  writeFileSync(file, `${SECRET.slice(0, 6)}\x01${SECRET.slice(6)}\n`);
  for (const [env, setting] of [
    [{ ...BASE, RUNNER_TOKEN: `${SECRET}\x01` }, 'RUNNER_TOKEN'],
    [{ ...BASE, RUNNER_TOKEN_FILE: file }, 'RUNNER_TOKEN_FILE'],
  ] as const) {
    const agent = spawnAgent(t, agentEnv(env));
    const { code } = await agent.exited;
    assert.equal(code, 2);
    const lines = agent.stderr().trimEnd().split('\n');
    assert.equal(lines.length, 1, agent.stderr());
    assert.ok(lines[0]?.includes(setting), lines[0]);
    assert.ok(!agent.stderr().includes(SECRET.slice(0, 6)), agent.stderr());
    assert.equal(agent.logs.lines.length, 0, 'nothing started');
  }
});

test('TokenFile: a rotation to a bad file keeps the last good token and is reported once; a good one is taken again', (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'token');
  writeFileSync(file, 'first\n');
  let now = 0;
  const tokens = new TokenFile(file, { now: () => now });
  const rejected: RevdialError[] = [];
  tokens.onRejected = (err) => rejected.push(err);
  assert.equal(tokens.read(), 'first');
  writeFileSync(file, 'sec\x01ond\n');
  now += 1000;
  assert.equal(tokens.read(), 'first');
  now += 1000;
  assert.equal(tokens.read(), 'first');
  assert.equal(rejected.length, 1, 'reported once, not on every read');
  assert.equal(rejected[0]?.code, ErrorCodes.CONFIG_INVALID);
  assert.ok(rejected.every((e) => e.message.includes(file)));
  writeFileSync(file, 'third\n');
  now += 1000;
  assert.equal(tokens.read(), 'third');
  rmSync(file);
  now += 1000;
  assert.equal(tokens.read(), 'third', 'missing mid-rotation: the last good token');
  assert.equal(rejected.length, 2);
});
