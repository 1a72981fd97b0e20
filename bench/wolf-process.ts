/**
 * The stand-in Wolf API in its own process, for `npm run bench`. Listens on
 * 127.0.0.1 port 0 and tells the parent its address over IPC.
 */
import { StandInWolf } from '../src/stand-in-wolf.js';
import { serve } from './ipc.js';

const wolf = new StandInWolf();
// Idle benchmark tunnels hold a request open for minutes; Node's default
// limits would end them early.
wolf.server.requestTimeout = 0;
wolf.server.headersTimeout = 60_000;
const local = await wolf.listen(0, '127.0.0.1');

serve({
  connections: () =>
    new Promise<number>((resolve, reject) => wolf.server.getConnections((err, n) => (err ? reject(err) : resolve(n)))),
  requests: () => wolf.requests,
});
process.send?.({ ready: true, local, pid: process.pid });
