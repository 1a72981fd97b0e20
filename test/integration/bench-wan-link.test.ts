/**
 * The WAN benchmark's instrument (bench/wan/): the link between its two network
 * namespaces really delays (a TCP handshake takes a round trip), carries bytes
 * intact and in order through the userspace delay line, and everything the
 * benchmark makes is gone afterwards: after destroy(), after SIGINT in the
 * middle of a run, and namespaces a killed run left behind.
 * Needs root and `ip netns`; skipped elsewhere.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HOST_ADDR, removeStale, unavailableReason, WanLab } from '../../bench/wan/netns.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const why = unavailableReason();
const hasPython = ((): boolean => {
  try {
    execFileSync('python3', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

function namespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** Node code run in the host namespace: accepts one connection, answers the sha256 and length of what it read. */
const SINK = `
const net = require('node:net'); const { createHash } = require('node:crypto');
const s = net.createServer((c) => { const h = createHash('sha256'); let n = 0;
  c.on('data', (b) => { h.update(b); n += b.length; });
  c.on('end', () => { c.end(JSON.stringify({ n, sha256: h.digest('hex') })); s.close(); }); });
s.listen(7001, '${HOST_ADDR}', () => console.log('listening'));
`;

/** Node code run in the plane namespace: connects, times the handshake, sends SIZE bytes from stdin's seed, prints the answer. */
const SOURCE = `
const net = require('node:net'); const { createHash } = require('node:crypto');
const size = Number(process.argv[1]); const seed = Buffer.from(process.argv[2], 'hex');
const t0 = process.hrtime.bigint();
const c = net.connect(7001, '${HOST_ADDR}', () => {
  const connectMs = Number(process.hrtime.bigint() - t0) / 1e6;
  let i = 0; let left = size;
  const block = () => { const b = Buffer.alloc(Math.min(65536, left)); for (let j = 0; j < b.length; j += 32) createHash('sha256').update(seed).update(String(i++)).digest().copy(b, j); return b; };
  const pump = () => { while (left > 0) { const b = block(); left -= b.length; if (!c.write(b)) return c.once('drain', pump); } c.end(); };
  pump();
  let out = ''; c.on('data', (d) => (out += d)); c.on('end', () => console.log(JSON.stringify({ connectMs, answer: JSON.parse(out) })));
});
`;

function expected(size: number, seed: Buffer): string {
  const h = createHash('sha256');
  let i = 0;
  let left = size;
  while (left > 0) {
    const b = Buffer.alloc(Math.min(65536, left));
    for (let j = 0; j < b.length; j += 32) createHash('sha256').update(seed).update(String(i++)).digest().copy(b, j);
    left -= b.length;
    h.update(b);
  }
  return h.digest('hex');
}

test(
  'the delay line delays by the RTT and carries bytes intact and in order; destroy() removes everything',
  { skip: why ?? (hasPython ? false : 'python3 not found') },
  async (t) => {
    const rttMs = 40;
    const lab = await WanLab.create(rttMs, 'delay-line');
    t.after(() => lab.destroySync());
    assert.equal(lab.kind, 'delay-line');
    assert.ok(namespaces().includes(lab.plane) && namespaces().includes(lab.host));
    const delayPid = lab.delayLinePid;
    assert.ok(delayPid !== undefined);

    const ping = lab.ping(3);
    assert.equal(ping.received, 3);
    assert.ok(ping.minMs >= rttMs, `ping min ${ping.minMs} ms is below the ${rttMs} ms RTT`);

    const node = process.execPath;
    const sink = lab.spawnIn(lab.host, node, ['-e', SINK], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => sink.stdout?.once('data', () => resolve()));
    const size = 8 * 1024 * 1024 + 123;
    const seed = randomBytes(16);
    const source = lab.spawnIn(lab.plane, node, ['-e', SOURCE, String(size), seed.toString('hex')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    source.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
    const end = await exited(source);
    assert.equal(end.code, 0);
    const r = JSON.parse(out) as { connectMs: number; answer: { n: number; sha256: string } };
    // The handshake is a round trip through the line: SYN one way, SYN-ACK back.
    assert.ok(r.connectMs >= rttMs, `TCP connect took ${r.connectMs} ms, less than the ${rttMs} ms RTT`);
    assert.equal(r.answer.n, size);
    assert.equal(r.answer.sha256, expected(size, seed));

    const stats = await lab.destroy();
    assert.ok(stats, 'the delay line reports its counters on exit');
    assert.ok(stats.bytes >= size, `delay line forwarded ${stats.bytes} bytes, fewer than the ${size} sent`);
    assert.ok(!namespaces().includes(lab.plane) && !namespaces().includes(lab.host), 'namespaces removed');
    assert.throws(() => process.kill(delayPid, 0), /ESRCH/, 'delay line gone');
  },
);

test('removeStale() removes the namespaces of a run whose process is gone, and only those', { skip: why ?? false }, async (t) => {
  // A pid that is certainly not running: a child that has exited and been reaped.
  const dead = spawn(process.execPath, ['-e', '0']);
  const deadPid = dead.pid!;
  await exited(dead);
  const stale = `rdwan-${deadPid}-plane`;
  const mine = `rdwan-${process.pid}-host`;
  execFileSync('ip', ['netns', 'add', stale]);
  execFileSync('ip', ['netns', 'add', mine]);
  t.after(() => {
    for (const ns of [stale, mine]) if (namespaces().includes(ns)) execFileSync('ip', ['netns', 'del', ns]);
  });
  const removed = removeStale();
  assert.ok(removed.includes(stale));
  assert.ok(!namespaces().includes(stale));
  assert.ok(namespaces().includes(mine), "a live run's namespace stays");
});

test('bench --wan removes its namespaces when interrupted mid-run (SIGINT, exit 130)', { skip: why ?? false }, async (t) => {
  const bench = spawn(process.execPath, [`${ROOT}build/bench/run.js`, '--wan', '--rtt', '0', '--runs', '1', '--duration', '30', '--bulk-mib', '1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => bench.kill('SIGKILL'));
  const pid = bench.pid!;
  const ours = (): string[] => namespaces().filter((n) => n.startsWith(`rdwan-${pid}-`));
  let out = '';
  bench.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
  // Interrupt once the load runs: namespaces, agents, plane and wrk all exist then.
  await new Promise<void>((resolve, reject) => {
    bench.stdout.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      if (out.includes('plane https://')) resolve();
    });
    bench.once('exit', (code) => reject(new Error(`bench exited (${code}) before its load started: ${out.slice(-2000)}`)));
  });
  assert.equal(ours().length, 2, `expected the run's two namespaces, saw ${ours().join(', ')}`);
  bench.kill('SIGINT');
  const end = await exited(bench);
  assert.equal(end.code, 130, out.slice(-2000));
  assert.deepEqual(ours(), []);
  assert.match(out, /namespaces removed/);
});
