/**
 * Huge frames, against the real executable: 64 tunnels, each sent one 8 MiB
 * WebSocket message at once (an upload request and its body in a single
 * frame). Every byte must reach Wolf intact (sha256 per tunnel, each body
 * stamped with its tunnel number) while the agent's peak RSS stays within
 * 256 MiB: the data connection streams each frame's payload to Wolf as it
 * arrives instead of holding whole messages (64 x 8 MiB would be 512 MiB).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { after, test } from 'node:test';
import { spawnProbedAgent } from './helpers/faults.js';
import { assertNoTokenLeaked } from './helpers/token-guard.js';
import { startPlane, startWolf } from '../helpers/harness.js';
import { memory } from '../helpers/proc-stats.js';

after(() => {
  assertNoTokenLeaked();
});

const MiB = 1024 * 1024;
const TUNNELS = 64;
const MESSAGE = 8 * MiB;
const PEAK_RSS_BOUND_MIB = 256;

/** Everything the tunnel sends back until Wolf closes (HTTP/1.0: one request per connection). */
function readAll(stream: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

test(
  `${TUNNELS} tunnels each sent one ${MESSAGE / MiB} MiB message at once: every byte reaches Wolf intact, agent RSS <= ${PEAK_RSS_BOUND_MIB} MiB`,
  { timeout: 180_000 },
  async (t) => {
    const plane = await startPlane(t, { pickupTimeoutMs: 60_000 });
    const { wolf, local } = await startWolf(t);
    const agent = spawnProbedAgent(t, {
      HELIX_API_URL: plane.url,
      WOLF_ID: 'huge',
      WOLF_LOCAL_ADDR: local,
      REVDIAL_METRICS_ADDR: 'off',
      REVDIAL_MAX_TUNNELS: String(TUNNELS + 8),
      REVDIAL_PICKUP_TIMEOUT: '60',
    });
    const runnerId = 'wolf-huge';
    const pid = agent.child.pid;
    assert.ok(pid);
    await plane.waitForRunner(runnerId, 10_000);
    await agent.logs.waitFor((l) => l.msg === 'Connected to control plane via RevDial');
    const idle = memory(pid);

    // All tunnels open first, then every message goes out at once.
    const streams = await Promise.all(Array.from({ length: TUNNELS }, () => plane.dial(runnerId)));
    const shared = randomBytes(MESSAGE);
    const sent: string[] = [];
    const headFor = (length: number): Buffer =>
      Buffer.from(`POST /upload HTTP/1.1\r\nHost: wolf\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`);
    // The head and the body together make exactly one 8 MiB message (both lengths have 7 digits).
    const bodyLength = MESSAGE - headFor(MESSAGE).length;
    const head = headFor(bodyLength);
    assert.equal(head.length + bodyLength, MESSAGE);
    const answers = streams.map((stream, i) => {
      const message = Buffer.concat([head, shared.subarray(0, bodyLength)]);
      // Each body stamped with its tunnel number: a mix-up between tunnels shows.
      message.writeUInt32BE(i, head.length);
      sent.push(createHash('sha256').update(message.subarray(head.length)).digest('hex'));
      const answer = readAll(stream);
      // One write: the plane's WebSocket sends it as one binary message (one frame).
      stream.write(message);
      return answer;
    });
    const replies = await Promise.all(answers);
    const peak = memory(pid);

    replies.forEach((raw, i) => {
      const text = raw.toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      assert.match(text.slice(0, split), /^HTTP\/1\.[01] 200/, `tunnel ${i}`);
      const got = JSON.parse(text.slice(split + 4)) as { bytes: number; sha256: string };
      assert.equal(got.sha256, sent[i], `tunnel ${i}: sha256 of what Wolf read`);
    });
    assert.equal(wolf.requests, TUNNELS);
    assert.equal(agent.child.exitCode, null);
    assert.equal(
      agent.logs.count((l) => l.level === 'warn' || l.level === 'error'),
      0,
      'no tunnel broke',
    );
    const peakMiB = peak.peakRssKiB / 1024;
    assert.ok(peakMiB <= PEAK_RSS_BOUND_MIB, `agent peak RSS ${peakMiB.toFixed(1)} MiB`);
    t.diagnostic(
      `${TUNNELS} x ${MESSAGE / MiB} MiB single-frame messages, all sha256-exact at Wolf; agent RSS ${(idle.rssKiB / 1024).toFixed(1)} MiB idle, peak (VmHWM) ${peakMiB.toFixed(1)} MiB, bound ${PEAK_RSS_BOUND_MIB} MiB`,
    );
  },
);
