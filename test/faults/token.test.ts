/**
 * Issue 5, figure 10: the token is sent to the configured origin only. A
 * trap server records every connection it receives (and any Authorization
 * header); a hostile control plane tries to send the agent there with
 * conn-ready paths naming another origin, and a redirecting one answers the
 * upgrade with 302 to the trap. The trap must see nothing. (The other half
 * of the figure, no token in any log, is checked by every faults-* file's
 * `after` hook over all the output it captured.)
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { spawnProbedAgent } from './helpers/faults.js';
import { startPlane, startWolf } from '../helpers/harness.js';
import { TOKEN } from '../helpers/harness.js';
import { assertNoTokenLeaked, findToken } from './helpers/token-guard.js';

after(() => {
  const { sources, lines } = assertNoTokenLeaked();
  process.stdout.write(`# token guard: ${lines} lines from ${sources} sources scanned\n`);
});

async function trap(t: { after: (fn: () => Promise<void>) => void }): Promise<{ port: number; hits: string[] }> {
  const hits: string[] = [];
  const server = net.createServer((socket) => {
    let head = '';
    socket.on('data', (c: Buffer) => {
      head += c.toString('latin1');
      hits.push(head.split('\r\n').find((l) => /^authorization:/i.test(l)) ?? `connection without Authorization: ${head.slice(0, 60)}`);
      socket.destroy();
    });
    socket.on('error', () => undefined);
    hits.push('connection');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, hits };
}

test('figure 10: conn-ready paths naming another origin are refused; the trap origin never sees a connection', async (t) => {
  const { port, hits } = await trap(t);
  const plane = await startPlane(t);
  const { local } = await startWolf(t);
  const agent = spawnProbedAgent(t, { HELIX_API_URL: plane.url, WOLF_ID: 'token', WOLF_LOCAL_ADDR: local });
  const dialer = await plane.waitForRunner('wolf-token', 10_000);
  await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
  const hostile = [
    `//127.0.0.1:${port}/revdial?revdial.dialer=x`,
    `http://127.0.0.1:${port}/revdial?revdial.dialer=x`,
    `ws://127.0.0.1:${port}/api/v1/revdial`,
    `/\\127.0.0.1:${port}/revdial`,
    `\\\\127.0.0.1:${port}/revdial`,
    ` //127.0.0.1:${port}/revdial`,
    `/\t/127.0.0.1:${port}/revdial`,
    `//user@127.0.0.1:${port}/revdial`,
  ];
  const reasons: string[] = [];
  const all = new Promise<void>((resolve) => {
    plane.on('pickup-failed', (_runner: string, _connPath: string, err: string) => {
      reasons.push(err);
      if (reasons.length === hostile.length) resolve();
    });
  });
  for (const connPath of hostile) dialer.sendRaw(Buffer.from(`${JSON.stringify({ command: 'conn-ready', connPath })}\n`));
  await all;
  for (const reason of reasons) assert.match(reason, /^REVDIAL_CONN_PATH_INVALID: /);
  assert.deepEqual(hits, [], 'the trap origin was contacted');
  // The agent is still serving its own origin.
  assert.equal((await plane.request('wolf-token', { path: '/api/v1/system/health' })).statusCode, 200);
  t.diagnostic(`figure 10: ${hostile.length} foreign-origin connPaths refused with REVDIAL_CONN_PATH_INVALID; trap connections: ${hits.length}`);
});

test('figure 10: a control plane that redirects the upgrade to another origin is not followed', async (t) => {
  const { port, hits } = await trap(t);
  const redirector = http.createServer((_req, res) => res.writeHead(404).end());
  let upgrades = 0;
  redirector.on('upgrade', (_req, socket) => {
    upgrades++;
    socket.end(
      `HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:${port}/api/v1/revdial?runnerid=wolf-redirect\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
    );
  });
  await new Promise<void>((resolve) => redirector.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => redirector.close(() => resolve())));
  const { local } = await startWolf(t);
  const agent = spawnProbedAgent(t, {
    HELIX_API_URL: `http://127.0.0.1:${(redirector.address() as AddressInfo).port}`,
    WOLF_ID: 'redirect',
    WOLF_LOCAL_ADDR: local,
    REVDIAL_RECONNECT_MAX: '0.2',
  });
  // Three attempts, each answered with the redirect.
  for (let n = 0; n < 3; n++) {
    await agent.logs.waitFor((l) => l.msg.startsWith('Control connection attempt failed') && Number(l.attempt) === n + 1, 10_000);
  }
  const failed = agent.logs.lines.filter((l) => l.msg.startsWith('Control connection attempt failed'));
  assert.ok(
    failed.every((l) => l.code === 'REVDIAL_HANDSHAKE_REJECTED'),
    JSON.stringify(failed.map((l) => l.code)),
  );
  assert.ok(upgrades >= 3);
  assert.deepEqual(hits, [], 'the redirect was followed');
});

test('the token guard itself finds a token, plain or as a Basic/base64 dump', () => {
  assert.equal(findToken(['{"msg":"ok"}']), undefined);
  assert.ok(findToken([`{"authorization":"Bearer ${TOKEN}"}`]));
  assert.ok(findToken([`dump ${Buffer.from(TOKEN).toString('base64')}`]));
});
