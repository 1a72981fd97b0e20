/**
 * Entry of a control plane run as its own process (see plane-process.ts), so
 * a test can SIGKILL it and start it again on the same port. Configured by
 * the environment only (the token never goes on argv):
 *
 *   PLANE_TOKEN  the one accepted bearer token
 *   PLANE_PORT   port to listen on (0: any)
 *   PLANE_GRACE_MS, PLANE_PICKUP_TIMEOUT_MS  see ControlPlaneOptions
 *
 * Prints `LISTENING <port>` on stdout once it listens. Besides RevDial it
 * serves `GET /test/fetch?runner=ID&path=/x`: the request goes through the
 * runner's tunnel and the answer (status and body) is relayed back.
 */
import { pipeline } from 'node:stream';
import { ControlPlane } from '../../../dev/control-plane/server.js';

const token = process.env.PLANE_TOKEN ?? '';
const plane = ControlPlane.withToken(token, {
  graceMs: Number(process.env.PLANE_GRACE_MS ?? 5_000),
  pickupTimeoutMs: Number(process.env.PLANE_PICKUP_TIMEOUT_MS ?? 5_000),
});

plane.route('GET', '/test/fetch', async (_req, res, url) => {
  const runner = url.searchParams.get('runner') ?? '';
  const path = url.searchParams.get('path') ?? '/api/v1/system/health';
  try {
    const answer = await plane.request(runner, { path });
    res.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/octet-stream' });
    pipeline(answer, res, () => undefined);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'UNKNOWN';
    res.writeHead(502, { 'content-type': 'application/json' }).end(JSON.stringify({ code }));
  }
});

const address = await plane.listen(Number(process.env.PLANE_PORT ?? 0), '127.0.0.1');
process.stdout.write(`LISTENING ${address.port}\n`);
