/**
 * The control plane's side of one control connection (the "Dialer" of
 * PROTOCOL.md): asks the agent for data connections with `conn-ready`, waits
 * for them to arrive, and routes `pickup-failed` back to the waiting caller.
 *
 * It is as strict as the reference: a text frame, a line over 4096 bytes or
 * invalid JSON from the agent drops the whole connection.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import WebSocket, { createWebSocketStream } from 'ws';
import { type Clock, type Timer, systemClock } from '../../src/agent/clock.js';
import { type ControlMessage, LineReader, parseControlLine } from '../../src/agent/control/framing.js';

/** The Go reader's limit on one line. */
export const GO_MAX_LINE_BYTES = 4096;

export interface DialerOptions {
  keepAliveIdleMs: number;
  pingIntervalMs: number;
  /** Omit `revdial.req` from connPath, as older control planes do. */
  legacyConnPath: boolean;
  clock?: Clock;
}

export class DialError extends Error {
  readonly code: 'PICKUP_FAILED' | 'DIAL_TIMEOUT' | 'DIALER_CLOSED' | 'ABORTED';

  constructor(code: DialError['code'], message: string) {
    super(message);
    this.name = 'DialError';
    this.code = code;
  }
}

interface Pending {
  resolve: (stream: Duplex) => void;
  reject: (err: Error) => void;
}

/** Events: 'close' (reason: string), 'protocol-error' (reason: string), 'pickup-failed' (connPath, err). */
export class Dialer extends EventEmitter {
  readonly id = randomBytes(16).toString('hex');
  readonly runnerId: string;
  readonly #ws: WebSocket;
  readonly #options: DialerOptions;
  readonly #clock: Clock;
  readonly #reader = new LineReader(GO_MAX_LINE_BYTES);
  readonly #pending = new Map<string, Pending>();
  /** Legacy connPaths carry no request id: data connections are matched in order. */
  readonly #legacyOrder: string[] = [];
  #idleTimer: Timer | undefined;
  #pingTimer: Timer | undefined;
  #closed = false;

  constructor(ws: WebSocket, runnerId: string, options: DialerOptions) {
    super();
    this.#ws = ws;
    this.runnerId = runnerId;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    ws.on('message', this.#onMessage);
    ws.on('close', this.#onClose);
    ws.on('error', () => undefined);
    this.#pingTimer = this.#clock.setInterval(() => {
      if (ws.readyState === WebSocket.OPEN) ws.ping();
    }, options.pingIntervalMs);
    this.#send({ command: 'keep-alive' });
  }

  get closed(): boolean {
    return this.#closed;
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Asks the agent for a data connection; resolves with it as a byte stream. */
  dial(timeoutMs: number, signal?: AbortSignal): Promise<Duplex> {
    if (this.#closed) return Promise.reject(new DialError('DIALER_CLOSED', `runner ${this.runnerId}: control connection closed`));
    const req = randomBytes(16).toString('hex');
    return new Promise<Duplex>((resolve, reject) => {
      const done = (): void => {
        this.#clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.#pending.delete(req);
        const i = this.#legacyOrder.indexOf(req);
        if (i !== -1) this.#legacyOrder.splice(i, 1);
      };
      const onAbort = (): void => {
        done();
        reject(new DialError('ABORTED', 'dial aborted'));
      };
      const timer = this.#clock.setTimeout(() => {
        done();
        reject(new DialError('DIAL_TIMEOUT', `runner ${this.runnerId}: no data connection within ${timeoutMs} ms`));
      }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(req, {
        resolve: (s) => {
          done();
          resolve(s);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      const connPath = this.#options.legacyConnPath ? `/revdial?revdial.dialer=${this.id}` : `/revdial?revdial.dialer=${this.id}&revdial.req=${req}`;
      if (this.#options.legacyConnPath) this.#legacyOrder.push(req);
      this.#send({ command: 'conn-ready', connPath });
      this.#send({ command: 'keep-alive' });
    });
  }

  /**
   * A data WebSocket for this dialer arrived. With no caller waiting for it
   * (it gave up), the connection is closed at once, as the reference does.
   */
  acceptData(ws: WebSocket, req: string | null): void {
    const key = req ?? this.#legacyOrder[0];
    const pending = key === undefined ? undefined : this.#pending.get(key);
    if (pending === undefined) {
      ws.terminate();
      return;
    }
    ws.on('message', (_data, isBinary) => {
      if (!isBinary) ws.terminate();
    });
    pending.resolve(createWebSocketStream(ws));
  }

  /** Sends raw bytes on the control connection (tests of a hostile plane use it). */
  sendRaw(data: Buffer | string, binary = true): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(data, { binary });
  }

  /**
   * Stops reading the control connection while keeping it open: the agent's
   * pings go unanswered, as over a blackholed path.
   */
  stopReading(): void {
    this.#ws.pause();
  }

  close(): void {
    this.#ws.close(1000);
  }

  terminate(): void {
    this.#ws.terminate();
  }

  #send(msg: ControlMessage): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    this.#ws.send(Buffer.from(`${JSON.stringify(msg)}\n`), { binary: true });
    this.#clock.clearTimeout(this.#idleTimer);
    this.#idleTimer = this.#clock.setTimeout(() => this.#send({ command: 'keep-alive' }), this.#options.keepAliveIdleMs);
  }

  #protocolError(reason: string): void {
    this.emit('protocol-error', reason);
    this.#ws.terminate();
  }

  #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    if (this.#closed) return;
    if (!isBinary) {
      this.#protocolError('text frame from agent');
      return;
    }
    let lines: Buffer[];
    try {
      lines = this.#reader.push(data as Buffer);
    } catch {
      this.#protocolError(`line longer than ${GO_MAX_LINE_BYTES} bytes`);
      return;
    }
    for (const line of lines) {
      let msg: ControlMessage | null;
      try {
        msg = parseControlLine(line);
      } catch {
        this.#protocolError('invalid JSON from agent');
        return;
      }
      if (msg?.command === 'pickup-failed') this.#onPickupFailed(msg);
    }
  };

  #onPickupFailed(msg: ControlMessage): void {
    const connPath = msg.connPath ?? '';
    this.emit('pickup-failed', connPath, msg.err ?? '');
    let req: string | null;
    try {
      req = new URL(connPath, 'http://x').searchParams.get('revdial.req');
    } catch {
      return;
    }
    const key = req ?? this.#legacyOrder[0];
    const pending = key === undefined ? undefined : this.#pending.get(key);
    pending?.reject(new DialError('PICKUP_FAILED', `agent could not pick up: ${msg.err ?? 'no reason given'}`));
  }

  #onClose = (): void => {
    this.#closed = true;
    this.#clock.clearTimeout(this.#idleTimer);
    this.#clock.clearInterval(this.#pingTimer);
    for (const p of [...this.#pending.values()]) {
      p.reject(new DialError('DIALER_CLOSED', `runner ${this.runnerId}: control connection closed`));
    }
    this.emit('close');
  };
}
