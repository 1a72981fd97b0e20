/**
 * A tiny request/response protocol over Node's child-process IPC channel, so
 * the benchmark driver can ask its service processes (control plane, stand-in
 * Wolf) to do things and wait for the answer.
 */
import type { ChildProcess } from 'node:child_process';

export interface IpcRequest {
  id: number;
  cmd: string;
  args?: Record<string, unknown>;
}

export interface IpcReply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

export type Handler = (args: Record<string, unknown>) => unknown;

/** In a child: answers requests from the parent with the named handlers. */
export function serve(handlers: Record<string, Handler>): void {
  process.on('message', (msg: IpcRequest) => {
    const handler = handlers[msg.cmd];
    const reply = (r: Omit<IpcReply, 'id'>): void => {
      process.send?.({ id: msg.id, ...r });
    };
    if (!handler) {
      reply({ ok: false, error: `unknown command ${msg.cmd}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(msg.args ?? {}))
      .then(
        (result) => reply({ ok: true, result }),
        (err: unknown) => reply({ ok: false, error: err instanceof Error ? `${err.name}: ${err.message}` : String(err) }),
      );
  });
  // The parent going away ends the child.
  process.on('disconnect', () => process.exit(0));
}

/** In the parent: sends commands to one child and waits for each answer. */
export class IpcClient {
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #seq = 0;

  constructor(child: ChildProcess) {
    this.#child = child;
    child.on('message', (msg: IpcReply) => {
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(msg.error));
    });
    child.once('exit', (code, signal) => {
      for (const p of this.#pending.values()) p.reject(new Error(`child exited (${code ?? signal})`));
      this.#pending.clear();
    });
  }

  call<T>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#child.send({ id, cmd, args } satisfies IpcRequest);
    });
  }
}
