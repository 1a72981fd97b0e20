/**
 * The pick-up on its own: a data connection that has connected waits, paused,
 * for the local leg. Whatever the plane sent meanwhile must not crash the
 * process when the pick-up fails and the WebSocket is dropped.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import { PickupError, type TunnelOutcome, pickUp, startBridge } from '../../src/agent/tunnel/pickup.js';
import { ManualClock } from '../helpers/harness.js';
import { openDataConnection } from '../../src/agent/tunnel/data-connection.js';

test('garbage from the plane on a connected data leg, then the local leg fails: a clean pickup error, no crash', async (t) => {
  // A plane that answers the upgrade and, in the same write, sends a frame with
  // the reserved opcode 0xF: the data connection holds those bytes, unparsed,
  // until the bridge starts it, which never happens here.
  let garbageSent!: () => void;
  const sent = new Promise<void>((resolve) => {
    garbageSent = resolve;
  });
  const server = http.createServer();
  const upgraded: Duplex[] = [];
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.on('error', () => undefined);
    upgraded.push(socket);
    socket.write(
      Buffer.concat([
        Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`),
        Buffer.from([0x8f, 0x00]),
      ]),
      () => garbageSent(),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const socket of upgraded) socket.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  let uncaught: unknown;
  const onUncaught = (err: unknown): void => {
    uncaught = err;
  };
  process.on('uncaughtException', onUncaught);
  t.after(() => process.removeListener('uncaughtException', onUncaught));

  const url = new URL(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/revdial?revdial.dialer=x`);
  let dataSocket: Socket | undefined;
  const pickup = pickUp(
    {
      dialData: async (signal) => {
        const socket = net.connect({ host: '127.0.0.1', port: Number(url.port) });
        await new Promise((r) => socket.once('connect', r));
        const data = await openDataConnection(socket, url, { token: 'secret', userAgent: 'test', handshakeTimeoutMs: 5_000, signal });
        dataSocket = socket;
        return data;
      },
      dialLocal: async () => {
        await sent;
        // Fail only once the data leg is open: the garbage came with its 101.
        while (!dataSocket) await new Promise((r) => setImmediate(r));
        throw new RevdialError(ErrorCodes.LOCAL_DIAL_FAILED, 'local Wolf API unreachable (test)');
      },
    },
    { pickupTimeoutMs: 5_000, closeBackstopMs: 1_000 },
    new AbortController().signal,
  );
  await assert.rejects(pickup, (err: unknown) => err instanceof PickupError && err.leg === 'local' && err.code === ErrorCodes.LOCAL_DIAL_FAILED);
  // The dropped data connection's socket closes; nothing may throw meanwhile.
  if (dataSocket && !dataSocket.closed) await new Promise((r) => dataSocket?.once('close', r));
  await new Promise((r) => setImmediate(r));
  assert.equal(uncaught, undefined);
});

test('a malformed frame on a bridged tunnel: result error with its code, Wolf cut, the plane told 1002; a silent one: ping_timeout', async (t) => {
  const planeSockets: Duplex[] = [];
  const server = http.createServer();
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.on('error', () => undefined);
    planeSockets.push(socket);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const wolf = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => wolf.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of planeSockets) s.destroy();
    wolf.close();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const url = new URL(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/revdial?revdial.dialer=x`);
  const clock = new ManualClock();
  const open = async (): Promise<{ outcome: Promise<TunnelOutcome>; local: Socket; plane: Duplex }> => {
    const socket = net.connect({ host: '127.0.0.1', port: Number(url.port) });
    await new Promise((r) => socket.once('connect', r));
    const data = await openDataConnection(socket, url, {
      token: 't',
      userAgent: 'ua',
      handshakeTimeoutMs: 5000,
      clock,
      pingIntervalMs: 1000,
      pingTimeoutMs: 3000,
    });
    const local = net.connect({ host: '127.0.0.1', port: (wolf.address() as AddressInfo).port });
    await new Promise((r) => local.once('connect', r));
    const { outcome } = startBridge(data, local, { pickupTimeoutMs: 5000, closeBackstopMs: 1000, clock });
    return { outcome, local, plane: planeSockets.at(-1)! };
  };

  const bad = await open();
  const seen: Buffer[] = [];
  bad.plane.on('data', (c: Buffer) => seen.push(c));
  bad.plane.write(Buffer.from([0x82 | 0x40, 0x01, 0x00])); // RSV1 on a binary frame
  // The agent ends its side after the close frame; the plane then drops TCP, as the Go side does.
  while (Buffer.concat(seen).length < 8) await new Promise((r) => setImmediate(r));
  bad.plane.end();
  const end = await bad.outcome;
  assert.equal(end.result, 'error');
  assert.equal(end.error?.code, ErrorCodes.PROTOCOL_FRAME_INVALID);
  assert.equal(bad.local.destroyed, true);
  const close = Buffer.concat(seen);
  assert.equal(close[0], 0x88, 'a close frame');
  const key = close.subarray(2, 6);
  assert.equal(((close[6]! ^ key[0]!) << 8) | (close[7]! ^ key[1]!), 1002);

  const silent = await open();
  for (let s = 0; s < 5; s++) clock.tick(1000);
  const quiet = await silent.outcome;
  assert.equal(quiet.result, 'ping_timeout');
  assert.equal(quiet.error?.code, ErrorCodes.DATA_PING_TIMEOUT);
});
