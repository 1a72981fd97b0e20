/**
 * The data connection's WebSocket client (src/agent/tunnel/data-connection.ts)
 * against a hand-written server on loopback: every answer to the upgrade and
 * every frame is crafted byte by byte, so each check of RFC 6455 is driven
 * exactly, and what the client sends is parsed and checked on the server side.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { Duplex } from 'node:stream';
import { type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { ErrorCodes, HandshakeRejectedError, RevdialError } from '../../src/agent/errors.js';
import {
  DataConnection,
  type DataConnectionHandler,
  type DataConnectionOptions,
  dialDataConnection,
  openDataConnection,
} from '../../src/agent/tunnel/data-connection.js';
import { ManualClock } from '../helpers/harness.js';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const TOKEN = 'tok-3f9a1c';
const acceptOf = (key: string): string =>
  createHash('sha1')
    .update(key + GUID)
    .digest('base64');

interface Upgrade {
  socket: net.Socket;
  requestHead: string;
  headers: Map<string, string>;
  key: string;
  /** Client bytes after the request head, parsed as frames. */
  frames: ClientFrames;
}

/** A plane that reads the upgrade request and hands it to `onUpgrade`. */
async function rawPlane(t: TestContext, onUpgrade: (u: Upgrade) => void): Promise<{ url: URL; sockets: net.Socket[] }> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.removeListener('data', onData);
      const text = head.toString('latin1', 0, end);
      const headers = new Map<string, string>();
      for (const line of text.split('\r\n').slice(1)) {
        const i = line.indexOf(':');
        headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
      }
      const frames = new ClientFrames();
      socket.on('data', (c: Buffer) => frames.push(c));
      socket.on('end', () => frames.ended());
      frames.push(head.subarray(end + 4));
      onUpgrade({ socket, requestHead: text, headers, key: headers.get('sec-websocket-key') ?? '', frames });
    };
    socket.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const port = (server.address() as AddressInfo).port;
  return { url: new URL(`ws://127.0.0.1:${port}/api/v1/revdial?revdial.dialer=abc&revdial.req=def`), sockets };
}

function switching(key: string, extra = ''): string {
  return `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\n${extra}\r\n`;
}

/** A server frame; `mask`, `rsv` and `length` let tests break the rules. */
function frame(
  opcode: number,
  payload: Buffer = Buffer.alloc(0),
  o: { fin?: boolean; rsv?: number; mask?: boolean; length64?: [number, number] } = {},
): Buffer {
  const fin = o.fin ?? true;
  const len = payload.length;
  const head: number[] = [(fin ? 0x80 : 0) | ((o.rsv ?? 0) << 4) | opcode];
  const m = o.mask ? 0x80 : 0;
  if (o.length64) {
    const b = Buffer.alloc(9);
    b[0] = m | 127;
    b.writeUInt32BE(o.length64[0], 1);
    b.writeUInt32BE(o.length64[1], 5);
    head.push(...b);
  } else if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else {
    const b = Buffer.alloc(9);
    b[0] = m | 127;
    b.writeUInt32BE(Math.floor(len / 2 ** 32), 1);
    b.writeUInt32BE(len >>> 0, 5);
    head.push(...b);
  }
  if (!o.mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i]! ^= key[i & 3]!;
  return Buffer.concat([Buffer.from(head), key, body]);
}

const closePayload = (code: number, reason = ''): Buffer => {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason));
  b.writeUInt16BE(code, 0);
  b.write(reason, 2);
  return b;
};

interface ClientFrame {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  key: Buffer;
  payload: Buffer;
}

/** Parses what the client sends, as a server must: every frame masked. */
class ClientFrames {
  readonly frames: ClientFrame[] = [];
  #buf = Buffer.alloc(0);
  #waiters: (() => void)[] = [];
  isEnded = false;

  push(chunk: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, chunk]);
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) break;
      let len = b[1]! & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = b.readUInt32BE(2) * 2 ** 32 + b.readUInt32BE(6);
        at = 10;
      }
      const masked = (b[1]! & 0x80) !== 0;
      const keyLen = masked ? 4 : 0;
      if (b.length < at + keyLen + len) break;
      const key = Buffer.from(b.subarray(at, at + keyLen));
      const payload = Buffer.from(b.subarray(at + keyLen, at + keyLen + len));
      if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= key[i & 3]!;
      this.frames.push({ fin: (b[0]! & 0x80) !== 0, rsv: (b[0]! >> 4) & 7, opcode: b[0]! & 0x0f, masked, key, payload });
      this.#buf = b.subarray(at + keyLen + len);
    }
    this.#wake();
  }

  ended(): void {
    this.isEnded = true;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  async until<T>(pred: () => T | undefined, what: string, timeoutMs = 5000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = pred();
      if (got !== undefined && got !== false) return got;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames.map((f) => [f.opcode, f.payload.length]))}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  closeFrame(): Promise<ClientFrame> {
    return this.until(() => this.frames.find((f) => f.opcode === 0x8), 'a close frame');
  }

  payloadOf(opcode: number): Buffer {
    return Buffer.concat(this.frames.filter((f) => f.opcode === opcode).map((f) => f.payload));
  }
}

/** Records what the data connection hands its owner. */
class Recorder implements DataConnectionHandler {
  readonly chunks: Buffer[] = [];
  endError: RevdialError | undefined;
  endCalls = 0;
  closeCalls = 0;
  readonly ended: Promise<void>;
  readonly closed: Promise<void>;
  #ended!: () => void;
  #closed!: () => void;
  onData: ((chunk: Buffer) => void) | undefined;

  constructor() {
    this.ended = new Promise((r) => (this.#ended = r));
    this.closed = new Promise((r) => (this.#closed = r));
  }

  data(chunk: Buffer): void {
    this.chunks.push(Buffer.from(chunk));
    this.onData?.(chunk);
  }
  drain(): void {
    // Backpressure is tested on its own below.
  }
  end(error: RevdialError | undefined): void {
    assert.equal(this.closeCalls, 0, 'end comes before close');
    this.endCalls++;
    this.endError = error;
    this.#ended();
  }
  close(): void {
    this.closeCalls++;
    this.#closed();
  }
  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

async function dial(url: URL, options: Partial<DataConnectionOptions> = {}): Promise<DataConnection> {
  const socket = net.connect({ host: url.hostname, port: Number(url.port) });
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return openDataConnection(socket, url, { token: TOKEN, userAgent: 'wolf-revdial-client/test', handshakeTimeoutMs: 5000, ...options });
}

/** Fails the test on any uncaught exception while it runs. */
function noCrash(t: TestContext): () => void {
  let uncaught: unknown;
  const on = (err: unknown): void => {
    uncaught = err;
  };
  process.on('uncaughtException', on);
  t.after(() => process.removeListener('uncaughtException', on));
  return () => assert.equal(uncaught, undefined, 'no uncaught exception');
}

test('the upgrade request: GET with key, version 13, bearer token, user agent, no extension or subprotocol', async (t) => {
  let seen: Upgrade | undefined;
  const { url } = await rawPlane(t, (u) => {
    seen = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  dc.terminate();
  assert.ok(seen);
  const lines = seen.requestHead.split('\r\n');
  assert.equal(lines[0], 'GET /api/v1/revdial?revdial.dialer=abc&revdial.req=def HTTP/1.1');
  assert.equal(seen.headers.get('host'), url.host);
  assert.equal(seen.headers.get('upgrade'), 'websocket');
  assert.equal(seen.headers.get('connection'), 'Upgrade');
  assert.equal(seen.headers.get('sec-websocket-version'), '13');
  assert.equal(seen.headers.get('authorization'), `Bearer ${TOKEN}`);
  assert.equal(seen.headers.get('user-agent'), 'wolf-revdial-client/test');
  assert.equal(Buffer.from(seen.key, 'base64').length, 16, 'a 16-byte key');
  assert.equal(seen.headers.has('sec-websocket-extensions'), false);
  assert.equal(seen.headers.has('sec-websocket-protocol'), false);
  // Two dials, two keys.
  const keys = new Set<string>([seen.key]);
  const dc2 = await dial(url);
  dc2.terminate();
  keys.add(seen.key);
  assert.equal(keys.size, 2);
});

const badAnswers: [string, (key: string) => string, string][] = [
  ['a wrong Sec-WebSocket-Accept', () => switching(randomBytes(16).toString('base64')), ErrorCodes.HANDSHAKE_INVALID],
  ['no Sec-WebSocket-Accept', () => 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n', ErrorCodes.HANDSHAKE_INVALID],
  [
    'no Upgrade header',
    (key) => `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\n\r\n`,
    ErrorCodes.HANDSHAKE_INVALID,
  ],
  [
    'no Connection: Upgrade',
    (key) => `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\n\r\n`,
    ErrorCodes.HANDSHAKE_INVALID,
  ],
  ['an imposed extension', (key) => switching(key, 'Sec-WebSocket-Extensions: permessage-deflate\r\n'), ErrorCodes.HANDSHAKE_INVALID],
  ['an imposed subprotocol', (key) => switching(key, 'Sec-WebSocket-Protocol: chat\r\n'), ErrorCodes.HANDSHAKE_INVALID],
  ['not HTTP at all', () => 'SSH-2.0-OpenSSH_9.6\r\n\r\n', ErrorCodes.HANDSHAKE_INVALID],
  ['200 instead of 101', () => 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', ErrorCodes.HANDSHAKE_REJECTED],
];

for (const [what, answer, code] of badAnswers) {
  test(`an upgrade answered with ${what}: ${code}, the socket destroyed`, async (t) => {
    const check = noCrash(t);
    const { url } = await rawPlane(t, (u) => u.socket.write(answer(u.key)));
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    await once(socket, 'connect');
    await assert.rejects(openDataConnection(socket, url, { token: TOKEN, userAgent: 'ua', handshakeTimeoutMs: 5000 }), (err: unknown) => {
      assert.ok(err instanceof RevdialError);
      assert.equal(err.code, code);
      assert.doesNotMatch(err.message, new RegExp(TOKEN));
      return true;
    });
    assert.equal(socket.destroyed, true);
    check();
  });
}

test('500 with a JSON body (unknown dialer): REVDIAL_HANDSHAKE_REJECTED with the status and a body preview', async (t) => {
  const body = JSON.stringify({ error: 'revdial: unknown dialer' });
  const { url } = await rawPlane(t, (u) =>
    u.socket.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`),
  );
  await assert.rejects(dial(url), (err: unknown) => {
    assert.ok(err instanceof HandshakeRejectedError);
    assert.equal(err.code, ErrorCodes.HANDSHAKE_REJECTED);
    assert.equal(err.status, 500);
    assert.match(err.body, /unknown dialer/);
    return true;
  });
});

test('a chunked refusal body is previewed without its chunk sizes, even when the server keeps the connection open', async (t) => {
  const { url } = await rawPlane(t, (u) =>
    u.socket.write('HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nupstr\r\n8\r\neam gone\r\n0\r\n\r\n'),
  );
  const clock = new ManualClock();
  const state = { settled: false };
  const pending = dial(url, { clock, handshakeTimeoutMs: 600_000 }).finally(() => {
    state.settled = true;
  });
  pending.catch(() => undefined);
  // The body is shorter than the preview and the socket stays open: the preview waits 1 s
  // (of the injected clock) at most. Time moves a second at a time until it gives up.
  for (let s = 0; s < 300 && !state.settled; s++) {
    clock.tick(1000);
    await new Promise((r) => setTimeout(r, 10));
  }
  await assert.rejects(pending, (err: unknown) => err instanceof HandshakeRejectedError && err.status === 502 && err.body === 'upstream gone');
});

test('401: REVDIAL_AUTH_REJECTED naming the token setting, never the token', async (t) => {
  const { url } = await rawPlane(t, (u) => u.socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 23\r\n\r\nauthentication required'));
  await assert.rejects(dial(url), (err: unknown) => {
    assert.ok(err instanceof HandshakeRejectedError);
    assert.equal(err.code, ErrorCodes.AUTH_REJECTED);
    assert.equal(err.status, 401);
    assert.match(err.message, /RUNNER_TOKEN/);
    assert.doesNotMatch(err.message, new RegExp(TOKEN));
    return true;
  });
});

test('a socket that dies before any answer byte: REVDIAL_DATA_SOCKET_STALE (EOF, reset, already closed)', async (t) => {
  const { url } = await rawPlane(t, (u) => u.socket.end());
  await assert.rejects(dial(url), (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.DATA_SOCKET_STALE);

  const { url: url2 } = await rawPlane(t, (u) => u.socket.resetAndDestroy());
  await assert.rejects(dial(url2), (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.DATA_SOCKET_STALE);

  // A warm socket whose peer closed while it waited: closed before we write.
  const server = net.createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const socket = net.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  socket.on('error', () => undefined);
  await once(socket, 'close');
  await assert.rejects(
    openDataConnection(socket, url, { token: TOKEN, userAgent: 'ua', handshakeTimeoutMs: 5000 }),
    (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.DATA_SOCKET_STALE,
  );
});

test('a socket that dies in the middle of the answer is not stale: REVDIAL_CONNECT_FAILED', async (t) => {
  const { url } = await rawPlane(t, (u) => u.socket.end('HTTP/1.1 101 Switching'));
  await assert.rejects(dial(url), (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.CONNECT_FAILED);
});

test('a warm socket found dead is replaced once by a fresh one; a fresh one is not retried', async (t) => {
  const { url } = await rawPlane(t, (u) => u.socket.write(switching(u.key)));
  const port = Number(url.port);
  const dead = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => dead.close(() => r())));
  const calls: { fresh: boolean }[] = [];
  const connectTo = async (p: number): Promise<net.Socket> => {
    const s = net.connect({ host: '127.0.0.1', port: p });
    s.on('error', () => undefined);
    await once(s, 'connect');
    return s;
  };
  let tokenReads = 0;
  const options = { token: () => `${TOKEN}-${++tokenReads}`, userAgent: 'ua', handshakeTimeoutMs: 5000 };
  const warmFirst = {
    connect: async (_u: URL, _s: AbortSignal, opts?: { fresh?: boolean }) => {
      calls.push({ fresh: opts?.fresh === true });
      return opts?.fresh ? { socket: await connectTo(port), warm: false } : { socket: await connectTo((dead.address() as AddressInfo).port), warm: true };
    },
  };
  const dc = await dialDataConnection(warmFirst, url, new AbortController().signal, options);
  dc.terminate();
  assert.deepEqual(calls, [{ fresh: false }, { fresh: true }]);
  assert.equal(tokenReads, 2, 'the token is read for each upgrade');

  calls.length = 0;
  const freshOnly = {
    connect: async (_u: URL, _s: AbortSignal, opts?: { fresh?: boolean }) => {
      calls.push({ fresh: opts?.fresh === true });
      return { socket: await connectTo((dead.address() as AddressInfo).port), warm: false };
    },
  };
  await assert.rejects(
    dialDataConnection(freshOnly, url, new AbortController().signal, options),
    (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.DATA_SOCKET_STALE,
  );
  assert.deepEqual(calls, [{ fresh: false }]);
});

test('no answer within the handshake time limit: REVDIAL_HANDSHAKE_TIMEOUT (injected clock)', async (t) => {
  let requested!: () => void;
  const seen = new Promise<void>((resolve) => (requested = resolve));
  const { url } = await rawPlane(t, () => requested());
  const clock = new ManualClock();
  const pending = dial(url, { clock, handshakeTimeoutMs: 3000 });
  // The timer is armed before the request is written: once the plane has it, time may move.
  await seen;
  clock.tick(2999);
  clock.tick(1);
  await assert.rejects(pending, (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.HANDSHAKE_TIMEOUT);
});

test('an abort during the upgrade rejects with the signal reason', async (t) => {
  const { url } = await rawPlane(t, () => undefined);
  const ac = new AbortController();
  const pending = dial(url, { signal: ac.signal });
  const reason = new RevdialError(ErrorCodes.SHUTTING_DOWN, 'stop');
  setTimeout(() => ac.abort(reason), 20);
  await assert.rejects(pending, (err: unknown) => err === reason);
});

test('a token with a control character never reaches the wire', async (t) => {
  let requests = 0;
  const { url } = await rawPlane(t, () => requests++);
  await assert.rejects(dial(url, { token: 'abc\r\nX-Evil: 1' }), (err: unknown) => err instanceof RevdialError && err.code === ErrorCodes.CONFIG_INVALID);
  assert.equal(requests, 0);
});

test('bytes right behind the 101, in the same write, are delivered once started, in order', async (t) => {
  const request = Buffer.from('GET /api/v1/system/health HTTP/1.1\r\nHost: wolf\r\n\r\n');
  const { url } = await rawPlane(t, (u) =>
    u.socket.write(Buffer.concat([Buffer.from(switching(u.key)), frame(2, request.subarray(0, 10)), frame(2, request.subarray(10))])),
  );
  const dc = await dial(url);
  // Nothing is lost while the connection waits for its owner.
  await new Promise((r) => setTimeout(r, 50));
  const rec = new Recorder();
  dc.start(rec);
  const deadline = Date.now() + 5000;
  while (rec.bytes.length < request.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(rec.bytes, request);
  dc.terminate();
});

test('what the client sends: binary frames, FIN set, always masked, payload intact, large lengths encoded', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  dc.start(new Recorder());
  const sizes = [0, 1, 31, 32, 125, 126, 65535, 65536, 300_000];
  const sent = sizes.map((n) => randomBytes(n));
  // A view into a buffer that is overwritten right after: `send` must copy.
  for (const payload of sent) {
    const scratch = Buffer.from(payload);
    dc.send(scratch);
    scratch.fill(0xaa);
  }
  await up.frames.until(() => up.frames.frames.length >= sizes.length || undefined, 'all frames');
  up.frames.frames.forEach((f, i) => {
    assert.equal(f.opcode, 2, 'binary');
    assert.equal(f.fin, true);
    assert.equal(f.rsv, 0);
    assert.equal(f.masked, true, 'client frames are masked');
    assert.deepEqual(f.payload, sent[i], `frame ${i} (${sizes[i]} bytes)`);
  });
  const keys = new Set(up.frames.frames.map((f) => f.key.toString('hex')));
  assert.ok(keys.size >= sizes.length - 1, 'a fresh key per frame');
  dc.terminate();
});

test('ping is answered with a pong echoing its payload; control frames between fragments of a message', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  const rec = new Recorder();
  dc.start(rec);
  const parts = [randomBytes(1000), randomBytes(70_000), randomBytes(5)];
  up.socket.write(
    Buffer.concat([
      frame(2, parts[0], { fin: false }),
      frame(9, Buffer.from('ping-1')),
      frame(0, parts[1], { fin: false }),
      frame(10, Buffer.from('unsolicited pong')),
      frame(9, Buffer.from('ping-2')),
      frame(0, parts[2], { fin: true }),
      frame(2, Buffer.from('next message')),
    ]),
  );
  const want = Buffer.concat([...parts, Buffer.from('next message')]);
  await up.frames.until(() => up.frames.frames.filter((f) => f.opcode === 10).length >= 2 || undefined, 'two pongs');
  const pongs = up.frames.frames.filter((f) => f.opcode === 10);
  assert.deepEqual(
    pongs.map((f) => f.payload.toString()),
    ['ping-1', 'ping-2'],
  );
  assert.ok(pongs.every((f) => f.masked));
  const deadline = Date.now() + 5000;
  while (rec.bytes.length < want.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(rec.bytes, want);
  assert.equal(rec.endCalls, 0);
  dc.terminate();
});

test('close handshake started by the plane: the close code is echoed, the socket ended, end() then close()', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  const rec = new Recorder();
  dc.start(rec);
  up.socket.write(Buffer.concat([frame(2, Buffer.from('last words')), frame(8, closePayload(1001, 'going away'))]));
  const reply = await up.frames.closeFrame();
  assert.equal(reply.payload.readUInt16BE(0), 1001);
  assert.equal(reply.masked, true);
  await up.frames.until(() => up.frames.isEnded || undefined, 'the client FIN');
  await rec.ended;
  assert.equal(rec.endError, undefined);
  assert.equal(rec.bytes.toString(), 'last words');
  up.socket.end();
  await rec.closed;
  assert.equal(rec.endCalls, 1);
  assert.equal(rec.closeCalls, 1);
});

test('close handshake started by the agent: close 1000 after the data, the socket ended once the plane answers', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  const rec = new Recorder();
  dc.start(rec);
  dc.send(Buffer.from('response'));
  dc.close(1000);
  assert.equal(dc.writable, false);
  const close = await up.frames.closeFrame();
  assert.equal(close.payload.readUInt16BE(0), 1000);
  assert.equal(up.frames.payloadOf(2).toString(), 'response', 'data before the close frame');
  assert.equal(up.frames.isEnded, false, 'the agent waits for the plane to answer');
  up.socket.write(frame(8, closePayload(1000)));
  await up.frames.until(() => up.frames.isEnded || undefined, 'the client FIN');
  up.socket.end();
  await rec.closed;
  assert.equal(rec.endError, undefined);
});

test('a plane that just drops TCP (as the Go side does): a normal end', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  const rec = new Recorder();
  dc.start(rec);
  up.socket.end(frame(2, Buffer.from('bye')));
  await rec.closed;
  assert.equal(rec.endError, undefined);
  assert.equal(rec.bytes.toString(), 'bye');
});

const malformed: [string, () => Buffer, number, string][] = [
  ['a masked frame', () => frame(2, Buffer.from('x'), { mask: true }), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['RSV1 set (no extension agreed)', () => frame(2, Buffer.from('x'), { rsv: 4 }), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['RSV3 set', () => frame(2, Buffer.from('x'), { rsv: 1 }), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['the unknown opcode 3', () => frame(3, Buffer.from('x')), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['the unknown control opcode 0xB', () => frame(0xb), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a text frame', () => frame(1, Buffer.from('{"hello":1}')), 1003, ErrorCodes.PROTOCOL_TEXT_FRAME],
  ['a ping of 126 bytes', () => frame(9, Buffer.alloc(126)), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a fragmented ping', () => frame(9, Buffer.from('p'), { fin: false }), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a continuation outside a message', () => frame(0, Buffer.from('x')), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  [
    'a new message inside a fragmented one',
    () => Buffer.concat([frame(2, Buffer.from('a'), { fin: false }), frame(2, Buffer.from('b'))]),
    1002,
    ErrorCodes.PROTOCOL_FRAME_INVALID,
  ],
  ['a 64-bit length with the top bit set', () => frame(2, Buffer.alloc(0), { length64: [0x80000000, 0] }), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a length beyond 2^53', () => frame(2, Buffer.alloc(0), { length64: [0x00200000, 0] }), 1009, ErrorCodes.FRAME_TOO_LARGE],
  ['a close frame with a one-byte payload', () => frame(8, Buffer.from([3])), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a close frame with the reserved code 1005', () => frame(8, closePayload(1005)), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a close frame with the code 999', () => frame(8, closePayload(999)), 1002, ErrorCodes.PROTOCOL_FRAME_INVALID],
  ['a close reason that is not UTF-8', () => frame(8, Buffer.concat([closePayload(1000), Buffer.from([0xff, 0xfe])])), 1007, ErrorCodes.PROTOCOL_FRAME_INVALID],
];

for (const [what, bytes, closeCode, errorCode] of malformed) {
  test(`${what}: close ${closeCode}, ${errorCode}, nothing after it delivered, no crash`, async (t) => {
    const check = noCrash(t);
    let up!: Upgrade;
    const { url } = await rawPlane(t, (u) => {
      up = u;
      u.socket.write(switching(u.key));
    });
    const dc = await dial(url);
    const rec = new Recorder();
    dc.start(rec);
    up.socket.write(Buffer.concat([frame(2, Buffer.from('before')), bytes(), frame(2, Buffer.from('after'))]));
    const close = await up.frames.closeFrame();
    assert.equal(close.payload.readUInt16BE(0), closeCode);
    await rec.ended;
    assert.equal(rec.endError?.code, errorCode);
    assert.doesNotMatch(rec.bytes.toString('latin1'), /after/);
    await up.frames.until(() => up.frames.isEnded || undefined, 'the client FIN');
    up.socket.end();
    await rec.closed;
    check();
  });
}

test('streaming: a 16 MiB message reaches the owner in pieces no larger than a socket read, byte-exact', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  const rec = new Recorder();
  let largest = 0;
  let total = 0;
  const hash = createHash('sha256');
  // Keep only the digest: the recorder's copies would be the 16 MiB this test rules out.
  rec.data = (chunk: Buffer): void => {
    largest = Math.max(largest, chunk.length);
    total += chunk.length;
    hash.update(chunk);
  };
  dc.start(rec);
  const size = 16 * 1024 * 1024;
  const body = randomBytes(size);
  up.socket.write(frame(2, body));
  const deadline = Date.now() + 20_000;
  while (total < size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(total, size);
  assert.equal(hash.digest('hex'), createHash('sha256').update(body).digest('hex'));
  assert.ok(largest <= 256 * 1024, `largest piece ${largest} bytes`);
  dc.terminate();
});

test('backpressure: an owner that stops reading holds the plane back; memory stays bounded', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const dc = await dial(url);
  let delivered = 0;
  const rec = new Recorder();
  rec.data = (chunk: Buffer): void => {
    delivered += chunk.length;
    // A Wolf that never reads: the first write "fills" it and the owner pauses.
    dc.pause();
  };
  dc.start(rec);
  const MiB = 1024 * 1024;
  const block = randomBytes(MiB);
  let accepted = 0;
  const offered = 256;
  for (let i = 0; i < offered; i++) up.socket.write(frame(2, block), (err) => !err && (accepted += MiB));
  // Wait until the plane's writes stop completing.
  let last = -1;
  for (let quiet = 0; quiet < 5;) {
    await new Promise((r) => setTimeout(r, 100));
    if (accepted === last) quiet++;
    else {
      quiet = 0;
      last = accepted;
    }
  }
  assert.ok(accepted < 96 * MiB, `${accepted / MiB} MiB left the plane with the owner paused`);
  assert.ok(delivered <= 256 * 1024, `${delivered} bytes delivered before the pause held`);
  assert.ok(up.socket.writableLength > 128 * MiB, 'the rest waits at the plane');
  // Reading again lets everything through.
  rec.data = (chunk: Buffer): void => {
    delivered += chunk.length;
  };
  dc.resume();
  const deadline = Date.now() + 30_000;
  while (delivered < offered * MiB && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(delivered, offered * MiB);
  dc.terminate();
});

test('send returns false past the high-water mark and drain follows once the socket empties', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
    u.socket.pause(); // the plane does not read for now
  });
  const dc = await dial(url, { highWaterMark: 64 * 1024 });
  let drains = 0;
  const rec = new Recorder();
  rec.drain = (): void => {
    drains++;
  };
  dc.start(rec);
  const block = Buffer.alloc(256 * 1024);
  let sends = 0;
  while (dc.send(block) && sends < 10_000) sends++;
  assert.ok(sends < 10_000, 'send reported backpressure');
  assert.ok(dc.bufferedAmount >= 64 * 1024);
  up.socket.resume();
  const deadline = Date.now() + 10_000;
  while (drains === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(drains, 1);
  dc.terminate();
});

test('liveness: pings after ping-interval of silence, closed after ping-timeout when nothing answers (injected clock)', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const clock = new ManualClock();
  const dc = await dial(url, { clock, pingIntervalMs: 1000, pingTimeoutMs: 3000 });
  const rec = new Recorder();
  dc.start(rec);
  clock.tick(1000); // heard the 101 just now: no ping yet
  for (let s = 2; s <= 3; s++) {
    clock.tick(1000);
    await up.frames.until(() => up.frames.frames.filter((f) => f.opcode === 9).length >= s - 1 || undefined, `ping ${s - 1}`);
  }
  assert.equal(rec.endCalls, 0);
  clock.tick(1000);
  await rec.closed;
  assert.equal(rec.endError?.code, ErrorCodes.DATA_PING_TIMEOUT);
});

test('liveness: a quiet connection whose plane answers pings is never cut', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const clock = new ManualClock();
  const socket = net.connect({ host: url.hostname, port: Number(url.port) });
  await once(socket, 'connect');
  const dc = await openDataConnection(socket, url, {
    token: TOKEN,
    userAgent: 'ua',
    handshakeTimeoutMs: 5000,
    clock,
    pingIntervalMs: 1000,
    pingTimeoutMs: 3000,
  });
  const rec = new Recorder();
  dc.start(rec);
  let answered = 0;
  for (let s = 0; s < 60; s++) {
    clock.tick(1000);
    if (s % 2 === 0) continue;
    // Every other second a ping is due: answer it, and go on once the agent has read the pong.
    await up.frames.until(() => up.frames.frames.filter((f) => f.opcode === 9).length > answered || undefined, `ping ${answered + 1}`);
    answered++;
    const read = socket.bytesRead;
    up.socket.write(frame(10));
    while (socket.bytesRead < read + 2) await new Promise((r) => setImmediate(r));
  }
  assert.equal(answered, 30);
  assert.equal(rec.endCalls, 0, 'still open after 60 s of quiet');
  dc.terminate();
});

test('liveness: a plane that reads slowly (our bytes back up, its pongs come late) is not cut', async (t) => {
  let up!: Upgrade;
  const { url } = await rawPlane(t, (u) => {
    up = u;
    u.socket.write(switching(u.key));
  });
  const clock = new ManualClock();
  const dc = await dial(url, { clock, pingIntervalMs: 1000, pingTimeoutMs: 3000 });
  const rec = new Recorder();
  dc.start(rec);
  // The plane stops reading: what we send piles up in the socket.
  up.socket.pause();
  const block = Buffer.alloc(1024 * 1024);
  while (dc.send(block)) {
    /* fill up to the high-water mark */
  }
  for (let s = 0; s < 30; s++) clock.tick(1000);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(rec.endCalls, 0, 'backed-up bytes are not a dead path');
  assert.ok(dc.bufferedAmount > 0);
  dc.terminate();
});

test('liveness: silence while the owner holds reading paused (Wolf not reading) is not a dead path', async (t) => {
  const { url } = await rawPlane(t, (u) => u.socket.write(switching(u.key)));
  const clock = new ManualClock();
  const dc = await dial(url, { clock, pingIntervalMs: 1000, pingTimeoutMs: 3000 });
  const rec = new Recorder();
  dc.start(rec);
  dc.pause();
  clock.tick(30_000);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(rec.endCalls, 0);
  dc.terminate();
});

/** A socket stand-in whose reads the test delivers chunk by chunk, exactly as split. */
class ChunkedSocket extends Duplex {
  readonly written: Buffer[] = [];
  override _read(): void {
    // The test emits 'data' itself.
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.written.push(chunk);
    cb();
  }
  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
}

const message = fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { minLength: 1, maxLength: 4 });
const stream = fc.array(fc.tuple(message, fc.array(fc.uint8Array({ maxLength: 125 }), { maxLength: 2 })), { minLength: 1, maxLength: 8 });

test('property: any split of a valid frame stream delivers the same bytes and pongs', () => {
  fc.assert(
    fc.property(stream, fc.array(fc.nat(), { maxLength: 40 }), (messages, cuts) => {
      // Each message: its fragments, with the pings interleaved after the first fragment.
      const frames: Buffer[] = [];
      const pings: Buffer[] = [];
      const want: Buffer[] = [];
      for (const [fragments, ping] of messages) {
        fragments.forEach((f, i) => {
          frames.push(frame(i === 0 ? 2 : 0, Buffer.from(f), { fin: i === fragments.length - 1 }));
          want.push(Buffer.from(f));
          if (i === 0)
            for (const p of ping) {
              frames.push(frame(9, Buffer.from(p)));
              pings.push(Buffer.from(p));
            }
        });
      }
      const wire = Buffer.concat(frames);
      const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
      const socket = new ChunkedSocket();
      const dc = new DataConnection(socket as unknown as net.Socket, Buffer.alloc(0), { token: '', userAgent: '', handshakeTimeoutMs: 1 });
      const rec = new Recorder();
      dc.start(rec);
      let at = 0;
      for (const p of [...points, wire.length]) {
        if (p > at) socket.emit('data', wire.subarray(at, p));
        at = Math.max(at, p);
      }
      assert.deepEqual(rec.bytes, Buffer.concat(want));
      assert.equal(rec.endCalls, 0);
      const got = new ClientFrames();
      for (const w of socket.written) got.push(w);
      assert.deepEqual(
        got.frames.map((f) => f.payload),
        pings,
      );
      assert.ok(got.frames.every((f) => f.opcode === 10 && f.masked));
    }),
    { numRuns: 400 },
  );
});

test('property: random bytes after the 101 never crash; the connection stays sane or fails with a code', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 400 }), fc.array(fc.nat(), { maxLength: 10 }), (bytes, cuts) => {
      const socket = new ChunkedSocket();
      const dc = new DataConnection(socket as unknown as net.Socket, Buffer.alloc(0), { token: '', userAgent: '', handshakeTimeoutMs: 1 });
      const rec = new Recorder();
      dc.start(rec);
      const wire = Buffer.from(bytes);
      let at = 0;
      for (const p of [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b).concat(wire.length)) {
        if (p > at) socket.emit('data', wire.subarray(at, p));
        at = Math.max(at, p);
      }
      assert.ok(rec.bytes.length <= wire.length);
      if (rec.endError) assert.match(rec.endError.code, /^REVDIAL_/);
      dc.terminate();
    }),
    { numRuns: 1000 },
  );
});
