/**
 * One control connection (PROTOCOL.md, "Control connection" and "Control
 * messages"): reads newline-delimited JSON from binary frames, hands each
 * `conn-ready` to its owner, sends `pickup-failed`, and watches liveness.
 *
 * A session lives once: when it ends, `closed` resolves with why, and the
 * supervisor dials a new one. Tunnels are not owned here, so ending a session
 * never cuts one.
 */
import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, describe } from '../errors.js';
import { type ControlMessage, LineReader, encodeControlMessage, parseControlLine } from './framing.js';

export interface ControlSessionOptions {
  pingIntervalMs: number;
  pingTimeoutMs: number;
  maxLineBytes: number;
  /** How long a polite close may take before the socket is destroyed. */
  closeBackstopMs: number;
  clock?: Clock;
  log: Logger;
  onConnReady: (connPath: string, session: ControlSession) => void;
}

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
  #backstop: Timer | undefined;
  #resolveClosed!: (end: SessionEnd) => void;

  /** Takes over an open WebSocket (see `dialWebSocket`). */
  constructor(ws: WebSocket, options: ControlSessionOptions) {
    this.#ws = ws;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#reader = new LineReader(options.maxLineBytes);
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

  /** Sends one control message; returns false when it could not be sent. */
  send(msg: ControlMessage): boolean {
    const line = encodeControlMessage(msg);
    if (line === null) {
      this.#options.log.warn({ command: msg.command }, 'control message too long to send; dropped');
      return false;
    }
    if (this.#ws.readyState !== this.#ws.OPEN) return false;
    this.#ws.send(line, { binary: true });
    return true;
  }

  /** Closes politely (code 1000), destroying the socket if the peer never answers. */
  close(reason: RevdialError): void {
    this.#endReason ??= reason;
    if (this.#ws.readyState === this.#ws.CLOSED) return;
    this.#ws.close(1000, 'agent closing');
    this.#backstop ??= this.#clock.setTimeout(() => this.#ws.terminate(), this.#options.closeBackstopMs);
  }

  /** Drops the connection at once: protocol errors and a dead peer. */
  #fail(reason: RevdialError): void {
    this.#endReason ??= reason;
    this.#ws.terminate();
  }

  #sendPing = (): void => {
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.ping();
  };

  #armDeadline(): void {
    this.#clock.clearTimeout(this.#deadTimer);
    this.#deadTimer = this.#clock.setTimeout(this.#onDeadline, this.#options.pingTimeoutMs);
  }

  #onDeadline = (): void => {
    this.#fail(
      new RevdialError(
        ErrorCodes.PING_TIMEOUT,
        `no frame or pong from the control plane for ${this.#options.pingTimeoutMs} ms: the connection is dead (half-open path?)`,
      ),
    );
  };

  #onAlive = (): void => {
    this.#armDeadline();
  };

  #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    this.#armDeadline();
    if (this.#endReason !== undefined) return;
    if (!isBinary) {
      this.#fail(new RevdialError(ErrorCodes.PROTOCOL_TEXT_FRAME, 'control plane sent a text frame; the RevDial protocol uses binary frames only'));
      return;
    }
    let lines: Buffer[];
    try {
      lines = this.#reader.push(data as Buffer);
    } catch (err) {
      this.#fail(err as RevdialError);
      return;
    }
    for (const line of lines) {
      let msg: ControlMessage | null;
      try {
        msg = parseControlLine(line);
      } catch (err) {
        this.#fail(err as RevdialError);
        return;
      }
      if (msg !== null) this.#dispatch(msg);
      // #dispatch may have ended the session; the type checker cannot see that.
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
      if (this.#endReason !== undefined) return;
    }
  };

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
    this.#ws.removeListener('message', this.#onMessage);
    this.#ws.removeListener('pong', this.#onAlive);
    this.#ws.removeListener('ping', this.#onAlive);
    const said = reason.length > 0 ? ` "${describe(reason.toString('utf8'), 80)}"` : '';
    const error = this.#endReason ?? new RevdialError(ErrorCodes.CONTROL_CLOSED, `control plane closed the control connection (code ${code}${said})`);
    this.#resolveClosed({ error, uptimeMs: this.#clock.now() - this.#openedAt });
  };
}
