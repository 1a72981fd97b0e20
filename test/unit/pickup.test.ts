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
import { PickupError, pickUp } from '../../src/agent/tunnel/pickup.js';
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
