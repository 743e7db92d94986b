import type { LoaderContext } from "./flight.js";

/** What `loadMany` receives besides the keys. */
export interface LoadManyContext {
  /** Aborted once every key of the call was given up (each key's `hardTimeout`), or the cache closed. */
  signal: AbortSignal;
  /**
   * The signal of one key of the call: aborted once that key was given up (its `hardTimeout`, which
   * counts from when the key needed the loader), or the cache closed. A key given up is loaded
   * again by the next caller that needs it, while this call may still run: a `loadMany` that can
   * stop work per key stops it here. `signal` for a key not in the call.
   */
  signalOf(key: string): AbortSignal;
}

/** Loads several keys at once: a `Map` by key, or an array in the order of `keys`. A key left out (or `undefined`) is returned as `undefined` and not cached. */
export type LoadMany<V> = (keys: string[], context: LoadManyContext) => Promise<ReadonlyMap<string, V> | readonly V[]> | ReadonlyMap<string, V> | readonly V[];

/** A key of `Engine.readMany` that is answered later: the promise of its `getOrSet` way (a flight, joined or started). */
export class Later {
  readonly promise: Promise<unknown>;
  constructor(promise: Promise<unknown>) {
    this.promise = promise;
  }
}

/** `Engine.readMany`'s answers as plain values, once every key has one; rejects with the first error (as `Promise.all`). */
export function settleAll(results: unknown[]): unknown[] | Promise<unknown[]> {
  let later = false;
  for (const r of results) {
    if (r instanceof Later) {
      later = true;
      break;
    }
  }
  return later ? Promise.all(results.map((r) => (r instanceof Later ? r.promise : r))) : results;
}

interface Waiting {
  key: string;
  /** The key's place in the getOrSetMany call: `loadMany` gets its keys in the caller's order. */
  order: number;
  resolve(value: unknown): void;
  reject(error: unknown): void;
  /** The key's flight's signal (`LoaderContext.signal`): aborted when the key is given up. */
  signal: AbortSignal;
}

/**
 * One `getOrSetMany` call's loads: every key of the call that needs the loader goes to ONE
 * `loadMany` call. The engine runs one flight per key (single flight, L2 read, timeouts,
 * fail-safe and fences stay per key); a flight this call started either calls its loader — which
 * joins the batch — or ends without it (an L2 hit, an invalidation, a full refresh pool). Once
 * every flight of the call has done one or the other, the batch calls `loadMany` with the keys
 * gathered; a key whose loader is called after that (a refresh started later) gets a call of its own.
 */
export class LoadBatch<V> {
  readonly #loadMany: LoadMany<V>;
  /** Flights of this call that have neither called their loader nor ended. */
  #pending = 0;
  /** Keys whose flight is counted in `#pending`, and keys whose flight has loaded or ended. */
  readonly #counted = new Set<string>();
  readonly #settled = new Set<string>();
  #waiting: Waiting[] = [];
  /** Every flight of the call has been started and counted. */
  #started = false;

  constructor(loadMany: LoadMany<V>) {
    this.#loadMany = loadMany;
  }

  /**
   * The loader of one key's flight (`order`: the key's place in the call): it joins the batch.
   * Flights call their loaders in whatever order their L2 reads and leases end; `loadMany` still
   * gets its keys in the caller's order.
   */
  loaderFor(key: string, order: number): (context: LoaderContext<V>) => Promise<V> {
    return (context) =>
      new Promise<V>((resolve, reject) => {
        this.#waiting.push({ key, order, resolve: resolve as (v: unknown) => void, reject, signal: context.signal });
        this.#settle(key);
      });
  }

  /** The flight of `key` was started by this call: the batch waits until it loads or ends (the returned function). */
  expect(key: string): () => void {
    if (!this.#settled.has(key) && !this.#counted.has(key)) {
      this.#counted.add(key);
      this.#pending++;
    }
    return () => this.#settle(key);
  }

  /** Every flight of the call has been started: from now on the batch may run. */
  begin(): void {
    this.#started = true;
    this.#flushIfReady();
  }

  #settle(key: string): void {
    if (!this.#settled.has(key)) {
      this.#settled.add(key);
      if (this.#counted.has(key)) this.#pending--;
    }
    this.#flushIfReady();
  }

  #flushIfReady(): void {
    if (!this.#started || this.#pending > 0 || this.#waiting.length === 0) return;
    // A key given up while it waited for the others (its hardTimeout) is not loaded: nobody waits
    // for it, and the next caller that needs it has started a load of its own.
    const waiting: Waiting[] = [];
    for (const w of this.#waiting) {
      if (w.signal.aborted) w.reject(w.signal.reason);
      else waiting.push(w);
    }
    this.#waiting = [];
    if (waiting.length > 0) void this.#run(waiting.sort((x, y) => x.order - y.order));
  }

  /** Calls `loadMany` for `waiting` (none of them given up yet: `#flushIfReady` left those out). */
  async #run(waiting: Waiting[]): Promise<void> {
    const keys = waiting.map((w) => w.key);
    const controller = new AbortController();
    const signals = new Map<string, AbortSignal>();
    let aborted = 0;
    for (const w of waiting) {
      const s = w.signal;
      signals.set(w.key, s);
      s.addEventListener("abort", () => {
        if (++aborted === waiting.length) controller.abort(s.reason);
      }, { once: true });
    }
    let result: ReadonlyMap<string, V> | readonly V[];
    try {
      result = await this.#loadMany(keys, { signal: controller.signal, signalOf: (key) => signals.get(key) ?? controller.signal });
    } catch (error) {
      for (const w of waiting) w.reject(error);
      return;
    }
    if (result instanceof Map) {
      for (const w of waiting) w.resolve(result.get(w.key));
      return;
    }
    if (Array.isArray(result) && result.length === keys.length) {
      for (let i = 0; i < waiting.length; i++) waiting[i]!.resolve(result[i]);
      return;
    }
    const error = new TypeError(
      `layercache: loadMany must return a Map or an array of ${keys.length} values in key order (got ${Array.isArray(result) ? `an array of ${result.length}` : typeof result})`,
    );
    for (const w of waiting) w.reject(error);
  }
}
