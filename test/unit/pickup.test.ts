/**
 * The pick-up on its own: a data WebSocket that has connected waits, paused,
 * for the local leg. Whatever the plane sent meanwhile must not crash the
 * process when the pick-up fails and the WebSocket is dropped.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';
import { ErrorCodes, RevdialError } from '../../src/agent/errors.js';
import { PickupError, pickUp } from '../../src/agent/tunnel/pickup.js';
import { dialWebSocket } from '../../src/agent/net/ws-dial.js';

test('garbage from the plane on a connected data leg, then the local leg fails: a clean pickup error, no crash', async (t) => {
  // A plane that answers the upgrade and, in the same write, sends a frame with
  // the reserved opcode 0xF: ws keeps those bytes buffered while the socket is
  // paused and parses them when the socket closes.
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
        const ws = await dialWebSocket(url, {
          transport: { token: () => 'secret', userAgent: 'test', rejectUnauthorized: true },
          handshakeTimeoutMs: 5_000,
          maxPayload: 1024,
          signal,
          pauseOnOpen: true,
        });
        dataSocket = (ws as unknown as { _socket: Socket })._socket;
        return ws;
      },
      dialLocal: async () => {
        await sent;
        // Fail only once the garbage sits in the paused WebSocket's read buffer.
        while (!dataSocket || dataSocket.readableLength === 0) await new Promise((r) => setImmediate(r));
        throw new RevdialError(ErrorCodes.LOCAL_DIAL_FAILED, 'local Wolf API unreachable (test)');
      },
    },
    { pickupTimeoutMs: 5_000, closeBackstopMs: 1_000 },
    new AbortController().signal,
  );
  await assert.rejects(pickup, (err: unknown) => err instanceof PickupError && err.leg === 'local' && err.code === ErrorCodes.LOCAL_DIAL_FAILED);
  // The dropped WebSocket parses the garbage as its socket closes.
  if (dataSocket && !dataSocket.closed) await new Promise((r) => dataSocket?.once('close', r));
  await new Promise((r) => setImmediate(r));
  assert.equal(uncaught, undefined);
});
