/**
 * A control plane that floods and never reads (issue 15, part 2), against the
 * real executable. The hostile plane sends 200,000 `conn-ready` over as many
 * control connections as the agent gives it, reads nothing the agent sends
 * (no `pickup-failed`, no pong), and answers each data connection with HTTP 500
 * after 200 ms, keeping that many pick-ups in flight. Once all is sent, a
 * normal control plane replaces it at the same address. The agent must:
 *
 *  - drop, by itself, a control connection whose peer reads nothing
 *    (REVDIAL_CONTROL_SEND_STALLED) and come back,
 *  - keep its peak RSS (VmHWM) at or under 192 MiB,
 *  - print at most 5,000 lines,
 *  - never have more than its 32 pick-up dials open at once,
 *  - serve a request through the normal plane within 5 s of it taking over.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, test } from 'node:test';
import { FaultRelay } from './helpers/fault-relay.js';
import { spawnProbedAgent } from './helpers/faults.js';
import { readBody, startPlane, startWolf } from '../helpers/harness.js';
import { memory } from '../helpers/proc-stats.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';

after(() => {
  assertNoTokenLeaked();
});

const FLOOD = 200_000;
const LINES_PER_FRAME = 1_000;
const MAX_RSS_MIB = 192;
const MAX_STDOUT_LINES = 5_000;
const SERVE_WITHIN_MS = 5_000;
const PICKUP_SLOTS = 32;

/** A server-to-client binary WebSocket frame (unmasked). */
function binaryFrame(payload: Buffer): Buffer {
  const len = payload.length;
  let header: Buffer;
  if (len < 126) {
    header = Buffer.from([0x82, len]);
  } else if (len < 65_536) {
    header = Buffer.alloc(4);
    header[0] = 0x82;
    header[1] = 126;
    header.writeUInt16BE(len, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x82;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([header, payload]);
}

class HostilePlane {
  readonly server = http.createServer((_req, res) => res.writeHead(404).end());
  sent = 0;
  controlConnections = 0;
  dataPending = 0;
  dataPeak = 0;
  dataTotal = 0;
  readonly #sockets = new Set<Socket>();
  readonly #dialer = randomBytes(16).toString('hex');
  readonly #done: Promise<void>;
  #resolveDone!: () => void;

  constructor() {
    this.#done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      socket.on('error', () => undefined);
      if (/[?&]runnerid=/.test(req.url ?? '')) void this.#flood(req, socket);
      else this.#data(socket);
    });
  }

  /** Resolves once all of the flood was written to some control connection. */
  get done(): Promise<void> {
    return this.#done;
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  async #flood(req: IncomingMessage, socket: Socket): Promise<void> {
    this.controlConnections++;
    const accept = createHash('sha1')
      .update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    // Never read: no pickup-failed, no pong, nothing.
    socket.pause();
    while (this.sent < FLOOD && !socket.destroyed) {
      const n = Math.min(LINES_PER_FRAME, FLOOD - this.sent);
      const lines: string[] = [];
      for (let i = 0; i < n; i++) {
        const id = (this.sent + i).toString(16).padStart(32, '0');
        const connPath = `/revdial?revdial.dialer=${this.#dialer}&revdial.req=${id}`;
        lines.push(`${JSON.stringify({ command: 'conn-ready', connPath })}\n`);
      }
      this.sent += n;
      if (!socket.write(binaryFrame(Buffer.from(lines.join(''))))) {
        await new Promise<void>((resolve) => {
          socket.once('drain', resolve);
          socket.once('close', resolve);
        });
      }
    }
    if (this.sent >= FLOOD) this.#resolveDone();
  }

  /** Data connections: held 200 ms, then HTTP 500, as for a dialer the plane no longer knows. */
  #data(socket: Socket): void {
    this.dataTotal++;
    this.dataPending++;
    this.dataPeak = Math.max(this.dataPeak, this.dataPending);
    let counted = true;
    const done = (): void => {
      if (!counted) return;
      counted = false;
      this.dataPending--;
    };
    socket.on('close', done);
    setTimeout(() => {
      done();
      const body = '{"error":"unknown dialer"}';
      socket.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    }, 200).unref();
  }
}

test(
  `figure: ${FLOOD} conn-ready from a plane that never reads: RSS <= ${MAX_RSS_MIB} MiB, <= ${MAX_STDOUT_LINES} lines, served again within 5 s`,
  { timeout: 180_000 },
  async (t) => {
    const hostile = new HostilePlane();
    const hostilePort = await hostile.listen();
    t.after(() => hostile.close());
    const plane = await startPlane(t, { graceMs: 15_000 });
    const { local } = await startWolf(t);
    const relay = new FaultRelay(hostilePort);
    await relay.listen();
    t.after(() => relay.close());

    const runnerId = 'wolf-flood';
    const agent = spawnProbedAgent(t, {
      HELIX_API_URL: relay.url,
      WOLF_ID: 'flood',
      WOLF_LOCAL_ADDR: local,
      REVDIAL_PING_INTERVAL: '1',
      REVDIAL_PING_TIMEOUT: '3',
    });
    const pid = agent.child.pid!;
    let peakKiB = 0;
    const sampler = setInterval(() => {
      try {
        peakKiB = Math.max(peakKiB, memory(pid).peakRssKiB);
      } catch {
        /* exited */
      }
    }, 250);
    t.after(() => clearInterval(sampler));

    const started = Date.now();
    await hostile.done;
    const floodMs = Date.now() - started;
    const stalled = agent.logs.count((l) => l.code === 'REVDIAL_CONTROL_SEND_STALLED');
    // The flood is over: a normal control plane replaces the hostile one at the same address.
    relay.retarget(Number(new URL(plane.url).port));
    await hostile.close();
    const takenOverAt = Date.now();
    const res = await plane.request(runnerId, { path: '/api/v1/system/health' }).catch((err: unknown) => {
      throw new Error(`not served after the flood (${String(err)}); agent log tail:\n${agent.logs.raw.slice(-10).join('\n')}`);
    });
    const servedMs = Date.now() - takenOverAt;
    assert.equal(res.statusCode, 200);
    await readBody(res);

    peakKiB = Math.max(peakKiB, memory(pid).peakRssKiB);
    const peakMiB = peakKiB / 1024;
    const lines = agent.logs.raw.length;
    const codes = new Map<string, number>();
    for (const l of agent.logs.lines) if (l.code) codes.set(l.code, (codes.get(l.code) ?? 0) + 1);
    const suppressed = agent.logs.lines.reduce((n, l) => n + (typeof l.suppressed === 'number' ? l.suppressed : 0), 0);
    t.diagnostic(
      `flood of ${FLOOD} conn-ready over ${hostile.controlConnections} control connections in ${floodMs} ms ` +
        `(${stalled} dropped by the agent for not reading); ` +
        `data connections ${hostile.dataTotal} (at most ${hostile.dataPeak} at once); agent peak RSS ${peakMiB.toFixed(1)} MiB; ` +
        `${lines} stdout lines (${suppressed} warnings counted, not printed); served ${servedMs} ms after the normal plane took over`,
    );
    t.diagnostic(`log lines by code: ${JSON.stringify(Object.fromEntries(codes))}`);
    if (process.env.FLOOD_LOG) for (const l of agent.logs.raw) t.diagnostic(l);
    assert.ok(stalled >= 1, 'the agent never dropped a control connection whose peer read nothing');
    assert.ok(peakMiB <= MAX_RSS_MIB, `peak RSS ${peakMiB.toFixed(1)} MiB`);
    assert.ok(lines <= MAX_STDOUT_LINES, `${lines} lines on stdout`);
    assert.ok(hostile.dataPeak <= PICKUP_SLOTS, `${hostile.dataPeak} data connections at once`);
    assert.ok(servedMs <= SERVE_WITHIN_MS, `served ${servedMs} ms after the normal plane took over`);
    assert.ok(!agent.logs.lines.some((l) => l.level === 'fatal'));
  },
);
