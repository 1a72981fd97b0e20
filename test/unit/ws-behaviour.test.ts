/**
 * What the agent relies on in `ws`, pinned to the exact version in
 * package.json. Data connections no longer use `ws` (tunnel/data-connection.ts
 * frames, masks and streams on its own), so nothing depends any more on how
 * `ws` copies a frame it masks or on its shared read buffer. The control
 * connection still runs on `ws` (net/ws-dial.ts, control/session.ts), and
 * leans on these behaviours; an upgrade that changes one fails here:
 *
 * - `pause()` inside the 'open' listener holds back messages the server sent
 *   in the same segment as its 101 until `resume()` (ws-dial `pauseOnOpen`:
 *   the plane's first keep-alive and queued conn-ready);
 * - a custom `generateMask` is called for every frame and its key is used;
 * - `maxPayload` refuses a longer message with close code 1009 (the bound on
 *   what a hostile plane can make the control connection hold);
 * - binary messages arrive as Buffers flagged binary, text ones flagged not
 *   binary (the session drops a plane that sends text);
 * - a server ping is answered with a pong without the agent's help;
 * - a non-101 answer raises 'unexpected-response' (coded refusal errors).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import { createRequire } from 'node:module';
import WebSocket, { WebSocketServer } from 'ws';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import { dialWebSocket } from '../../src/agent/net/ws-dial.js';
import { ROOT } from '../helpers/harness.js';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const transport = { token: () => 'tok', userAgent: 'ws-behaviour-test', rejectUnauthorized: true };

test('ws is pinned to one exact version, and that version is the one installed', () => {
  const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { dependencies: Record<string, string> };
  const wanted = pkg.dependencies.ws;
  assert.match(wanted ?? '', /^\d+\.\d+\.\d+$/, 'package.json names an exact ws version (no ^ or ~)');
  const installed = (createRequire(`${ROOT}package.json`)('ws/package.json') as { version: string }).version;
  assert.equal(installed, wanted);
});

/** A raw server: answers the upgrade with `extra` bytes in the same write. */
async function rawServer(t: TestContext, extra: (key: string) => Buffer, afterHead?: (chunk: Buffer) => void): Promise<URL> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      if (head.includes('\r\n\r\n')) {
        afterHead?.(chunk);
        return;
      }
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      const key = /sec-websocket-key: (\S+)/i.exec(head)?.[1] ?? '';
      const accept = createHash('sha1')
        .update(key + GUID)
        .digest('base64');
      socket.write(
        Buffer.concat([
          Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`),
          extra(key),
        ]),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return new URL(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/revdial?runnerid=x`);
}

test('pause in the open listener holds messages sent right behind the 101 until resume', async (t) => {
  const line = Buffer.from('{"command":"keep-alive"}\n');
  const url = await rawServer(t, () => Buffer.concat([Buffer.from([0x82, line.length]), line]));
  const ws = await dialWebSocket(url, { transport, handshakeTimeoutMs: 5000, maxPayload: 1024, pauseOnOpen: true });
  t.after(() => ws.terminate());
  assert.equal(ws.isPaused, true);
  // Well after ws would have emitted the message, had it not been paused.
  await new Promise((r) => setTimeout(r, 100));
  const got = new Promise<[Buffer, boolean]>((resolve) => ws.once('message', (data, isBinary) => resolve([data as Buffer, isBinary])));
  ws.resume();
  const [data, isBinary] = await got;
  assert.equal(isBinary, true);
  assert.ok(Buffer.isBuffer(data));
  assert.deepEqual(data, line);
});

test('generateMask is called for each frame and its key masks the frame', async (t) => {
  // A raw server: ws's own server unmasks what it reads in place, hiding the wire bytes.
  const raw: Buffer[] = [];
  const url = await rawServer(
    t,
    () => Buffer.alloc(0),
    (chunk) => raw.push(Buffer.from(chunk)),
  );
  const keys: Buffer[] = [];
  const ws = new WebSocket(url, {
    perMessageDeflate: false,
    generateMask: (mask: Buffer) => {
      const key = randomBytes(4);
      key.copy(mask);
      keys.push(key);
    },
  });
  t.after(() => ws.terminate());
  await new Promise((r) => ws.once('open', r));
  const payload = Buffer.from('{"command":"pickup-failed","connPath":"/revdial?x"}\n');
  ws.send(payload, { binary: true });
  const deadline = Date.now() + 5000;
  while (Buffer.concat(raw).length < 2 + 4 + payload.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  const frame = Buffer.concat(raw);
  assert.equal(keys.length, 1);
  assert.equal(frame[1]! & 0x80, 0x80, 'masked');
  assert.equal(frame[1]! & 0x7f, payload.length);
  assert.deepEqual(frame.subarray(2, 6), keys[0], 'the key generateMask wrote is the one on the wire');
  const unmasked = Buffer.from(frame.subarray(6, 6 + payload.length));
  assert.notDeepEqual(unmasked, payload, 'masked on the wire');
  for (let i = 0; i < unmasked.length; i++) unmasked[i]! ^= keys[0]![i & 3]!;
  assert.deepEqual(unmasked, payload);
  assert.equal(payload.toString(), '{"command":"pickup-failed","connPath":"/revdial?x"}\n', 'the buffer sent is left as it was');
});

test('maxPayload: a longer message closes the connection with 1009; text arrives flagged not binary; pings are answered', async (t) => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  t.after(() => {
    // wss.close waits for its clients: end them first.
    for (const client of wss.clients) client.terminate();
    return new Promise<void>((r) => wss.close(() => r()));
  });
  const server = new Promise<WebSocket>((resolve) => wss.once('connection', resolve));
  const url = new URL(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`);
  const ws = await dialWebSocket(url, { transport, handshakeTimeoutMs: 5000, maxPayload: 1024 });
  t.after(() => ws.terminate());
  const peer = await server;

  const pong = new Promise<Buffer>((resolve) => peer.once('pong', resolve));
  peer.ping(Buffer.from('are you there'));
  assert.equal((await pong).toString(), 'are you there');

  const text = new Promise<boolean>((resolve) => ws.once('message', (_d, isBinary) => resolve(isBinary)));
  peer.send('{"command":"keep-alive"}\n');
  assert.equal(await text, false);

  const closed = new Promise<number>((resolve) => peer.once('close', resolve));
  const errored = new Promise<Error & { code?: string }>((resolve) => ws.once('error', resolve));
  peer.send(Buffer.alloc(1025), { binary: true });
  assert.equal((await errored).code, 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH');
  assert.equal(await closed, 1009, 'the close code the plane receives');
});

test('a refusal before the upgrade becomes the coded error (unexpected-response)', async (t) => {
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', () => socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 23\r\n\r\nauthentication required'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = new URL(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/revdial?runnerid=x`);
  await assert.rejects(dialWebSocket(url, { transport, handshakeTimeoutMs: 5000, maxPayload: 1024 }), (err: unknown) => {
    assert.ok(err instanceof RevdialError);
    assert.equal(err.code, ErrorCodes.AUTH_REJECTED);
    return true;
  });
});
