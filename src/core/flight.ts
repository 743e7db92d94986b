import { checkOptionNames, derivePolicy, type CallOptions, type Policy } from "../api/options.js";
import type { Namespace } from "./namespace.js";

/** What a loader receives. */
export interface LoaderContext<V = unknown> {
  /** Aborted when `hardTimeout` passes or the cache closes. */
  signal: AbortSignal;
  /** The value this load is replacing, if one is still around (past its ttl), else undefined. */
  stale: V | undefined;
  /** The key being loaded (as given, without scope or prefix). */
  key: string;
  /**
   * Adapts the options the loaded value is written with — `ttl`, the windows, `jitter`, `tags` —
   * to the value (e.g. from an HTTP `Cache-Control` header). Field by field over the call's
   * options; called again, it adds to what it set before. A bad option throws a `TypeError` here.
   */
  setOptions(options: CallOptions): void;
  /** The loaded value is returned to the callers but not cached (neither L1 nor L2; peers are not told). */
  noCache(): void;
}

export type Loader<V> = (context: LoaderContext<V>) => V | Promise<V>;

const noop = (): void => {};

/**
 * An operation in flight for one key (a load, or a `get`'s L2 read) that invalidations fence:
 * it may still answer the callers waiting for it, but not write anything they would not allow.
 */
export class Fenced {
  /** Invalidated outright: nothing it read or computed may be written anywhere. */
  invalidated = false;
  /** Fenced by a peer's `set`: only that very write (this L2 generation) may still be taken from L2. */
  unlessGen: string | undefined = undefined;
  /** Callers waiting for its answer. */
  callers = 0;
  /** The engine's tag sequence number when it started: a later `removeByTag` fences the tags it names. */
  tagSeq = 0;

  /** Records an invalidation of the key; `gen` when it came with the write that replaced the value. */
  fence(gen?: string): void {
    if (gen === undefined || (this.unlessGen !== undefined && this.unlessGen !== gen)) this.invalidated = true;
    else this.unlessGen = gen;
  }

  /** Whether the L2 record of generation `gen` may still be used (served as held, or put in L1). */
  accepts(gen: string): boolean {
    return !this.invalidated && (this.unlessGen === undefined || this.unlessGen === gen);
  }

  /** No invalidation at all: a value of its own (a loader's result) may be written. */
  get clean(): boolean {
    return !this.invalidated && this.unlessGen === undefined;
  }
}

/**
 * A `getOrSetMany`'s one multi-key L2 read of the keys that missed L1 with nobody loading them.
 * It holds no object per key: while bulk reads run in a scope, an invalidation of a key there is
 * recorded in the scope's `keyFences` (key → fence sequence number), and each key's answer is
 * checked against it (`fenced`) before anything is taken from the read.
 */
export class BulkRead {
  /** Fenced as a whole: a clear of its scope, or a `removeByTag` that would have fenced its loads. */
  all = false;
  /** The engine's tag sequence number when it started (see `Fenced.tagSeq`). */
  readonly tagSeq: number;
  /** The scope's fence sequence number when it started: later invalidations of a key fence that key. */
  readonly since: number;
  /** The tags its call declares (the loads it stands for would carry them). */
  readonly tags: readonly string[] | undefined;
  /** When it started (the loads it hands its read to count their start from it). */
  readonly started: number;

  constructor(tagSeq: number, since: number, tags: readonly string[] | undefined, started: number) {
    this.tagSeq = tagSeq;
    this.since = since;
    this.tags = tags;
    this.started = started;
  }

  /** Whether `key` was invalidated since the read started: nothing it read for the key may be used. */
  fenced(ns: Namespace, key: string): boolean {
    if (this.all) return true;
    const seq = ns.keyFences?.get(key);
    return seq !== undefined && seq > this.since;
  }
}

/** A `get`'s L2 read, shared by the gets of one key that miss L1 at the same time. */
export class Peek extends Fenced {
  promise!: Promise<unknown>;
}

/**
 * One load (or background refresh) of one full key. Callers that miss while it runs join it; an
 * invalidation of the key fences it and detaches it, so its result is returned to those who waited
 * for it but never written to L1 or L2, and later callers start afresh.
 */
export class Flight extends Fenced {
  readonly ns: Namespace;
  readonly key: string;
  readonly policy: Policy;
  readonly started: number;
  /** The user's loader (getOrSet) or function (cached); `args` set means call it with them. */
  readonly fn: Function;
  readonly self: unknown;
  readonly args: unknown[] | undefined;
  /**
   * The state of a flight, in three small parts, each changed in one direction only:
   * - `kind`: a `load` somebody waits for, or a `refresh` holding a place in the refresh pool (a
   *   load that answered early from L2's stale value goes on as a refresh);
   * - `phase`: `reading` L2 → `loading` (the loader runs) → `done` (detached: nothing more is
   *   written; the engine's `#done` is the one place that sets it, and frees the pool place);
   * - `answer`: `none` → `early` (a held value was given: `earlyReason`, valid until `staleUntil`;
   *   the load goes on) → `final`.
   */
  kind: "load" | "refresh" = "load";
  phase: "reading" | "loading" | "done" = "reading";
  answer: "none" | "early" | "final" = "none";
  /** Why the flight answered early: a value in its background stale window, or a soft timeout. */
  earlyReason: "background" | "softTimeout" | undefined = undefined;
  /**
   * Until when that early answer may still be given to callers who join (the end of the window
   * that allowed it); later joiners wait for the load itself (`joinLate`).
   */
  staleUntil = -Infinity;
  /** Callers waiting for the load after the early answer (see `joinLate`). */
  lateCallers = 0;
  /** Somebody awaits this flight: its timers keep the process alive. */
  waited = false;
  /** The loader's hard- and soft-timeout timers, while they are armed. */
  hardTimer: unknown = undefined;
  softTimer: unknown = undefined;
  /** The L2 generation seen when this load read L2 ("" = no record); undefined = not known. */
  gen: string | undefined = undefined;
  controller: AbortController | undefined;
  /** The current generation of the declared tags (and the scope's tag epoch, as tag ""), read with the key. */
  tagGens: Map<string, string> | undefined = undefined;
  /** Options the loader set for its value (`setOptions`): the policy the value is written with. */
  written: Policy | undefined = undefined;
  /** The generation of the distributed lease this flight holds (distributed single flight). */
  lease: string | undefined = undefined;
  /** The loader called `noCache()`. */
  uncached = false;
  /** Called once when the flight is done (a `getOrSetMany` batch stops waiting for it). */
  onDone: (() => void) | undefined = undefined;
  readonly promise: Promise<unknown>;
  #abortReason: unknown = undefined;
  #resolve!: (value: unknown) => void;
  #reject!: (error: unknown) => void;
  /** The load's own outcome, for callers who joined after the early answer's window closed. */
  #late: { promise: Promise<unknown>; resolve: (value: unknown) => void; reject: (error: unknown) => void } | undefined;

  constructor(ns: Namespace, key: string, policy: Policy, started: number, fn: Function, self: unknown, args: unknown[] | undefined) {
    super();
    this.ns = ns;
    this.key = key;
    this.policy = policy;
    this.started = started;
    this.fn = fn;
    this.self = self;
    this.args = args;
    this.promise = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A background refresh may fail with nobody waiting: that must not be an unhandled rejection.
    this.promise.catch(noop);
  }

  /** Calls the loader; a synchronous throw becomes a rejection. */
  invoke(stale: unknown): Promise<unknown> {
    try {
      if (this.args !== undefined) return Promise.resolve(this.fn.apply(this.self, this.args));
      // The AbortController is made only if the loader looks at `signal` (most never do).
      const flight = this;
      const context: LoaderContext = {
        get signal() {
          const controller = (flight.controller ??= new AbortController());
          if (flight.#abortReason !== undefined && !controller.signal.aborted) controller.abort(flight.#abortReason);
          return controller.signal;
        },
        stale,
        key: this.key,
        setOptions(options: CallOptions) {
          flight.written = derivePolicy(flight.written ?? flight.policy, checkOptionNames(options, "call"));
        },
        noCache() {
          flight.uncached = true;
        },
      };
      return Promise.resolve(this.fn(context));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Aborts the loader's signal (now, or when the loader first looks at it). */
  abort(reason: unknown): void {
    this.#abortReason = reason;
    this.controller?.abort(reason);
  }

  /**
   * For a caller arriving after the flight answered early and that answer's window closed: a
   * promise of the load's own outcome (its value, a fail-safe value, or its error).
   */
  joinLate(): Promise<unknown> {
    this.lateCallers++;
    if (this.#late === undefined) {
      let resolve!: (value: unknown) => void;
      let reject!: (error: unknown) => void;
      const promise = new Promise<unknown>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#late = { promise, resolve, reject };
    }
    return this.#late.promise;
  }

  /** Somebody still waits for this load's own outcome: its callers, or after an early answer those who joined late. */
  get awaited(): boolean {
    return this.answer === "none" ? this.callers > 0 : this.answer === "early" && this.lateCallers > 0;
  }

  /** Answered (early or finally): callers who join from now on are not answered by the first answer only. */
  get settled(): boolean {
    return this.answer !== "none";
  }

  /** Answers everybody waiting with a held value (valid until `until`); the load goes on. */
  answerEarly(value: unknown, reason: "background" | "softTimeout", until: number): void {
    if (this.answer !== "none") return;
    this.answer = "early";
    this.earlyReason = reason;
    this.staleUntil = until;
    this.#resolve(value);
  }

  /** The final answer: everybody waiting, or after an early answer the late joiners. */
  settle(value: unknown): void {
    if (this.answer === "final") return;
    if (this.answer === "none") this.#resolve(value);
    else this.#late?.resolve(value);
    this.answer = "final";
  }

  fail(error: unknown): void {
    if (this.answer === "final") return;
    if (this.answer === "none") this.#reject(error);
    else this.#late?.reject(error);
    this.answer = "final";
  }
}
