/**
 * Pick-ups waiting for a dial slot. A burst of `conn-ready` (a control plane
 * catching up on queued requests, or a hostile one) must not open a thousand
 * data connections and local sockets at once: at most `concurrency` pick-ups
 * dial at a time, at most `maxQueued` wait behind them, and anything beyond
 * that is refused by the caller at once (`pickup-failed`), so memory stays
 * flat whatever the plane sends. A slot is held only for the pick-up (the two
 * dials), not for the life of the tunnel it opens.
 */
export interface PickupQueueOptions<T> {
  /** Pick-ups dialing at once. */
  concurrency: number;
  /** Pick-ups waiting for a slot; `push` refuses more. */
  maxQueued: number;
  /** Runs one pick-up; the slot is freed when the promise settles. Must not reject. */
  run: (item: T) => Promise<void>;
}

export const DEFAULT_PICKUP_CONCURRENCY = 32;
export const DEFAULT_PICKUP_BACKLOG = 1024;

export class PickupQueue<T> {
  readonly #options: PickupQueueOptions<T>;
  // Waiting items are those from #head on; the array is compacted as it empties.
  #waiting: T[] = [];
  #head = 0;
  #running = 0;

  constructor(options: PickupQueueOptions<T>) {
    if (!(options.concurrency >= 1) || !(options.maxQueued >= 0)) {
      throw new RangeError('PickupQueue: concurrency must be 1 or more and maxQueued 0 or more');
    }
    this.#options = options;
  }

  /** Pick-ups dialing now. */
  get running(): number {
    return this.#running;
  }

  /** Pick-ups waiting for a slot. */
  get queued(): number {
    return this.#waiting.length - this.#head;
  }

  /** Starts `item` now or queues it; false when the backlog is full (the caller refuses it). */
  push(item: T): boolean {
    if (this.#running < this.#options.concurrency) {
      this.#start(item);
      return true;
    }
    if (this.queued >= this.#options.maxQueued) return false;
    this.#waiting.push(item);
    return true;
  }

  /** Removes every waiting item (shutdown) and returns them, oldest first. */
  takeAll(): T[] {
    const items = this.#waiting.slice(this.#head);
    this.#waiting = [];
    this.#head = 0;
    return items;
  }

  #start(item: T): void {
    this.#running++;
    let settled: Promise<void>;
    try {
      settled = this.#options.run(item);
    } catch {
      settled = Promise.resolve();
    }
    settled.then(this.#release, this.#release);
  }

  #release = (): void => {
    this.#running--;
    while (this.#running < this.#options.concurrency && this.queued > 0) {
      const next = this.#waiting[this.#head] as T;
      this.#waiting[this.#head] = undefined as T;
      this.#head++;
      if (this.#head > 1024 && this.#head * 2 > this.#waiting.length) {
        this.#waiting = this.#waiting.slice(this.#head);
        this.#head = 0;
      }
      this.#start(next);
    }
  };
}
