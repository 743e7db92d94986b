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
  /**
   * Calls `callback` once `ms` have passed; any length works (see MAX_TIMER_MS). A timer keeps the
   * process alive, since somebody waits for it — unless `background` says nobody does (retries,
   * reconnects, heartbeats, a refresh nobody waits for).
   */
  setTimeout(callback: () => void, ms: number, background?: boolean): unknown;
  clearTimeout(handle: unknown): void;
  /** Whether the timer keeps the process alive from now on (a caller started or stopped waiting for it). */
  keepAlive(handle: unknown, on?: boolean): void;
}

/** Node runs a timer of more than 2³¹−1 ms after 1 ms; longer delays are chained from steps of this. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

type SetFn = (callback: () => void, ms: number) => unknown;
type ClearFn = (handle: unknown) => void;

/** One timer, possibly made of several steps; `inner` is the step scheduled now. */
class Timer {
  inner: unknown;
  background: boolean;
  constructor(background: boolean) {
    this.background = background;
  }
}

/** ref()/unref() of a Node timer handle; nothing for handles without them (a FakeClock's numbers). */
function setRef(handle: unknown, ref: boolean): void {
  const h = handle as { ref?: () => void; unref?: () => void } | null | undefined;
  if (h === null || typeof h !== "object") return;
  if (ref) h.ref?.();
  else h.unref?.();
}

/** Timers of any length, with keep-alive control, over a clock's own set/clear. */
function timersOver(set: SetFn, clear: ClearFn): Pick<TimerClock, "setTimeout" | "clearTimeout" | "keepAlive"> {
  const arm = (t: Timer, callback: () => void, remaining: number): void => {
    const step = Math.min(remaining, MAX_TIMER_MS);
    t.inner = set(() => (remaining > step ? arm(t, callback, remaining - step) : callback()), step);
    if (t.background) setRef(t.inner, false);
  };
  return {
    setTimeout(callback, ms, background = false) {
      const t = new Timer(background);
      arm(t, callback, ms > 0 ? ms : 0);
      return t;
    },
    clearTimeout(handle) {
      if (handle instanceof Timer) clear(handle.inner);
    },
    keepAlive(handle, on = true) {
      if (handle instanceof Timer && handle.background === on) {
        handle.background = !on;
        setRef(handle.inner, on);
      }
    },
  };
}

const globalSet: SetFn = (callback, ms) => setTimeout(callback, ms);
const globalClear: ClearFn = (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>);

/** `Date.now` is read at call time so that test tools that replace it (vi.useFakeTimers) work. */
export const systemClock: TimerClock = {
  now: () => Date.now(),
  ...timersOver(globalSet, globalClear),
};

export function toTimerClock(clock: Clock | undefined): TimerClock {
  if (clock === undefined) return systemClock;
  // Already one of ours (systemClock, FakeClock): wrapping it again would hide its handles' ref/unref.
  if (typeof (clock as Partial<TimerClock>).keepAlive === "function") return clock as TimerClock;
  const set = clock.setTimeout;
  const clear = clock.clearTimeout;
  return {
    now: () => clock.now(),
    ...(set ? timersOver((cb, ms) => set.call(clock, cb, ms), (h) => clear?.call(clock, h)) : timersOver(globalSet, globalClear)),
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

  /** No process to keep alive: fake timers fire only through `advance`. */
  keepAlive(): void {}

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
