import type { TimerClock } from "./clock.js";

export type BreakerState = "closed" | "open" | "halfOpen";

/**
 * A circuit breaker: after `threshold` consecutive failures it opens for `cooldownMs`, during
 * which calls fail at once instead of waiting on a dead or hung server; then one probe call is let
 * through — success closes it, failure opens it again.
 */
export class Breaker {
  state: BreakerState = "closed";
  #failures = 0;
  #openUntil = 0;
  #probing = false;
  readonly #threshold: number;
  readonly #cooldownMs: number;
  readonly #clock: TimerClock;
  readonly #onChange: (state: BreakerState) => void;

  constructor(threshold: number, cooldownMs: number, clock: TimerClock, onChange: (state: BreakerState) => void) {
    this.#threshold = threshold;
    this.#cooldownMs = cooldownMs;
    this.#clock = clock;
    this.#onChange = onChange;
  }

  /** Whether a call may go through now (the probe included: see `gate`). */
  allow(): boolean {
    return this.gate() !== "shut";
  }

  /**
   * What a call may do now: go through (`pass`, closed), fail at once (`shut`), or be the one probe
   * of a half-open breaker (`probe`) — which the caller should not wait for: the facades send a
   * probe in the background and answer their caller as if the breaker were still open.
   */
  gate(): "pass" | "probe" | "shut" {
    if (this.state === "closed") return "pass";
    if (this.state === "open") {
      if (this.#clock.now() < this.#openUntil) return "shut";
      this.state = "halfOpen";
      this.#probing = false;
    }
    if (this.#probing) return "shut";
    this.#probing = true;
    return "probe";
  }

  /** Gives back a probe that was taken but not used (the next call may probe). */
  skipProbe(): void {
    this.#probing = false;
  }

  /** Whether `allow()` would let a call through now (without taking the probe). */
  ready(): boolean {
    if (this.state === "closed") return true;
    if (this.state === "open") return this.#clock.now() >= this.#openUntil;
    return !this.#probing;
  }

  success(): void {
    this.#failures = 0;
    this.#probing = false;
    if (this.state !== "closed") {
      this.state = "closed";
      this.#onChange("closed");
    }
  }

  failure(): void {
    this.#failures++;
    this.#probing = false;
    if (this.state === "halfOpen" || (this.state === "closed" && this.#failures >= this.#threshold)) {
      const wasOpen = this.state !== "closed";
      this.state = "open";
      this.#openUntil = this.#clock.now() + this.#cooldownMs;
      if (!wasOpen) this.#onChange("open");
    }
  }
}

export interface RetryQueueOptions<T> {
  /** Most items kept; the oldest is dropped (and reported) beyond it. */
  max: number;
  /** Tries one item; true when it is done (or no longer needed). Must not throw. */
  attempt(key: string, item: T): Promise<boolean>;
  /** False while retrying is pointless (e.g. the breaker is open); the round waits for the next tick. */
  ready(): boolean;
  onDrop(key: string, item: T): void;
}

const FIRST_DELAY_MS = 250;
/** Retries back off to at most this; calls to a dead server are paced by its breaker anyway. */
const MAX_DELAY_MS = 5_000;

/**
 * Work that failed and is retried in the background: one item per key (the newest wins), bounded,
 * retried with exponential backoff until it succeeds.
 */
export class RetryQueue<T> {
  readonly #items = new Map<string, T>();
  readonly #clock: TimerClock;
  readonly #o: RetryQueueOptions<T>;
  #timer: unknown;
  #delay = FIRST_DELAY_MS;
  #running: Promise<void> | undefined;
  #closed = false;

  constructor(clock: TimerClock, options: RetryQueueOptions<T>) {
    this.#clock = clock;
    this.#o = options;
  }

  get size(): number {
    return this.#items.size;
  }

  get(key: string): T | undefined {
    return this.#items.get(key);
  }

  keys(): string[] {
    return [...this.#items.keys()];
  }

  /** Queues `item` for `key`, replacing an older one. */
  put(key: string, item: T): void {
    this.#items.delete(key);
    this.#items.set(key, item);
    if (this.#items.size > this.#o.max) {
      const [oldKey, oldItem] = this.#items.entries().next().value as [string, T];
      this.#items.delete(oldKey);
      this.#o.onDrop(oldKey, oldItem);
    }
    this.#schedule();
  }

  /** Forgets the item of `key` (a newer operation supersedes it). */
  delete(key: string): void {
    this.#items.delete(key);
  }

  /** Runs a retry round now (e.g. when the connection is back). */
  kick(): void {
    if (this.#items.size === 0 || this.#closed) return;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#delay = FIRST_DELAY_MS;
    this.#start();
  }

  /** Waits for a round in progress, then stops retrying. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#running !== undefined || this.#closed) return;
    // Background work: nobody waits for a retry, so it does not keep the process alive.
    this.#timer = this.#clock.setTimeout(
      () => {
        this.#timer = undefined;
        this.#start();
      },
      this.#delay,
      true,
    );
  }

  #start(): void {
    if (this.#running !== undefined || this.#closed) return;
    this.#running = this.#round().then((failed) => {
      this.#running = undefined;
      this.#delay = failed ? Math.min(this.#delay * 2, MAX_DELAY_MS) : FIRST_DELAY_MS;
      if (this.#items.size > 0) this.#schedule();
    });
  }

  /** One pass over the queue, oldest first; true when an attempt failed. */
  async #round(): Promise<boolean> {
    for (const [key, item] of [...this.#items]) {
      if (this.#closed) return false;
      if (!this.#o.ready()) return false; // not a failure: look again soon, without backing off
      if (this.#items.get(key) !== item) continue; // superseded meanwhile
      if (!(await this.#o.attempt(key, item))) return true;
      if (this.#items.get(key) === item) this.#items.delete(key);
    }
    return false;
  }
}

interface Deadline {
  at: number;
  reject: (error: unknown) => void;
}

/**
 * Timeouts for many concurrent calls at the cost of one timer: each call gets a deadline in a
 * set ordered by start time (so the oldest is first), and one timer, armed for the oldest
 * deadline, rejects whatever is overdue. No `setTimeout` per call on the hot path.
 */
export class Deadlines {
  readonly #pending = new Set<Deadline>();
  readonly #clock: TimerClock;
  readonly #ms: number;
  readonly #onTimeout: () => Error;
  #timer: unknown;

  constructor(clock: TimerClock, ms: number, onTimeout: () => Error) {
    this.#clock = clock;
    this.#ms = ms;
    this.#onTimeout = onTimeout;
  }

  /** `promise`, or a rejection with `onTimeout()` once `ms` have passed. `ms <= 0` waits forever. */
  wrap<T>(promise: Promise<T>): Promise<T> {
    if (!(this.#ms > 0)) return promise;
    return new Promise<T>((resolve, reject) => {
      const d: Deadline = { at: this.#clock.now() + this.#ms, reject };
      this.#pending.add(d);
      if (this.#timer === undefined) this.#arm(this.#ms);
      else if (this.#pending.size === 1) this.#clock.keepAlive(this.#timer, true);
      promise.then(
        (value) => {
          this.#done(d);
          resolve(value);
        },
        (error: unknown) => {
          this.#done(d);
          reject(error);
        },
      );
    });
  }

  /** Stops the timer (nothing may be waiting any more). */
  close(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * The timer stays armed when the last call ends (re-arming it for every call would cost a timer
   * per call), but it no longer keeps the process alive: nobody waits for it.
   */
  #done(d: Deadline): void {
    this.#pending.delete(d);
    if (this.#pending.size === 0 && this.#timer !== undefined) this.#clock.keepAlive(this.#timer, false);
  }

  #arm(ms: number): void {
    this.#timer = this.#clock.setTimeout(() => this.#sweep(), Math.max(0, ms), this.#pending.size === 0);
  }

  #sweep(): void {
    this.#timer = undefined;
    const now = this.#clock.now();
    for (const d of this.#pending) {
      if (d.at > now) {
        this.#arm(d.at - now);
        return;
      }
      this.#pending.delete(d);
      d.reject(this.#onTimeout());
    }
  }
}

/**
 * `promise`, or a rejection with `onTimeout()` once `ms` have passed on `clock` (a promise that
 * settles later is ignored, its rejection included). `ms <= 0` waits forever. `background`: the
 * timer does not keep the process alive (nobody waits for the outcome).
 */
export function withTimeout<T>(clock: TimerClock, promise: Promise<T>, ms: number, onTimeout: () => Error, background = false): Promise<T> {
  if (!(ms > 0)) return promise;
  let timer: unknown;
  const timeout = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(() => reject(onTimeout()), ms, background);
  });
  return Promise.race([promise, timeout]).finally(() => clock.clearTimeout(timer));
}
