/**
 * Time source of the engine. Every TTL, stale window, cooldown and timeout reads `now()` and
 * schedules through `setTimeout`, so a test can drive all of them with a `FakeClock` and no sleeps.
 */
export interface Clock {
  /** Wall-clock milliseconds (entries written to L2 carry this time, so instances must agree). */
  now(): number;
  /** Optional: when absent, the global timers are used. */
  setTimeout?(callback: () => void, ms: number): unknown;
  clearTimeout?(handle: unknown): void;
}

/** A clock with timers: what the engine uses internally. */
export interface TimerClock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

function globalSetTimeout(callback: () => void, ms: number): unknown {
  const t = setTimeout(callback, ms);
  // A pending loader timeout must not keep a process alive on its own.
  t.unref?.();
  return t;
}

function globalClearTimeout(handle: unknown): void {
  clearTimeout(handle as ReturnType<typeof setTimeout>);
}

/** `Date.now` is read at call time so that test tools that replace it (vi.useFakeTimers) work. */
export const systemClock: TimerClock = {
  now: () => Date.now(),
  setTimeout: globalSetTimeout,
  clearTimeout: globalClearTimeout,
};

export function toTimerClock(clock: Clock | undefined): TimerClock {
  if (clock === undefined) return systemClock;
  const set = clock.setTimeout;
  const clear = clock.clearTimeout;
  return {
    now: () => clock.now(),
    setTimeout: set ? (cb, ms) => set.call(clock, cb, ms) : globalSetTimeout,
    clearTimeout: clear ? (h) => clear.call(clock, h) : globalClearTimeout,
  };
}

interface FakeTimer {
  at: number;
  seq: number;
  callback: () => void;
}

/**
 * A manual clock for tests: time moves only when `advance()` is called, and timers scheduled
 * through it fire in order as time passes them.
 */
export class FakeClock implements TimerClock {
  #now: number;
  #seq = 0;
  #timers = new Map<number, FakeTimer>();

  constructor(start: number = Date.now()) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), seq: id, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  /** Number of timers still scheduled. */
  get pendingTimers(): number {
    return this.#timers.size;
  }

  /** Move time forward by `ms`, firing every timer that falls due, earliest first. */
  advance(ms: number): void {
    const target = this.#target(ms);
    for (let t = this.#fireNext(target); t; t = this.#fireNext(target));
    this.#now = target;
  }

  /** Like `advance`, but lets pending promise callbacks run before and after each timer fires. */
  async advanceAsync(ms: number): Promise<void> {
    const target = this.#target(ms);
    await flush();
    while (this.#fireNext(target)) await flush();
    this.#now = target;
    await flush();
  }

  #target(ms: number): number {
    if (!(ms >= 0)) throw new TypeError("FakeClock.advance: ms must be a non-negative number");
    return this.#now + ms;
  }

  /** Fire the earliest timer due at or before `target`; false when there is none. */
  #fireNext(target: number): boolean {
    let next: FakeTimer | undefined;
    for (const t of this.#timers.values()) {
      if (t.at <= target && (next === undefined || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
    }
    if (next === undefined) return false;
    this.#timers.delete(next.seq);
    this.#now = Math.max(this.#now, next.at);
    next.callback();
    return true;
  }
}

function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
