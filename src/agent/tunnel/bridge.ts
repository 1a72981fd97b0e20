/**
 * Pipes one data WebSocket to one local socket, both ways, with backpressure.
 *
 * WebSocket has no half-close, so when one side ends the bridge delivers what
 * that side sent and then closes the other: local end → WebSocket close 1000;
 * WebSocket close → local `end()`. A backstop destroys a peer that never
 * finishes closing (a stalled Wolf, a silent control plane). Every listener
 * and timer is removed on one path, in `#finish`.
 */
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, describe } from '../errors.js';

export type Direction = 'to_local' | 'from_local';

export interface BridgeOptions {
  clock?: Clock;
  closeBackstopMs: number;
  /** Pause reading Wolf while this many bytes wait to go out on the WebSocket. */
  highWaterMark?: number;
  onBytes?: (direction: Direction, bytes: number) => void;
}

export interface BridgeResult {
  /** Who ended the tunnel: Wolf, the control plane, an error, or our own abort. */
  endedBy: 'local' | 'remote' | 'error' | 'aborted';
  bytesToLocal: number;
  bytesFromLocal: number;
  error?: RevdialError;
}

const DEFAULT_HIGH_WATER_MARK = 1024 * 1024;

export class Bridge {
  readonly done: Promise<BridgeResult>;
  readonly #ws: WebSocket;
  readonly #local: Socket;
  readonly #clock: Clock;
  readonly #options: BridgeOptions;
  readonly #highWaterMark: number;
  #bytesToLocal = 0;
  #bytesFromLocal = 0;
  #endedBy: BridgeResult['endedBy'] | undefined;
  #error: RevdialError | undefined;
  #wsClosed = false;
  #localClosed = false;
  #backstop: Timer | undefined;
  #resolve!: (result: BridgeResult) => void;

  constructor(ws: WebSocket, local: Socket, options: BridgeOptions) {
    this.#ws = ws;
    this.#local = local;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    this.done = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    ws.on('message', this.#wsOnMessage);
    ws.on('close', this.#wsOnClose);
    ws.on('error', this.#wsOnError);
    local.on('data', this.#localOnData);
    local.on('drain', this.#localOnDrain);
    local.on('end', this.#localOnEnd);
    local.on('error', this.#localOnError);
    local.on('close', this.#localOnClose);
    if (ws.readyState !== WebSocket.OPEN) this.#wsOnClose();
    if (local.destroyed) this.#localOnClose();
    // The data connection is handed over paused (ws-dial `pauseOnOpen`) so that
    // nothing the control plane sent before the bridge existed is lost.
    if (ws.isPaused && !this.#wsClosed) ws.resume();
    // So is a local socket that reads into a shared buffer (local-dialer `sharedReadBuffer`).
    if (local.isPaused() && !this.#localClosed) local.resume();
  }

  get bytesToLocal(): number {
    return this.#bytesToLocal;
  }

  get bytesFromLocal(): number {
    return this.#bytesFromLocal;
  }

  /** Cuts both sides now (shutdown after the grace period). */
  abort(reason: RevdialError): void {
    this.#endedBy ??= 'aborted';
    this.#error ??= reason;
    this.#ws.terminate();
    this.#local.destroy();
  }

  #wsOnMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    if (!isBinary) {
      this.#endedBy ??= 'error';
      this.#error ??= new RevdialError(ErrorCodes.PROTOCOL_TEXT_FRAME, 'control plane sent a text frame on a data connection; closing the tunnel');
      this.#ws.close(1003, 'binary frames only');
      this.#local.destroy();
      return;
    }
    if (this.#local.writableEnded || this.#local.destroyed) return;
    const chunk = data as Buffer;
    this.#bytesToLocal += chunk.length;
    this.#options.onBytes?.('to_local', chunk.length);
    if (!this.#local.write(chunk) && !this.#ws.isPaused) this.#ws.pause();
  };

  #localOnDrain = (): void => {
    if (this.#ws.isPaused) this.#ws.resume();
  };

  #localOnData = (chunk: Buffer): void => {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    this.#bytesFromLocal += chunk.length;
    this.#options.onBytes?.('from_local', chunk.length);
    // `chunk` may be a view into a read buffer shared by all tunnels: ws.send
    // copies it into the masked frame before it returns (ws-dial's mask is
    // never all zeros, and nothing puts ws's sender in a queuing state).
    this.#ws.send(chunk, { binary: true }, this.#wsOnSent);
    if (this.#ws.bufferedAmount >= this.#highWaterMark) this.#local.pause();
  };

  #wsOnSent = (): void => {
    if (this.#local.isPaused() && this.#ws.bufferedAmount < this.#highWaterMark / 2) this.#local.resume();
  };

  #localOnEnd = (): void => {
    this.#endedBy ??= 'local';
    // Frames already queued go out before the close frame.
    this.#closeWebSocket(1000);
    this.#armBackstop();
  };

  #localOnError = (err: Error): void => {
    this.#endedBy ??= 'error';
    this.#error ??= new RevdialError(ErrorCodes.TUNNEL_ABORTED, `local Wolf connection failed: ${describe(err)}`, {
      cause: err,
    });
    this.#closeWebSocket(1011, 'local connection failed');
    this.#armBackstop();
  };

  #localOnClose = (): void => {
    this.#localClosed = true;
    if (this.#ws.readyState === WebSocket.OPEN) {
      this.#endedBy ??= 'local';
      this.#closeWebSocket(1000);
    }
    this.#armBackstop();
    this.#maybeFinish();
  };

  /**
   * Closes the data connection politely. Reading resumes first: if Wolf had
   * stopped reading, the WebSocket is paused and would never see the peer's
   * close frame, holding the tunnel until the backstop.
   */
  #closeWebSocket(code: number, reason?: string): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    if (this.#ws.isPaused) this.#ws.resume();
    this.#ws.close(code, reason);
  }

  #wsOnError = (err: Error): void => {
    this.#endedBy ??= 'error';
    this.#error ??= new RevdialError(ErrorCodes.TUNNEL_ABORTED, `data connection failed: ${describe(err)}`, {
      cause: err,
    });
  };

  #wsOnClose = (): void => {
    this.#wsClosed = true;
    this.#endedBy ??= 'remote';
    if (this.#ws.isPaused) this.#ws.resume();
    if (!this.#local.destroyed) {
      // Let Wolf read everything already written, then let go of it.
      this.#local.end(this.#localOnFinished);
      this.#armBackstop();
    }
    this.#maybeFinish();
  };

  #localOnFinished = (): void => {
    this.#local.destroy();
  };

  #armBackstop(): void {
    this.#backstop ??= this.#clock.setTimeout(() => {
      this.#ws.terminate();
      this.#local.destroy();
    }, this.#options.closeBackstopMs);
  }

  #maybeFinish(): void {
    if (!this.#wsClosed || !this.#localClosed) return;
    this.#clock.clearTimeout(this.#backstop);
    this.#ws.removeListener('message', this.#wsOnMessage);
    this.#ws.removeListener('close', this.#wsOnClose);
    this.#local.removeListener('data', this.#localOnData);
    this.#local.removeListener('drain', this.#localOnDrain);
    this.#local.removeListener('end', this.#localOnEnd);
    this.#local.removeListener('close', this.#localOnClose);
    // 'error' listeners stay: a late error on a dead socket must not crash the process.
    const result: BridgeResult = {
      endedBy: this.#endedBy ?? 'remote',
      bytesToLocal: this.#bytesToLocal,
      bytesFromLocal: this.#bytesFromLocal,
    };
    if (this.#error) result.error = this.#error;
    this.#resolve(result);
  }
}
