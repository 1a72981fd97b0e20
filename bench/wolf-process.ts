/**
 * The stand-in Wolf API in its own process, for `npm run bench`. Listens on
 * 127.0.0.1 port 0 (for `wrk`, which cannot dial a unix socket) and, with
 * BENCH_WOLF_SOCKET set, also on that unix socket, as Wolf listens in real
 * deployments; tells the parent its address over IPC.
 */
import http from 'node:http';
import { StandInWolf } from '../dev/stand-in-wolf.js';
import { serve } from './ipc.js';

const wolf = new StandInWolf();
// Idle benchmark tunnels hold a request open for minutes; Node's default
// limits would end them early.
wolf.server.requestTimeout = 0;
wolf.server.headersTimeout = 60_000;
// BENCH_WOLF_HOST: the WAN mode (bench/wan/) reaches it across the link for its no-tunnel figures.
const local = await wolf.listen(0, process.env.BENCH_WOLF_HOST ?? '127.0.0.1');
// A listener listens once: the socket gets a second server with the same handler and limits.
const socketPath = process.env.BENCH_WOLF_SOCKET;
const servers = [wolf.server];
if (socketPath) {
  const onSocket = http.createServer(wolf.server.listeners('request')[0] as http.RequestListener);
  onSocket.keepAliveTimeout = wolf.server.keepAliveTimeout;
  onSocket.requestTimeout = wolf.server.requestTimeout;
  onSocket.headersTimeout = wolf.server.headersTimeout;
  await new Promise<void>((resolve, reject) => {
    onSocket.once('error', reject);
    onSocket.listen(socketPath, () => resolve());
  });
  servers.push(onSocket);
}
const connectionsOf = (s: http.Server): Promise<number> =>
  new Promise<number>((resolve, reject) => s.getConnections((err, n) => (err ? reject(err) : resolve(n))));

serve({
  connections: async () => (await Promise.all(servers.map(connectionsOf))).reduce((a, b) => a + b, 0),
  requests: () => wolf.requests,
});
process.send?.({ ready: true, local, pid: process.pid });
