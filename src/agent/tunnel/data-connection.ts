/**
 * A data connection (PROTOCOL.md, "Data connection"): a client WebSocket
 * (RFC 6455) written for this one job, on a socket already connected to the
 * control plane.
 *
 * Why not `ws`, which the control connection keeps: a data connection lives
 * for one request, so what a client costs per connection is paid on every
 * request. `ws` builds its upgrade on `http.request` (a ClientRequest, an
 * IncomingMessage, an HTTP parser), wraps the socket in a Receiver and a
 * Sender, and at close creates and discards three errors per tunnel when the
 * peer closes TCP after the close handshake. Measured with `npm run bench`
 * in interleaved runs against the agent on `ws` (README, "Where the time
 * goes"): about a quarter less CPU per tunnel at c=32, an eighth less per
 * GiB downloaded, a third less per GiB uploaded. And `ws` hands over whole
 * messages (up to `maxPayload`, 16 MiB), while this module streams each
 * frame's payload to Wolf as it arrives: memory per tunnel is bounded by one
 * socket read, whatever the frame sizes (64 tunnels sent 8 MiB each: 744 MiB
 * peak RSS on `ws`, 138 MiB here; test/faults/huge-frames.test.ts).
 *
 * What it does, and no more:
 * - the upgrade: GET with a random Sec-WebSocket-Key, no extension, no
 *   subprotocol; the answer must be 101 with `Upgrade: websocket`,
 *   `Connection: Upgrade` and the right Sec-WebSocket-Accept, and must impose
 *   no extension or subprotocol. Any other status becomes the same coded
 *   errors the control connection reports (ws-dial `rejection`). Bytes that
 *   follow the 101 in the same read are the start of the frame stream: the
 *   control plane writes the request right behind its answer.
 * - frames sent: binary, always masked (native `bufferutil`, or js-mask.ts in
 *   the packaged executable), one frame per write.
 * - frames received: unmasked binary frames and continuations, streamed;
 *   ping answered with pong; close answered and the socket ended. Anything
 *   else fails the connection with a close code and a coded error: masked
 *   frame, RSV bits, unknown opcode, fragmented or long control frame → 1002;
 *   text frame → 1003 (the protocol is binary only); a length beyond 2^53 → 1009.
 * - liveness (optional): a ping after `pingIntervalMs` with nothing received,
 *   the socket destroyed after `pingTimeoutMs` with nothing received (no
 *   frame, no pong). The control plane answers pings while it uses a tunnel,
 *   so a quiet tunnel (Wolf slow to answer, an event stream) stays up.
 */
import { hash, randomFillSync } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import type { Socket } from 'node:net';
import * as bufferutil from 'bufferutil';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { safeOrigin } from '../net/endpoints.js';
import { BODY_PREVIEW_BYTES, previewText, rejection } from '../net/ws-dial.js';
import { ErrorCodes, RevdialError, codeOf, describe } from '../errors.js';

type Mask = (source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number) => void;

// `bufferutil` is CommonJS: its functions come as the default export from
// node_modules, as named exports from js-mask.ts in the packaged executable.
const maskWith: Mask = typeof bufferutil.mask === 'function' ? bufferutil.mask : (Reflect.get(bufferutil, 'default') as { mask: Mask }).mask;

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** An answer head longer than this is not a WebSocket server's. */
const MAX_HEAD_BYTES = 16 * 1024;
/** How long a refusal's body may take to arrive before it is reported without it. */
const BODY_PREVIEW_WAIT_MS = 1000;
/** A payload length beyond this cannot be counted exactly in a JS number. */
const MAX_SAFE_LENGTH_HIGH_WORD = 0x1fffff;
/** Bytes taken by the kernel between two liveness ticks that show the plane is reading. */
const PROGRESS_BYTES = 64 * 1024;
/** The send side pauses Wolf while this much waits in the socket. */
const DEFAULT_HIGH_WATER_MARK = 1024 * 1024;

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

// Random bytes for keys and masks, drawn from a pool as ws does: one
// getrandom() call per 2,048 masks instead of one per frame.
const RANDOM_POOL_BYTES = 8192;
const randomPool = Buffer.allocUnsafe(RANDOM_POOL_BYTES);
let randomOffset = RANDOM_POOL_BYTES;

function randomInto(target: Buffer, offset: number, length: number): void {
  if (randomOffset + length > RANDOM_POOL_BYTES) {
    randomFillSync(randomPool);
    randomOffset = 0;
  }
  randomPool.copy(target, offset, randomOffset, randomOffset + length);
  randomOffset += length;
}

export interface DataConnectionOptions {
  /** The bearer token, read for this dial. */
  token: string;
  userAgent: string;
  /** The upgrade must be answered within this long. */
  handshakeTimeoutMs: number;
  signal?: AbortSignal;
  clock?: Clock;
  /** Ping after this long without receiving anything; 0 or absent: no liveness check. */
  pingIntervalMs?: number;
  /** Destroy the connection after this long without receiving anything. */
  pingTimeoutMs?: number;
  /** `send` returns false once this many bytes wait in the socket. */
  highWaterMark?: number;
}

/** What the owner of an open data connection hears; every callback must not throw. */
export interface DataConnectionHandler {
  /** Payload bytes of binary messages, in order. The buffer may be kept (it is not reused). */
  data(chunk: Buffer): void;
  /** `send` returned false earlier and the socket has drained. */
  drain(): void;
  /**
   * The peer will send nothing more: it sent a close frame or ended TCP
   * (`error` undefined), or the connection failed (`error` says why: a
   * protocol violation, a dead path, a socket error).
   */
  end(error: RevdialError | undefined): void;
  /** The socket is closed; nothing follows. Always after `end`. */
  close(): void;
}

/**
 * Upgrades `socket` (connected, TLS done) to a data WebSocket on `url`.
 * Resolves with the open connection, paused: nothing is read or lost until
 * `start()`. Rejects with a coded error, the socket destroyed:
 * REVDIAL_DATA_SOCKET_STALE when the socket died before any byte of the
 * answer (a pre-connected socket the peer had dropped: safe to retry on a
 * fresh one), REVDIAL_AUTH_REJECTED / REVDIAL_HANDSHAKE_REJECTED for a refusal,
 * REVDIAL_HANDSHAKE_INVALID for a 101 that breaks RFC 6455,
 * REVDIAL_HANDSHAKE_TIMEOUT, REVDIAL_CONNECT_FAILED, or the signal's reason.
 */
export function openDataConnection(socket: Socket, url: URL, options: DataConnectionOptions): Promise<DataConnection> {
  return new Upgrade(socket, url, options).result;
}

/** One upgrade in flight; its listeners are named so that one path removes them all. */
class Upgrade {
  readonly result: Promise<DataConnection>;
  readonly #socket: Socket;
  readonly #url: URL;
  readonly #options: DataConnectionOptions;
  readonly #clock: Clock;
  readonly #key: string;
  #head: Buffer | undefined;
  #received = 0;
  #timer: Timer | undefined;
  #settled = false;
  // A refusal whose body preview is still arriving.
  #refusal: { status: number; body: Buffer[]; size: number; limit: number; chunked: boolean } | undefined;
  #resolve!: (dc: DataConnection) => void;
  #reject!: (err: unknown) => void;

  constructor(socket: Socket, url: URL, options: DataConnectionOptions) {
    this.#socket = socket;
    this.#url = url;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    const key = Buffer.allocUnsafe(16);
    randomInto(key, 0, 16);
    this.#key = key.toString('base64');
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    const { signal } = options;
    if (signal?.aborted) {
      this.#fail(signal.reason);
      return;
    }
    // A token with a control character would split the request (or make Node throw).
    if (!/^[\x21-\x7e]*$/.test(options.token) || !/^[\x20-\x7e]*$/.test(options.userAgent)) {
      this.#fail(
        new RevdialError(ErrorCodes.CONFIG_INVALID, 'RUNNER_TOKEN or the user agent holds a character not allowed in an HTTP header: check the token (file)'),
      );
      return;
    }
    if (socket.destroyed || socket.readableEnded || !socket.writable) {
      this.#fail(this.#stale('was already closed'));
      return;
    }
    socket.setNoDelay(true);
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    signal?.addEventListener('abort', this.#onAbort, { once: true });
    this.#timer = this.#clock.setTimeout(this.#onTimeout, options.handshakeTimeoutMs);
    socket.write(
      `GET ${url.pathname}${url.search} HTTP/1.1\r\n` +
        `Host: ${url.host}\r\n` +
        'Upgrade: websocket\r\n' +
        'Connection: Upgrade\r\n' +
        `Sec-WebSocket-Key: ${this.#key}\r\n` +
        'Sec-WebSocket-Version: 13\r\n' +
        `Authorization: Bearer ${options.token}\r\n` +
        `User-Agent: ${options.userAgent}\r\n\r\n`,
    );
    // A pre-connected socket may have been paused by whoever held it.
    socket.resume();
  }

  #onData = (chunk: Buffer): void => {
    this.#received += chunk.length;
    if (this.#refusal) {
      this.#collectBody(chunk);
      return;
    }
    const head = this.#head ? Buffer.concat([this.#head, chunk]) : chunk;
    const end = head.indexOf('\r\n\r\n', this.#head ? Math.max(0, this.#head.length - 3) : 0, 'latin1');
    if (end === -1) {
      if (head.length > MAX_HEAD_BYTES) {
        this.#fail(this.#invalid(`an answer head longer than ${MAX_HEAD_BYTES} bytes`));
        return;
      }
      this.#head = head;
      return;
    }
    this.#head = undefined;
    // Stop reading before anything else: the rest belongs to the frame stream.
    this.#socket.pause();
    this.#onHead(head.toString('latin1', 0, end), head.subarray(end + 4));
  };

  #onHead(text: string, rest: Buffer): void {
    const lines = text.split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
    if (!status) {
      this.#fail(this.#invalid(`an answer that is not HTTP/1.1 (${JSON.stringify(describe(lines[0] ?? '', 60))})`));
      return;
    }
    const headers = new Map<string, string>();
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      const had = headers.get(name);
      headers.set(name, had === undefined ? value : `${had}, ${value}`);
    }
    const code = Number(status[1]);
    if (code !== 101) {
      const length = Number(headers.get('content-length') ?? NaN);
      this.#refusal = {
        status: code,
        body: [],
        size: 0,
        limit: Number.isFinite(length) ? Math.min(length, BODY_PREVIEW_BYTES) : BODY_PREVIEW_BYTES,
        chunked: /chunked/i.test(headers.get('transfer-encoding') ?? ''),
      };
      this.#clock.clearTimeout(this.#timer);
      this.#timer = this.#clock.setTimeout(this.#finishRefusal, BODY_PREVIEW_WAIT_MS);
      this.#socket.resume();
      this.#collectBody(rest);
      return;
    }
    const why = this.#check101(headers);
    if (why !== undefined) {
      this.#fail(this.#invalid(why));
      return;
    }
    this.#settle();
    this.#resolve(new DataConnection(this.#socket, rest, this.#options));
  }

  #check101(headers: Map<string, string>): string | undefined {
    if ((headers.get('upgrade') ?? '').toLowerCase() !== 'websocket') return 'a 101 without "Upgrade: websocket"';
    if (!(headers.get('connection') ?? '').split(',').some((t) => t.trim().toLowerCase() === 'upgrade')) {
      return 'a 101 without "Connection: Upgrade"';
    }
    // The one-shot `hash` skips the Hash object `createHash` builds per call.
    const accept = hash('sha1', this.#key + GUID, 'base64');
    if (headers.get('sec-websocket-accept') !== accept) return 'a 101 with a wrong Sec-WebSocket-Accept';
    // We offered none: a server that imposes one would frame in a way we do not read.
    if (headers.has('sec-websocket-extensions')) return `a 101 imposing the extension "${describe(headers.get('sec-websocket-extensions') ?? '', 60)}"`;
    if (headers.has('sec-websocket-protocol')) return `a 101 imposing the subprotocol "${describe(headers.get('sec-websocket-protocol') ?? '', 60)}"`;
    return undefined;
  }

  #collectBody(chunk: Buffer): void {
    const refusal = this.#refusal!;
    if (chunk.length > 0 && refusal.size < refusal.limit) {
      refusal.body.push(chunk);
      refusal.size += chunk.length;
    }
    if (refusal.size >= refusal.limit) this.#finishRefusal();
  }

  #finishRefusal = (): void => {
    const refusal = this.#refusal!;
    if (this.#settled) return;
    let body: Buffer = Buffer.concat(refusal.body);
    if (refusal.chunked) body = dechunk(body);
    this.#fail(rejection(safeOrigin(this.#url), this.#url, refusal.status, previewText(body)));
  };

  #onEnd = (): void => {
    if (this.#refusal) {
      this.#finishRefusal();
      return;
    }
    this.#fail(this.#closedEarly('closed the connection'));
  };

  #onError = (err: Error): void => {
    if (this.#refusal) {
      this.#finishRefusal();
      return;
    }
    this.#fail(this.#closedEarly(`failed (${codeOf(err)})`, err));
  };

  #onClose = (): void => {
    if (this.#refusal) {
      this.#finishRefusal();
      return;
    }
    this.#fail(this.#closedEarly('closed the connection'));
  };

  #onAbort = (): void => {
    this.#fail(this.#options.signal?.reason);
  };

  #onTimeout = (): void => {
    this.#fail(
      new RevdialError(
        ErrorCodes.HANDSHAKE_TIMEOUT,
        `control plane at ${safeOrigin(this.#url)} did not complete the WebSocket handshake within ${this.#options.handshakeTimeoutMs} ms`,
      ),
    );
  };

  /** Before any byte of the answer: the socket was dead when we took it. */
  #closedEarly(what: string, cause?: Error): RevdialError {
    if (this.#received === 0) return this.#stale(what, cause);
    return new RevdialError(ErrorCodes.CONNECT_FAILED, `control plane at ${safeOrigin(this.#url)} ${what} in the middle of the WebSocket handshake`, { cause });
  }

  #stale(what: string, cause?: Error): RevdialError {
    return new RevdialError(
      ErrorCodes.DATA_SOCKET_STALE,
      `connection to the control plane at ${safeOrigin(this.#url)} ${what} before any answer to the upgrade`,
      { cause },
    );
  }

  #invalid(what: string): RevdialError {
    return new RevdialError(
      ErrorCodes.HANDSHAKE_INVALID,
      `control plane at ${safeOrigin(this.#url)} answered the data connection upgrade with ${what}: not a WebSocket server this agent can talk to (a proxy in the way?)`,
    );
  }

  #settle(): void {
    this.#settled = true;
    this.#clock.clearTimeout(this.#timer);
    this.#options.signal?.removeEventListener('abort', this.#onAbort);
    const socket = this.#socket;
    socket.removeListener('data', this.#onData);
    socket.removeListener('end', this.#onEnd);
    socket.removeListener('error', this.#onError);
    socket.removeListener('close', this.#onClose);
  }

  #fail(err: unknown): void {
    if (this.#settled) return;
    this.#settle();
    // A late error on the destroyed socket must not crash the process.
    this.#socket.on('error', ignoreError);
    this.#socket.destroy();
    this.#reject(err);
  }
}

function ignoreError(): void {
  // Nothing to do: the failure was already reported.
}

/** The data of a chunked body, as far as it arrived (a preview: malformed input gives what it can). */
function dechunk(raw: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  while (at < raw.length) {
    const eol = raw.indexOf('\r\n', at, 'latin1');
    if (eol === -1) break;
    const size = Number.parseInt(raw.toString('latin1', at, eol), 16);
    if (!Number.isFinite(size) || size <= 0) break;
    parts.push(raw.subarray(eol + 2, Math.min(raw.length, eol + 2 + size)));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

// Parser states.
const HEADER = 0;
const PAYLOAD = 1;
const DONE = 2;

/**
 * An open data connection. Read and write side are independent: `send`
 * frames bytes for the control plane; the handler gets the payload bytes the
 * plane sends. Until `start`, the socket is paused and nothing is lost.
 */
export class DataConnection {
  readonly #socket: Socket;
  readonly #clock: Clock;
  readonly #highWaterMark: number;
  readonly #pingIntervalMs: number;
  readonly #pingTimeoutMs: number;
  #handler: DataConnectionHandler | undefined;
  /** Bytes that followed the 101, then bytes read before `start`. */
  #pending: Buffer[] = [];
  // Frame parser.
  #state = HEADER;
  readonly #header = Buffer.allocUnsafe(14);
  #headerHave = 0;
  #opcode = 0;
  #remaining = 0;
  #control: Buffer[] = [];
  /** A binary message is open: continuation frames may follow. */
  #inMessage = false;
  // Close handshake.
  #closeSent = false;
  #closeReceived = false;
  #ended = false;
  #closed = false;
  #error: RevdialError | undefined;
  // Flow control.
  #pausedByOwner = false;
  #wantDrain = false;
  // Liveness.
  #heard = true;
  #lastHeard: number;
  /** Bytes the kernel had taken from this socket at the last liveness tick. */
  #acceptedAtTick = 0;
  #pingTimer: Timer | undefined;

  /** @internal Made by `openDataConnection`. */
  constructor(socket: Socket, rest: Buffer, options: DataConnectionOptions) {
    this.#socket = socket;
    this.#clock = options.clock ?? systemClock;
    this.#highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    this.#pingIntervalMs = options.pingIntervalMs ?? 0;
    this.#pingTimeoutMs = options.pingTimeoutMs ?? 0;
    this.#lastHeard = this.#clock.now();
    if (rest.length > 0) this.#pending.push(rest);
    // Errors and a close before `start` are kept for the handler.
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  /** Attaches the owner, hands it what already arrived, and starts reading. */
  start(handler: DataConnectionHandler): void {
    if (this.#handler) throw new Error('DataConnection.start called twice');
    this.#handler = handler;
    const socket = this.#socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('drain', this.#onDrain);
    if (this.#pingIntervalMs > 0 && this.#pingTimeoutMs > 0) {
      this.#pingTimer = this.#clock.setInterval(this.#onPingTick, this.#pingIntervalMs);
    }
    const pending = this.#pending;
    this.#pending = [];
    for (const chunk of pending) {
      this.#parse(chunk);
      if (this.#state === DONE) break;
    }
    if (this.#closed) {
      this.#finish();
      return;
    }
    if (!this.#pausedByOwner) socket.resume();
  }

  /** The connection can still carry bytes to the control plane. */
  get writable(): boolean {
    return !this.#closeSent && !this.#closed && !this.#socket.destroyed;
  }

  /** Bytes waiting in the socket. */
  get bufferedAmount(): number {
    return this.#socket.writableLength;
  }

  /**
   * Sends `chunk` as one masked binary frame. The bytes are copied into the
   * frame before this returns, so `chunk` may be a view into a reused buffer.
   * Returns false once `highWaterMark` bytes wait in the socket: stop sending
   * until the handler's `drain`.
   */
  send(chunk: Uint8Array): boolean {
    if (!this.writable) return true;
    const frame = encodeFrame(OP_BINARY, chunk);
    this.#socket.write(frame);
    if (this.#socket.writableLength < this.#highWaterMark) return true;
    this.#wantDrain = true;
    return false;
  }

  /** Stops reading the control plane (the local side does not keep up). */
  pause(): void {
    this.#pausedByOwner = true;
    this.#socket.pause();
  }

  resume(): void {
    this.#pausedByOwner = false;
    if (this.#handler && !this.#closed) this.#socket.resume();
  }

  /**
   * Starts the close handshake: a close frame after what was already sent,
   * then the socket ends once the peer's close frame arrives (or the peer
   * ends TCP). Reading resumes, or the peer's close frame would go unseen.
   * The owner keeps a backstop that calls `terminate` (the bridge does).
   */
  close(code = 1000, reason = ''): void {
    if (this.#closed) return;
    this.#sendClose(code, reason);
    this.resume();
    if (this.#closeReceived) this.#endSocket();
  }

  /** Destroys the socket now: shutdown, a dead path, a backstop. */
  terminate(error?: RevdialError): void {
    if (error) this.#error ??= error;
    this.#socket.destroy();
  }

  #onData = (chunk: Buffer): void => {
    this.#heard = true;
    this.#parse(chunk);
  };

  #parse(chunk: Buffer): void {
    let at = 0;
    const length = chunk.length;
    while (at < length) {
      if (this.#state === PAYLOAD) {
        const n = Math.min(this.#remaining, length - at);
        if (this.#opcode === OP_BINARY || this.#opcode === OP_CONTINUATION) {
          // Streamed as it arrives: a view into this read, never a copy.
          if (!this.#closeReceived) this.#handler?.data(at === 0 && n === length ? chunk : chunk.subarray(at, at + n));
        } else {
          this.#control.push(chunk.subarray(at, at + n));
        }
        at += n;
        this.#remaining -= n;
        if (this.#remaining === 0) this.#frameDone();
      } else if (this.#state === HEADER) {
        at = this.#readHeader(chunk, at);
      } else {
        return;
      }
    }
  }

  /** Reads header bytes from `chunk` at `at`; returns where the header ended (or the chunk did). */
  #readHeader(chunk: Buffer, at: number): number {
    const header = this.#header;
    // The whole header is in this read (the usual case): parse it in place.
    let source = chunk;
    let base = at;
    let available = chunk.length - at;
    if (this.#headerHave > 0) {
      const take = Math.min(14 - this.#headerHave, available);
      chunk.copy(header, this.#headerHave, at, at + take);
      source = header;
      base = 0;
      available = this.#headerHave + take;
    }
    if (available < 2) return this.#keepHeaderBytes(chunk, at);
    const b0 = source[base]!;
    const b1 = source[base + 1]!;
    const size7 = b1 & 0x7f;
    const need = size7 === 126 ? 4 : size7 === 127 ? 10 : 2;
    if (available < need) return this.#keepHeaderBytes(chunk, at);
    const consumed = need - this.#headerHave;
    this.#headerHave = 0;

    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return this.#protocolError(1002, 'a frame with reserved bits set (an extension was never agreed)');
    if ((b1 & 0x80) !== 0) return this.#protocolError(1002, 'a masked frame (a server must not mask)');
    let size: number;
    if (size7 === 126) size = source.readUInt16BE(base + 2);
    else if (size7 === 127) {
      const high = source.readUInt32BE(base + 2);
      if (high > 0x7fffffff) return this.#protocolError(1002, 'a frame length with the most significant bit set');
      if (high > MAX_SAFE_LENGTH_HIGH_WORD) {
        return this.#protocolError(1009, `a frame length of ${high} * 2^32 bytes`, ErrorCodes.FRAME_TOO_LARGE);
      }
      size = high * 0x100000000 + source.readUInt32BE(base + 6);
    } else size = size7;

    switch (opcode) {
      case OP_BINARY:
        if (this.#inMessage) return this.#protocolError(1002, 'a new message before the last one was finished');
        this.#inMessage = !fin;
        break;
      case OP_CONTINUATION:
        if (!this.#inMessage) return this.#protocolError(1002, 'a continuation frame outside a message');
        this.#inMessage = !fin;
        break;
      case OP_TEXT:
        return this.#protocolError(1003, 'a text frame on a data connection (the protocol is binary only)', ErrorCodes.PROTOCOL_TEXT_FRAME);
      case OP_CLOSE:
      case OP_PING:
      case OP_PONG:
        if (!fin) return this.#protocolError(1002, 'a fragmented control frame');
        if (size > 125) return this.#protocolError(1002, `a control frame of ${size} bytes (at most 125)`);
        break;
      default:
        return this.#protocolError(1002, `a frame with the unknown opcode ${opcode}`);
    }
    this.#opcode = opcode;
    this.#remaining = size;
    this.#state = PAYLOAD;
    if (size === 0) this.#frameDone();
    return at + consumed;
  }

  #keepHeaderBytes(chunk: Buffer, at: number): number {
    // Fewer bytes than the header needs: keep them (at most 14) for the next read.
    if (this.#headerHave === 0) {
      chunk.copy(this.#header, 0, at);
      this.#headerHave = chunk.length - at;
    } else {
      this.#headerHave += chunk.length - at;
    }
    return chunk.length;
  }

  #frameDone(): void {
    this.#state = HEADER;
    const opcode = this.#opcode;
    if (opcode === OP_BINARY || opcode === OP_CONTINUATION) return;
    const payload = this.#control.length === 1 ? this.#control[0]! : Buffer.concat(this.#control);
    this.#control = [];
    if (opcode === OP_PING) {
      if (!this.#closeSent) this.#socket.write(encodeFrame(OP_PONG, payload));
    } else if (opcode === OP_CLOSE) {
      this.#onCloseFrame(payload);
    }
    // A pong only proves the path is alive, which #onData noted already.
  }

  #onCloseFrame(payload: Buffer): void {
    let code = 1005;
    if (payload.length === 1) {
      this.#protocolError(1002, 'a close frame with a one-byte payload');
      return;
    }
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      if (!validCloseCode(code)) {
        this.#protocolError(1002, `a close frame with the invalid code ${code}`);
        return;
      }
      if (!isUtf8(payload.subarray(2))) {
        this.#protocolError(1007, 'a close reason that is not UTF-8');
        return;
      }
    }
    this.#closeReceived = true;
    this.#state = DONE;
    // Echo the code, as RFC 6455 5.5.1 suggests; no code, no payload.
    if (code === 1005) this.#sendClose(undefined, '');
    else this.#sendClose(code, '');
    this.#endSocket();
    this.#peerEnded(undefined);
  }

  /** Fails the connection: close frame with `code`, no more reading, the socket ended. */
  #protocolError(code: number, what: string, errorCode: RevdialError['code'] = ErrorCodes.PROTOCOL_FRAME_INVALID): number {
    this.#state = DONE;
    this.#error ??= new RevdialError(errorCode, `control plane sent ${what}; closing the tunnel (close code ${code})`);
    this.#sendClose(code, '');
    this.#endSocket();
    this.#peerEnded(this.#error);
    return Number.MAX_SAFE_INTEGER;
  }

  #sendClose(code: number | undefined, reason: string): void {
    if (this.#closeSent || this.#socket.destroyed || this.#socket.writableEnded) return;
    this.#closeSent = true;
    let payload: Buffer;
    if (code === undefined) payload = Buffer.alloc(0);
    else {
      payload = Buffer.allocUnsafe(2 + Buffer.byteLength(reason));
      payload.writeUInt16BE(code, 0);
      payload.write(reason, 2);
    }
    this.#socket.write(encodeFrame(OP_CLOSE, payload));
  }

  #endSocket(): void {
    // `end()` on a socket whose writable side already finished creates an error: skip it.
    if (!this.#socket.writableEnded && !this.#socket.destroyed) this.#socket.end();
  }

  #peerEnded(error: RevdialError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#clock.clearInterval(this.#pingTimer);
    this.#pingTimer = undefined;
    // Whatever the peer sends now is not read: let it flow to nowhere.
    if (this.#socket.isPaused() && !this.#socket.destroyed) this.#socket.resume();
    this.#handler?.end(error);
  }

  #onEnd = (): void => {
    // TCP ended without a close frame (the Go side just drops TCP): a normal end.
    this.#state = DONE;
    this.#endSocket();
    this.#peerEnded(this.#error);
  };

  #onDrain = (): void => {
    if (!this.#wantDrain) return;
    this.#wantDrain = false;
    this.#handler?.drain();
  };

  #onError = (err: Error): void => {
    this.#error ??= new RevdialError(ErrorCodes.TUNNEL_ABORTED, `data connection failed: ${describe(err)}`, { cause: err });
  };

  #onClose = (): void => {
    this.#closed = true;
    if (this.#handler) this.#finish();
  };

  #finish(): void {
    this.#clock.clearInterval(this.#pingTimer);
    this.#pingTimer = undefined;
    const socket = this.#socket;
    socket.removeListener('data', this.#onData);
    socket.removeListener('end', this.#onEnd);
    socket.removeListener('drain', this.#onDrain);
    socket.removeListener('close', this.#onClose);
    // The 'error' listener stays: a late error on a dead socket must not crash the process.
    this.#peerEnded(this.#error);
    this.#handler?.close();
  }

  /**
   * Runs every `pingIntervalMs`. Heard something since the last tick: alive.
   * Otherwise ping, and after `pingTimeoutMs` of silence give up. Two kinds
   * of silence are not the path's:
   * - the owner holds reading paused (Wolf is not reading): the plane's pongs
   *   wait unread in our socket;
   * - our own bytes are backed up (waiting in the socket, or the kernel took
   *   at least PROGRESS_BYTES since the last tick): the plane answers a ping
   *   only once it has read everything sent before it, and a plane whose
   *   reader is slow answers late. While data waits unacknowledged, TCP's own
   *   retransmission time-out watches the path.
   * A blackholed tunnel that carries little (an event stream's keep-alives)
   * fits neither and is closed.
   */
  #onPingTick = (): void => {
    const now = this.#clock.now();
    const socket = this.#socket;
    // bytesWritten is undefined on a destroyed socket (Node reads its write buffer).
    const accepted = socket.destroyed ? this.#acceptedAtTick : socket.bytesWritten - socket.writableLength;
    const progressed = accepted - this.#acceptedAtTick >= PROGRESS_BYTES;
    this.#acceptedAtTick = accepted;
    if (this.#heard || this.#pausedByOwner || progressed || socket.writableLength > 0) {
      this.#heard = false;
      this.#lastHeard = now;
      return;
    }
    if (now - this.#lastHeard >= this.#pingTimeoutMs) {
      this.terminate(
        new RevdialError(
          ErrorCodes.DATA_PING_TIMEOUT,
          `no frame or pong from the control plane on a data connection for ${this.#pingTimeoutMs} ms: the path is dead (half-open?); tunnel closed`,
        ),
      );
      this.#peerEnded(this.#error);
      return;
    }
    if (!this.#closeSent) this.#socket.write(encodeFrame(OP_PING, EMPTY));
  };
}

const EMPTY = Buffer.alloc(0);

/** Close codes a peer may send (RFC 6455 7.4; 1004-1006 and 1015 never on the wire). */
function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

/** One masked frame (FIN set): header, key, and the payload masked into a fresh buffer. */
function encodeFrame(opcode: number, payload: Uint8Array): Buffer {
  const length = payload.length;
  const headerSize = length < 126 ? 6 : length < 65536 ? 8 : 14;
  const frame = Buffer.allocUnsafe(headerSize + length);
  frame[0] = 0x80 | opcode;
  if (length < 126) frame[1] = 0x80 | length;
  else if (length < 65536) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeUInt32BE(Math.floor(length / 0x100000000), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  randomInto(frame, headerSize - 4, 4);
  if (length >= 32) {
    maskWith(payload, frame.subarray(headerSize - 4, headerSize), frame, headerSize, length);
  } else {
    // Short payloads: a call into the add-on costs more than the loop.
    for (let i = 0; i < length; i++) frame[headerSize + i] = payload[i]! ^ frame[headerSize - 4 + (i & 3)]!;
  }
  return frame;
}

/** Where data connection sockets come from (net/connector.ts: TLS, proxy, warm pool). */
export interface DataSocketSource {
  connect(url: URL, signal: AbortSignal, opts?: { fresh?: boolean }): Promise<{ socket: Socket; warm: boolean }>;
}

export interface DialDataOptions extends Omit<DataConnectionOptions, 'token' | 'signal'> {
  /** Read for each upgrade, so a rotated token file is honoured by the next one. */
  token: () => string;
  /**
   * The upgrade is sent only once this resolves (the socket is got
   * meanwhile): the pick-up passes "Wolf is connected", see PickupDialers.
   */
  upgradeAfter?: Promise<void>;
  /** Told when a warm socket was found dead and the dial goes again on a fresh one. */
  onStale?: (err: unknown) => void;
}

/**
 * Gets a socket and upgrades it. A warm socket (pre-connected ahead of need)
 * that turns out dead before any byte of the answer is replaced once by a
 * fresh one: the peer or a middlebox dropped it while it waited, and the
 * request the control plane holds must not fail for that.
 */
export async function dialDataConnection(source: DataSocketSource, url: URL, signal: AbortSignal, options: DialDataOptions): Promise<DataConnection> {
  const { upgradeAfter, onStale, ...upgrade } = options;
  const first = await source.connect(url, signal);
  if (upgradeAfter) {
    try {
      await upgradeAfter;
      signal.throwIfAborted();
    } catch (err) {
      first.socket.destroy();
      throw err;
    }
  }
  try {
    return await openDataConnection(first.socket, url, { ...upgrade, token: options.token(), signal });
  } catch (err) {
    if (!first.warm || codeOf(err) !== ErrorCodes.DATA_SOCKET_STALE || signal.aborted) throw err;
    onStale?.(err);
  }
  const fresh = await source.connect(url, signal, { fresh: true });
  return openDataConnection(fresh.socket, url, { ...upgrade, token: options.token(), signal });
}
