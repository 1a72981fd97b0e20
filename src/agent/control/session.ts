/**
 * One control connection (PROTOCOL.md, "Control connection" and "Control
 * messages"): reads newline-delimited JSON from binary frames, hands each
 * `conn-ready` to its owner, sends `pickup-failed`, and watches liveness.
 *
 * A session lives once: when it ends, `closed` resolves with why, and the
 * supervisor dials a new one. Tunnels are not owned here, so ending a session
 * never cuts one.
 *
 * What the agent sends is bounded, whatever the peer does. A control plane
 * that stops reading while it keeps sending `conn-ready` would otherwise make
 * every `pickup-failed` pile up in memory: once `sendHighWaterBytes` wait to
 * go out, the session stops reading from the peer (no more requests are taken
 * in) and resumes when the queue has drained to a quarter of that; if it has
 * not drained within `sendStallMs`, the connection is dropped
 * (REVDIAL_CONTROL_SEND_STALLED) and the supervisor dials a new one. A
 * message that would take the queue past `maxSendQueueBytes` is dropped.
 */
import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, describe } from '../errors.js';
import { LogLimiter } from '../log-limiter.js';
import { type ControlMessage, LineReader, encodeControlMessage, parseControlLine } from './framing.js';

export interface ControlSessionOptions {
  pingIntervalMs: number;
  pingTimeoutMs: number;
  maxLineBytes: number;
  /** How long a polite close may take before the socket is destroyed. */
  closeBackstopMs: number;
  clock?: Clock;
  log: Logger;
  /** Rate-limits warnings a peer can cause once per message. */
  limiter?: LogLimiter;
  /** Stop reading from the peer while this many bytes wait to be sent. */
  sendHighWaterBytes?: number;
  /** Drop messages that would take the send queue past this. */
  maxSendQueueBytes?: number;
  /** Drop the connection when a full send queue has not drained for this long (default: pingTimeoutMs). */
  sendStallMs?: number;
  onConnReady: (connPath: string, session: ControlSession) => void;
}

export const DEFAULT_SEND_HIGH_WATER_BYTES = 256 * 1024;
export const DEFAULT_MAX_SEND_QUEUE_BYTES = 1024 * 1024;

export interface SessionEnd {
  error: RevdialError;
  /** How long the connection was up, in ms. */
  uptimeMs: number;
}

export class ControlSession {
  readonly closed: Promise<SessionEnd>;
  readonly #ws: WebSocket;
  readonly #options: ControlSessionOptions;
  readonly #clock: Clock;
  readonly #reader: LineReader;
  readonly #openedAt: number;
  #endReason: RevdialError | undefined;
  #pingTimer: Timer | undefined;
  #deadTimer: Timer | undefined;
  /** When the last frame, ping or pong arrived (clock time). */
  #lastAlive = 0;
  #backstop: Timer | undefined;
  #stallTimer: Timer | undefined;
  /** Reading is paused because the peer is not reading what we send. */
  #sendBlocked = false;
  /** Lines of a frame not yet dispatched when reading paused. */
  #pendingLines: Buffer[] = [];
  /** Frames ws had already read when reading paused (at most a socket read's worth). */
  #heldFrames: Buffer[] = [];
  #dropped = 0;
  readonly #limiter: LogLimiter;
  readonly #highWater: number;
  readonly #maxQueue: number;
  #resolveClosed!: (end: SessionEnd) => void;

  /** Takes over an open WebSocket (see `dialWebSocket`). */
  constructor(ws: WebSocket, options: ControlSessionOptions) {
    this.#ws = ws;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#reader = new LineReader(options.maxLineBytes);
    this.#limiter = options.limiter ?? new LogLimiter({ clock: this.#clock });
    this.#highWater = options.sendHighWaterBytes ?? DEFAULT_SEND_HIGH_WATER_BYTES;
    this.#maxQueue = Math.max(this.#highWater, options.maxSendQueueBytes ?? DEFAULT_MAX_SEND_QUEUE_BYTES);
    this.#openedAt = this.#clock.now();
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    ws.on('message', this.#onMessage);
    ws.on('pong', this.#onAlive);
    ws.on('ping', this.#onAlive);
    ws.on('error', this.#onError);
    ws.on('close', this.#onClose);
    this.#pingTimer = this.#clock.setInterval(this.#sendPing, options.pingIntervalMs);
    this.#armDeadline();
  }

  get isOpen(): boolean {
    return this.#ws.readyState === this.#ws.OPEN;
  }

  /** Bytes waiting to be sent on the control connection. */
  get sendQueueBytes(): number {
    return this.#ws.bufferedAmount;
  }

  /** True while reading is paused because the peer does not read. */
  get sendBlocked(): boolean {
    return this.#sendBlocked;
  }

  /** Messages dropped because the send queue was full. */
  get droppedMessages(): number {
    return this.#dropped;
  }

  /** Sends one control message; returns false when it could not be sent (closed, too long, queue full). */
  send(msg: ControlMessage): boolean {
    const line = encodeControlMessage(msg);
    if (line === null) {
      this.#warn('control-line-too-long', { command: msg.command }, 'control message too long to send; dropped');
      return false;
    }
    if (this.#ws.readyState !== this.#ws.OPEN) return false;
    const queued = this.#ws.bufferedAmount;
    if (queued + line.length > this.#maxQueue) {
      this.#dropped++;
      this.#warn(
        'control-send-queue-full',
        { code: ErrorCodes.CONTROL_SEND_STALLED, command: msg.command, queuedBytes: queued },
        `control plane is not reading: ${queued} bytes wait to be sent; ${msg.command ?? 'message'} dropped`,
      );
      return false;
    }
    this.#ws.send(line, { binary: true }, this.#onSent);
    if (!this.#sendBlocked && this.#ws.bufferedAmount >= this.#highWater) this.#blockReading();
    return true;
  }

  /** Closes politely (code 1000), destroying the socket if the peer never answers. */
  close(reason: RevdialError): void {
    this.#endReason ??= reason;
    if (this.#ws.readyState === this.#ws.CLOSED) return;
    this.#ws.close(1000, 'agent closing');
    this.#backstop ??= this.#clock.setTimeout(() => this.#ws.terminate(), this.#options.closeBackstopMs);
  }

  /** Drops the connection now, without a close handshake (shutdown deadline). */
  terminate(reason: RevdialError): void {
    this.#fail(reason);
  }

  /** Drops the connection at once: protocol errors and a dead peer. */
  #fail(reason: RevdialError): void {
    this.#endReason ??= reason;
    this.#ws.terminate();
  }

  #warn(kind: string, fields: Record<string, unknown>, msg: string): void {
    this.#limiter.warn(this.#options.log, kind, fields, msg);
  }

  /**
   * The peer has not read what we sent: take no more requests from it until
   * it does. Liveness is judged by the drain now (a paused socket sees no
   * pongs), with its own limit.
   */
  #blockReading(): void {
    this.#sendBlocked = true;
    this.#ws.pause();
    this.#clock.clearTimeout(this.#deadTimer);
    this.#deadTimer = undefined;
    const stallMs = this.#options.sendStallMs ?? this.#options.pingTimeoutMs;
    this.#stallTimer = this.#clock.setTimeout(() => {
      this.#fail(
        new RevdialError(
          ErrorCodes.CONTROL_SEND_STALLED,
          `control plane read nothing of the ${this.#ws.bufferedAmount} bytes waiting for it for ${stallMs} ms: dropping the connection`,
        ),
      );
    }, stallMs);
  }

  /** A message went out to the socket: resume reading once the queue is low again. */
  #onSent = (): void => {
    if (!this.#sendBlocked || this.#endReason !== undefined || this.#ws.readyState !== this.#ws.OPEN) return;
    if (this.#ws.bufferedAmount > this.#highWater / 4) return;
    this.#sendBlocked = false;
    this.#clock.clearTimeout(this.#stallTimer);
    this.#stallTimer = undefined;
    this.#armDeadline();
    // What was read before the pause goes first, in order; the socket resumes
    // only if all of it was taken without blocking again.
    if (!this.#dispatchLines(this.#pendingLines.splice(0))) return;
    while (this.#heldFrames.length > 0) {
      if (!this.#consume(this.#heldFrames.shift()!)) return;
    }
    // Dispatching may have closed the connection; the type checker still sees the check above.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.resume();
  };

  #sendPing = (): void => {
    if (this.#ws.readyState === this.#ws.OPEN && !this.#sendBlocked) this.#ws.ping();
  };

  /**
   * Called for every frame, ping and pong: it only notes the time. One timer
   * runs at a time and, when it fires early, re-arms for what is left, so a
   * busy connection does not cancel and create a Node timer per message (that
   * churn cost 2.6 s of 7.6 s busy in a profile of 5,000 tunnels with warm
   * connections open).
   */
  #armDeadline(): void {
    this.#lastAlive = this.#clock.now();
    this.#deadTimer ??= this.#clock.setTimeout(this.#onDeadline, this.#options.pingTimeoutMs);
  }

  #onDeadline = (): void => {
    this.#deadTimer = undefined;
    const left = this.#lastAlive + this.#options.pingTimeoutMs - this.#clock.now();
    if (left > 0) {
      this.#deadTimer = this.#clock.setTimeout(this.#onDeadline, left);
      return;
    }
    this.#fail(
      new RevdialError(
        ErrorCodes.PING_TIMEOUT,
        `no frame or pong from the control plane for ${this.#options.pingTimeoutMs} ms: the connection is dead (half-open path?)`,
      ),
    );
  };

  #onAlive = (): void => {
    if (!this.#sendBlocked) this.#armDeadline();
  };

  #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    if (this.#endReason !== undefined) return;
    if (this.#sendBlocked) {
      // ws emits what it had already read even while paused: keep it for later.
      if (isBinary) {
        this.#heldFrames.push(data as Buffer);
        return;
      }
    } else {
      this.#armDeadline();
    }
    if (!isBinary) {
      this.#fail(new RevdialError(ErrorCodes.PROTOCOL_TEXT_FRAME, 'control plane sent a text frame; the RevDial protocol uses binary frames only'));
      return;
    }
    this.#consume(data as Buffer);
  };

  /** Reads one frame's lines; false when reading blocked (or the session ended) part way. */
  #consume(frame: Buffer): boolean {
    let lines: Buffer[];
    try {
      lines = this.#reader.push(frame);
    } catch (err) {
      this.#fail(err as RevdialError);
      return false;
    }
    return this.#dispatchLines(lines);
  }

  #dispatchLines(lines: Buffer[]): boolean {
    for (let i = 0; i < lines.length; i++) {
      let msg: ControlMessage | null;
      try {
        msg = parseControlLine(lines[i]!);
      } catch (err) {
        this.#fail(err as RevdialError);
        return false;
      }
      if (msg !== null) this.#dispatch(msg);
      // #dispatch may have ended the session or blocked reading.
      if (this.#endReason !== undefined) return false;
      if (this.#sendBlocked) {
        this.#pendingLines = lines.slice(i + 1);
        return false;
      }
    }
    return true;
  }

  #dispatch(msg: ControlMessage): void {
    switch (msg.command) {
      case 'keep-alive':
        return;
      case 'conn-ready':
        this.#options.onConnReady(msg.connPath ?? '', this);
        return;
      default:
        this.#options.log.debug({ command: msg.command }, 'ignoring unknown control command');
    }
  }

  #onError = (err: Error): void => {
    this.#endReason ??= new RevdialError(ErrorCodes.CONTROL_CLOSED, `control connection error: ${describe(err)}`, { cause: err });
  };

  #onClose = (code: number, reason: Buffer): void => {
    this.#clock.clearInterval(this.#pingTimer);
    this.#clock.clearTimeout(this.#deadTimer);
    this.#clock.clearTimeout(this.#backstop);
    this.#clock.clearTimeout(this.#stallTimer);
    this.#pendingLines = [];
    this.#heldFrames = [];
    this.#ws.removeListener('message', this.#onMessage);
    this.#ws.removeListener('pong', this.#onAlive);
    this.#ws.removeListener('ping', this.#onAlive);
    const said = reason.length > 0 ? ` "${describe(reason.toString('utf8'), 80)}"` : '';
    const error = this.#endReason ?? new RevdialError(ErrorCodes.CONTROL_CLOSED, `control plane closed the control connection (code ${code}${said})`);
    this.#resolveClosed({ error, uptimeMs: this.#clock.now() - this.#openedAt });
  };
}
