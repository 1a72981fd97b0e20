/**
 * `npm run bench -- --tls-cost`: the client CPU one TLS connection to the
 * control plane costs, by how the agent dials. A TLS server (Node, ECDSA
 * P-256 certificate from a private CA made with openssl) runs in a child
 * process on loopback; this process only dials, so its own CPU time
 * (process.cpuUsage) divided by the connections is the client's cost:
 *
 *   new context      `tls.connect({ ca })`: a secure context, CA store included, per connection (what ws does when handed `ca`)
 *   shared           one `tls.createSecureContext`, a full handshake each time
 *   shared+resume    the agent's connector: shared context and the last TLS 1.3 ticket offered (net/connector.ts)
 *   ... 1.2          the same capped at TLS 1.2 (--tls-max-version 1.2)
 *
 * Every connection verifies the certificate and host name (or resumes a
 * session that did). Options: --tls-connections N (default 400), --smoke.
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls, { type ConnectionOptions, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { DirectConnector } from '../src/agent/net/connector.js';
import { TlsSettings } from '../src/agent/net/tls-context.js';
import { makePki } from './wan/tls.js';

interface Mode {
  name: string;
  dial: () => Promise<Socket>;
}

/** Opens, waits for the handshake (and a TLS 1.3 ticket when asked), closes. */
async function handshake(socket: TLSSocket, waitTicket: boolean): Promise<{ reused: boolean }> {
  await once(socket, 'secureConnect');
  if (waitTicket && socket.getProtocol() === 'TLSv1.3') {
    socket.resume();
    await once(socket, 'session');
  }
  const reused = socket.isSessionReused();
  socket.destroy();
  return { reused };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

async function measure(mode: Mode, count: number): Promise<{ usPerConn: number; reused: number }> {
  // Warm-up: JIT, the first full handshake, the first ticket.
  for (let i = 0; i < 20; i++) (await mode.dial()).destroy();
  let reused = 0;
  const start = process.cpuUsage();
  for (let i = 0; i < count; i++) {
    const socket = await mode.dial();
    if (socket instanceof tls.TLSSocket && socket.isSessionReused()) reused++;
    socket.destroy();
  }
  const used = process.cpuUsage(start);
  return { usPerConn: (used.user + used.system) / count, reused };
}

async function serve(keyFile: string, certFile: string): Promise<void> {
  const server = tls.createServer({ key: readFileSync(keyFile), cert: readFileSync(certFile), minVersion: 'TLSv1.2' }, (s) => {
    s.on('error', () => undefined);
    s.resume();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  process.send?.((server.address() as AddressInfo).port);
}

export async function runTlsCost(argv: string[]): Promise<number> {
  const smoke = argv.includes('--smoke');
  const at = argv.indexOf('--tls-connections');
  const count = at >= 0 ? Number(argv[at + 1]) : smoke ? 60 : 400;
  const runs = smoke ? 1 : 3;
  const dir = mkdtempSync(join(tmpdir(), 'revdial-tls-cost-'));
  try {
    const pki = makePki(dir, '127.0.0.1');
    const child = fork(fileURLToPath(import.meta.url), ['--tls-cost-server', pki.keyFile, pki.certFile], { stdio: 'inherit' });
    try {
      const [port] = (await once(child, 'message')) as [number];
      const ca = readFileSync(pki.caFile);
      const url13 = new URL(`wss://127.0.0.1:${port}/`);
      const base: ConnectionOptions = { host: '127.0.0.1', port, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'] };
      const shared = tls.createSecureContext({ ca });
      const connector13 = new DirectConnector({ tls: new TlsSettings({ ca, rejectUnauthorized: true }) });
      const connector12 = new DirectConnector({ tls: new TlsSettings({ ca, rejectUnauthorized: true, maxVersion: 'TLSv1.2' }) });
      // The connector resolves at 'secureConnect'; a TLS 1.3 ticket comes right
      // after, and the agent reads it while the socket waits or carries its
      // request. Here: read until it came, so the next dial has it.
      const viaConnector = async (c: DirectConnector): Promise<Socket> => {
        const { socket } = await c.connect(url13, AbortSignal.timeout(5_000));
        // (A resumed connection need not bring a new ticket: the last one is offered again.)
        if (socket instanceof tls.TLSSocket && socket.getProtocol() === 'TLSv1.3' && !socket.isSessionReused()) {
          socket.resume();
          await once(socket, 'session');
        }
        return socket;
      };
      const modes: Mode[] = [
        {
          name: 'new context per connection',
          dial: async () => {
            const s = tls.connect({ ...base, ca });
            await handshake(s, false);
            return s;
          },
        },
        {
          name: 'shared context, full handshakes (1.3)',
          dial: async () => {
            const s = tls.connect({ ...base, secureContext: shared });
            await handshake(s, false);
            return s;
          },
        },
        { name: 'shared + resumption, TLS 1.3 (default)', dial: () => viaConnector(connector13) },
        { name: 'shared + resumption, TLS 1.2', dial: () => viaConnector(connector12) },
      ];
      console.log(`\nTLS client CPU per connection (${count} connections per run, median of ${runs}; ECDSA P-256, private CA, verified)`);
      console.log('| how the agent dials | CPU per connection | resumed |');
      console.log('|---|---|---|');
      for (const mode of modes) {
        const figures: number[] = [];
        let reused = 0;
        for (let r = 0; r < runs; r++) {
          const m = await measure(mode, count);
          figures.push(m.usPerConn);
          reused = m.reused;
        }
        console.log(`| ${mode.name} | ${(median(figures) / 1000).toFixed(2)} ms | ${reused}/${count} |`);
      }
    } finally {
      child.kill();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return 0;
}

const serverAt = process.argv.indexOf('--tls-cost-server');
if (serverAt >= 0) await serve(process.argv[serverAt + 1] ?? '', process.argv[serverAt + 2] ?? '');
