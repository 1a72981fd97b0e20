/**
 * The doctor's runner in-process: the time limit of a step runs on the
 * injected clock (a Wolf that accepts and never answers fails the step when
 * the clock is moved, not after a real wait), a failed control-plane step
 * skips the rest of that chain but not Wolf's, and the printed report never
 * holds the token, whatever a peer put in a message.
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { buildProgram, resolveConfig } from '../../src/agent/config.js';
import { DOCTOR_DEFAULTS } from '../../src/agent/doctor/command.js';
import { type DoctorReport, formatReport, runDoctor } from '../../src/agent/doctor/run.js';
import { ErrorCodes } from '../../src/agent/errors.js';
import { ManualClock } from '../helpers/harness.js';
import { freePort } from '../helpers/ops.js';

const TOKEN = 'unit-doctor-token-5f2c9a';

/** A configuration from flags only (commander would read variables from process.env). */
function configFor(args: string[]): ReturnType<typeof resolveConfig> {
  const program = buildProgram()
    .exitOverride()
    .configureOutput({ writeErr: () => undefined });
  program.parse(args, { from: 'user' });
  return resolveConfig(program, {});
}

test("a step's time limit runs on the injected clock; a failed TCP step skips TLS and the token, not Wolf", async (t) => {
  const accepted: net.Socket[] = [];
  let onAccept: (() => void) | undefined;
  const silentWolf = net.createServer((socket) => {
    accepted.push(socket); // accepts, never answers
    socket.on('error', () => undefined);
    onAccept?.();
  });
  await new Promise<void>((resolve) => silentWolf.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of accepted) s.destroy();
    return new Promise<void>((resolve) => silentWolf.close(() => resolve()));
  });
  const closedPort = await freePort();
  const config = configFor([
    '--api-url',
    `https://127.0.0.1:${closedPort}`,
    '--wolf-id',
    'unit',
    '--token',
    TOKEN,
    '--local',
    `127.0.0.1:${(silentWolf.address() as AddressInfo).port}`,
    '--metrics-addr',
    'off',
  ]);
  const clock = new ManualClock(Date.parse('2026-01-01T00:00:00Z'));
  const accepting = new Promise<void>((resolve) => (onAccept = resolve));
  const running = runDoctor(config, { ...DOCTOR_DEFAULTS, timeoutMs: 60_000 }, { clock });
  await accepting;
  // Wolf's step is now waiting on its answer; a minute passes on the injected clock only.
  await new Promise((resolve) => setImmediate(resolve));
  clock.tick(60_000);
  const report: DoctorReport = await running;
  const by = new Map(report.steps.map((s) => [s.step, s]));
  assert.equal(report.ok, false);
  assert.equal(by.get('config')?.status, 'ok');
  assert.equal(by.get('tcp')?.status, 'fail');
  assert.equal(by.get('tcp')?.code, ErrorCodes.CONNECT_FAILED);
  assert.equal(by.get('tls')?.status, 'skip');
  assert.equal(by.get('token')?.status, 'skip');
  assert.equal(by.get('wolf')?.status, 'fail');
  assert.equal(by.get('wolf')?.code, ErrorCodes.DOCTOR_TIMEOUT);
  assert.equal(by.get('wolf')?.ms, 60_000);
  assert.match(by.get('wolf')?.detail ?? '', /did not answer GET \/api\/v1\/apps within 60 s/);
  assert.equal(by.get('registry')?.status, 'skip');
});

test('the report never prints the token, even when a message carries it', () => {
  const report: DoctorReport = {
    ok: false,
    program: 'wolf-revdial-client',
    version: '0',
    steps: [{ step: 'token', status: 'fail', title: 'the token is accepted', detail: `a peer echoed Bearer ${TOKEN}`, fix: `not ${TOKEN}`, code: 'X' }],
  };
  for (const json of [false, true]) {
    const text = formatReport(report, json, TOKEN);
    assert.ok(!text.includes(TOKEN), text);
    assert.ok(text.includes('Bearer [token]'), text);
  }
  assert.match(formatReport(report, false, TOKEN), /^✗ the token is accepted: a peer echoed Bearer \[token\]\n {4}→ not \[token\]\n1 check failed: token\.\n$/);
});
