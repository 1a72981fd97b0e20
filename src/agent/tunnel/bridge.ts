/**
 * Pipes one data connection to one local socket, both ways, with backpressure.
 *
 * WebSocket has no half-close, so when one side ends the bridge delivers what
 * that side sent and then closes the other: local end → WebSocket close 1000;
 * the plane's close (close frame or TCP end) → local `end()`. A backstop
 * destroys a peer that never finishes closing (a stalled Wolf, a silent
 * control plane). Every listener and timer is removed on one path, in `#finish`.
 */
import type { Socket } from 'node:net';
import { type Clock, type Timer, systemClock } from '../clock.js';
import { ErrorCodes, RevdialError, describe } from '../errors.js';
import type { DataConnection, DataConnectionHandler } from './data-connection.js';

export type Direction = 'to_local' | 'from_local';

export interface BridgeOptions {
  clock?: Clock;
  closeBackstopMs: number;
  onBytes?: (direction: Direction, bytes: number) => void;
}

export interface BridgeResult {
  /** Who ended the tunnel: Wolf, the control plane, an error, or our own abort. */
  endedBy: 'local' | 'remote' | 'error' | 'aborted';
  bytesToLocal: number;
  bytesFromLocal: number;
  error?: RevdialError;
}

export class Bridge {
  readonly done: Promise<BridgeResult>;
  readonly #data: DataConnection;
  readonly #local: Socket;
  readonly #clock: Clock;
  readonly #options: BridgeOptions;
  #bytesToLocal = 0;
  #bytesFromLocal = 0;
  #endedBy: BridgeResult['endedBy'] | undefined;
  #error: RevdialError | undefined;
  #dataClosed = false;
  #localClosed = false;
  #backstop: Timer | undefined;
  #resolve!: (result: BridgeResult) => void;

  constructor(data: DataConnection, local: Socket, options: BridgeOptions) {
    this.#data = data;
    this.#local = local;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.done = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    local.on('data', this.#localOnData);
    local.on('drain', this.#localOnDrain);
    local.on('end', this.#localOnEnd);
    local.on('error', this.#localOnError);
    local.on('close', this.#localOnClose);
    if (local.destroyed) this.#localOnClose();
    // The data connection is handed over paused, so that nothing the control
    // plane sent before the bridge existed (the request right behind the 101)
    // is lost; `start` delivers it and starts reading.
    data.start(this.#dataHandler);
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
    this.#data.terminate();
    this.#local.destroy();
  }

  readonly #dataHandler: DataConnectionHandler = {
    data: (chunk) => {
      if (this.#local.writableEnded || this.#local.destroyed) return;
      this.#bytesToLocal += chunk.length;
      this.#options.onBytes?.('to_local', chunk.length);
      if (!this.#local.write(chunk)) this.#data.pause();
    },
    drain: () => {
      if (this.#local.isPaused() && !this.#localClosed) this.#local.resume();
    },
    end: (error) => {
      if (error) {
        this.#endedBy ??= 'error';
        this.#error ??= error;
      }
      this.#endedBy ??= 'remote';
      if (this.#local.destroyed) return;
      if (error && error.code !== ErrorCodes.TUNNEL_ABORTED) {
        // A protocol violation or a dead path: what came may be corrupt or cut short.
        this.#local.destroy();
        return;
      }
      // Let Wolf read everything already written, then let go of it.
      this.#local.end(this.#localOnFinished);
      this.#armBackstop();
    },
    close: () => {
      this.#dataClosed = true;
      this.#endedBy ??= 'remote';
      this.#maybeFinish();
    },
  };

  #localOnDrain = (): void => {
    this.#data.resume();
  };

  #localOnData = (chunk: Buffer): void => {
    if (!this.#data.writable) return;
    this.#bytesFromLocal += chunk.length;
    this.#options.onBytes?.('from_local', chunk.length);
    // `chunk` may be a view into a read buffer shared by all tunnels: `send`
    // copies it into the masked frame before it returns.
    if (!this.#data.send(chunk)) this.#local.pause();
  };

  #localOnEnd = (): void => {
    this.#endedBy ??= 'local';
    // Frames already queued go out before the close frame.
    this.#data.close(1000);
    this.#armBackstop();
  };

  #localOnError = (err: Error): void => {
    this.#endedBy ??= 'error';
    this.#error ??= new RevdialError(ErrorCodes.TUNNEL_ABORTED, `local Wolf connection failed: ${describe(err)}`, {
      cause: err,
    });
    this.#data.close(1011, 'local connection failed');
    this.#armBackstop();
  };

  #localOnClose = (): void => {
    this.#localClosed = true;
    if (this.#data.writable) {
      this.#endedBy ??= 'local';
      this.#data.close(1000);
    }
    this.#armBackstop();
    this.#maybeFinish();
  };

  #localOnFinished = (): void => {
    this.#local.destroy();
  };

  #armBackstop(): void {
    if (this.#dataClosed && this.#localClosed) return;
    this.#backstop ??= this.#clock.setTimeout(() => {
      this.#data.terminate();
      this.#local.destroy();
    }, this.#options.closeBackstopMs);
  }

  #maybeFinish(): void {
    if (!this.#dataClosed || !this.#localClosed) return;
    this.#clock.clearTimeout(this.#backstop);
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
