import { createHash } from "node:crypto";
import type { TimerClock } from "../shared/clock.js";
import { isRecordError, LayerCacheError, SerializationError, type RecordError } from "../shared/errors.js";
import type { Reporter } from "../telemetry/reporter.js";
import type { EntryTimes } from "../l1/partition.js";
import { cutToBytes, declaredLimit, overBytes } from "../shared/limits.js";
import { Breaker, Deadlines, RetryQueue, withTimeout, type BreakerState } from "../shared/resilience.js";
import { L2_LIMIT_MINIMUMS, RESILIENCE_DEFAULTS, type L2Store } from "./contract.js";
import { MAX_GENERATION_BYTES, RECORD_HEADER_BYTES, decodeRecord, encodeRecord, encodeTombstone, type RecordTimes } from "./envelope.js";
import type { Serializer } from "./serializer.js";

/**
 * How long L2 remembers a key's generation: every record (a value, or the tombstone of a remove)
 * stays at least this long, even past its windows. A load that ran longer never writes back to L2,
 * because the generation it saw may have been forgotten.
 */
export const GENERATION_MEMORY_MS = 60_000;

const noop = (): void => {};

/** How long (in store timeouts) a write waits for the previous write of its key before it is sent anyway. */
const ORDER_WAIT_TIMEOUTS = 2;

/** Most keys read by one `getMany`. */
const MAX_READ_BATCH = 256;

/** What a read of one key gives: the stored text, nothing, a `RecordError` of that record, or FAILED (L2 unreachable). */
type Fetched = string | null | undefined | RecordError | typeof FAILED;

interface ReadBatch {
  keys: string[];
  waiters: ((value: Fetched) => void)[];
}

/** Most failed L2 writes kept for retry (one per key); beyond it the oldest is dropped and reported. */
const MAX_PENDING_WRITES = 10_000;

/** The L2 state of one key as a load sees it. */
export interface RemoteRead {
  /** Generation of the stored record ("" when there is none). */
  gen: string;
  /** The live value, when the record holds one. */
  entry?: RemoteEntry;
}

export interface RemoteEntry {
  value: unknown;
  times: EntryTimes;
  /** Length of the serialized payload. */
  bytes: number;
}

/** A value ready to be stored. */
export interface Encoded {
  payload: string;
  bytes: number;
  tooLarge: boolean;
}

export type PutResult = "written" | "conflict" | "failed";

export interface RemoteScope {
  readonly path: readonly string[];
  readonly label: string;
  l2Prefix: string | undefined;
}

/**
 * A key whose L2 record must be replaced by a tombstone because a `set` or `remove` of it could
 * not reach L2. Retrying the set itself could overwrite a newer write that landed meanwhile (from
 * another instance, or from a client library's offline queue); removing is always safe: the worst
 * outcome is a miss and a load from the source of truth.
 */
interface PendingTombstone {
  ns: RemoteScope;
  key: string;
  gen: string;
}

/** The L2 call took longer than the store's `timeoutMs`. */
export class L2TimeoutError extends LayerCacheError {
  constructor(operation: string, ms: number) {
    super("ELAYERCACHE_L2_TIMEOUT", `layercache: L2 ${operation} took longer than ${ms} ms`);
  }
}

const FAILED = Symbol("failed");
/** A write the store refused for that record alone (a `RecordError`, already reported): not a backend failure. */
const REJECTED = Symbol("rejected");

/** Lets a `RecordError` through as a result (the store answered, about one record); any other rejection stays one. */
function keepRecordError(error: unknown): RecordError {
  if (isRecordError(error)) return error;
  throw error;
}

/**
 * Escapes the separators of the L2 key layout in a prefix or scope name, so that no two
 * (prefix, scope, key) triples map to the same L2 key. After escaping, "%" is always followed by
 * "25", "3A" or "2F": the marker "%#" of hashed keys (`hashedKey`) never appears in a prefix or scope.
 */
function escapePart(part: string): string {
  return part.replace(/[%:/]/g, (c) => (c === "%" ? "%25" : c === ":" ? "%3A" : "%2F"));
}

/** "%#", 43 characters of base64url SHA-256, ":". */
const HASH_FORM_BYTES = 46;

/**
 * The form of an L2 key longer than the store's `maxKeyBytes`:
 *
 *   <prefix>:<scope/path>%#<sha256 of the whole key, base64url>:<head of the key>
 *
 * with `<prefix>:<scope/path>` and then the key cut (between code points) so that the whole fits
 * in `max` bytes. The hash makes two long keys differ however long a start they share; the marker
 * makes a hashed key differ from every unhashed one: in an unhashed key nothing before the second
 * ":" (the escaped prefix and scope) contains "%#", in a hashed one the marker always comes before
 * it. Deterministic: every instance whose store declares the same limit maps a key the same way.
 */
function hashedKey(full: string, scopeHead: string, max: number): string {
  const hash = createHash("sha256").update(full).digest("base64url");
  const room = max - HASH_FORM_BYTES;
  const head = cutToBytes(scopeHead.slice(0, -1), room); // without the ":" that ends it
  const key = cutToBytes(full.slice(scopeHead.length), room - Buffer.byteLength(head));
  return `${head}%#${hash}:${key}`;
}

/**
 * The facade every L2 access goes through: key layout, envelope, serializer, size limits (the
 * store's `limits` and `maxValueBytes`, kept before the store is called, never a failure), and
 * resilience — a timeout on every call, a circuit breaker, and background retry of writes that
 * failed (newest per key wins). The engine above it never sees a store error, only "unavailable".
 */
export class RemoteLayer {
  readonly store: L2Store;
  readonly #serializer: Serializer;
  readonly #prefix: string;
  /** The store's `limits.maxKeyBytes` and `limits.maxRecordBytes` (`Infinity`: none). */
  readonly #maxKeyBytes: number;
  readonly #maxRecordBytes: number;
  /** Largest payload written to L2: `maxValueBytes`, and the store's record limit less the record header. */
  readonly maxPayloadBytes: number;
  readonly #report: Reporter;
  readonly #clock: TimerClock;
  readonly #newGen: () => string;
  readonly #timeoutMs: number;
  readonly #deadlines: Deadlines;
  readonly #breaker: Breaker | undefined;
  readonly #pending: RetryQueue<PendingTombstone>;
  readonly #onRetried: (ns: RemoteScope, key: string) => void;
  #batch: ReadBatch | undefined;
  /**
   * The last store write of each key still under way (settled: it never rejects). A store on a pool
   * of connections keeps no order between calls: the next write of the key is sent once this one
   * has settled, and a read of the key waits for it (at most the timeout), so that this instance's
   * writes land in call order and a read never overtakes them — whatever the store.
   */
  readonly #writing = new Map<string, Promise<void>>();

  constructor(
    store: L2Store,
    o: {
      serializer: Serializer;
      prefix: string;
      maxValueBytes: number;
      report: Reporter;
      clock: TimerClock;
      newGen: () => string;
      /** A queued tombstone reached L2: peers should drop what they read meanwhile. */
      onRetried: (ns: RemoteScope, key: string) => void;
    },
  ) {
    this.store = store;
    this.#serializer = o.serializer;
    this.#prefix = escapePart(o.prefix);
    this.#maxKeyBytes = declaredLimit("l2", store.limits, "maxKeyBytes", L2_LIMIT_MINIMUMS.maxKeyBytes);
    this.#maxRecordBytes = declaredLimit("l2", store.limits, "maxRecordBytes", L2_LIMIT_MINIMUMS.maxRecordBytes);
    this.maxPayloadBytes = Math.min(o.maxValueBytes, this.#maxRecordBytes - RECORD_HEADER_BYTES);
    this.#report = o.report;
    this.#clock = o.clock;
    this.#newGen = o.newGen;
    this.#onRetried = o.onRetried;
    const r = { ...RESILIENCE_DEFAULTS, ...store.resilience };
    this.#timeoutMs = r.timeoutMs;
    this.#deadlines = new Deadlines(o.clock, r.timeoutMs, () => new L2TimeoutError("call", r.timeoutMs));
    this.#breaker = r.breakerThreshold > 0 ? new Breaker(r.breakerThreshold, r.breakerCooldownMs, o.clock, (s) => this.#breakerChanged(s)) : undefined;
    this.#pending = new RetryQueue<PendingTombstone>(o.clock, {
      max: MAX_PENDING_WRITES,
      ready: () => this.#breaker?.ready() ?? true,
      attempt: (full, t) => this.#retry(full, t),
      onDrop: (key, t) => {
        this.#report.note("l2WritesDropped", "warn", { key, scope: t.ns.label }, "layercache: too many L2 removals waiting for retry; dropped the oldest");
      },
    });
  }

  /** An L2 call taking longer counts as failed. */
  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /** Failed writes waiting for retry. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * `<prefix>:<scope/path>:<key>` with prefix and scope names escaped; the key is kept as is. Past
   * the store's `maxKeyBytes`, its hashed form (`hashedKey`). Measured only when its length in
   * characters leaves a doubt, hashed only when it is over.
   */
  keyOf(ns: RemoteScope, key: string): string {
    const p = (ns.l2Prefix ??= `${this.#prefix}:${ns.path.map(escapePart).join("/")}:`);
    const full = p + key;
    return overBytes(full, this.#maxKeyBytes) ? hashedKey(full, p, this.#maxKeyBytes) : full;
  }

  async connect(): Promise<void> {
    if (this.store.connect === undefined) return;
    await this.#call("connect", undefined, undefined, () => this.store.connect!());
  }

  /** The key's record; undefined when L2 could not be reached. Corrupt records become misses. */
  read(ns: RemoteScope, key: string): Promise<RemoteRead | undefined> {
    const full = this.keyOf(ns, key);
    // A removal of this key that has not reached L2 yet: the record there may be the value this
    // instance invalidated, so a value read now counts as a miss (whose write-back, fenced on
    // that record's generation, stores a newer value; the removal still lands after it).
    const removedHere = this.#pending.size > 0 && this.#pending.get(full) !== undefined;
    // (Not while the breaker refuses calls: the read is answered at once then, like any other.)
    const writing = this.#writing.size > 0 && (this.#breaker?.ready() ?? true) ? this.#writing.get(full) : undefined;
    if (writing === undefined) return this.#fetch(full).then((text) => this.#decode(ns, key, text, removedHere));
    // A write of this key is under way: read what it leaves (or count L2 as unreachable for this read once the timeout is over).
    return this.#deadlines.wrap(writing).then(
      () => this.read(ns, key),
      () => undefined,
    );
  }

  #decode(ns: RemoteScope, key: string, text: Fetched, removedHere: boolean): RemoteRead | undefined | Promise<RemoteRead | undefined> {
    if (text === FAILED) return undefined;
    if (text === null || text === undefined) return { gen: "" };
    try {
      const rec = decodeRecord(text);
      if (rec.times === undefined || removedHere) return { gen: rec.gen };
      const value = this.#serializer.deserialize(rec.payload!);
      return { gen: rec.gen, entry: { value, times: timesOf(rec.times), bytes: rec.payload!.length } };
    } catch (error) {
      // A RecordError (not text, so decoding threw) is the store's own report of this record.
      return this.#corrupt(ns, key, isRecordError(text) ? text : error);
    }
  }

  /**
   * Reads one key. With a store that has `getMany`, the reads of one tick share a single call (one
   * round trip, one timeout, one breaker check); otherwise each is its own `get`. A `RecordError`
   * is a result, not a failure of the call: the store answered, about that record alone.
   */
  #fetch(full: string): Promise<Fetched> {
    if (this.store.getMany === undefined) return this.#call("get", undefined, full, () => this.store.get(full).catch(keepRecordError), "read");
    let batch = this.#batch;
    if (batch === undefined || batch.keys.length >= MAX_READ_BATCH) {
      const b: ReadBatch = (batch = this.#batch = { keys: [], waiters: [] });
      process.nextTick(() => this.#flushReads(b));
    }
    batch.keys.push(full);
    return new Promise((resolve) => batch.waiters.push(resolve));
  }

  #flushReads(batch: ReadBatch): void {
    if (this.#batch === batch) this.#batch = undefined;
    const { keys, waiters } = batch;
    const run = (): Promise<(string | null | undefined | RecordError)[]> =>
      keys.length === 1
        ? this.store.get(keys[0]!).then(
            (v) => [v],
            (error: unknown) => [keepRecordError(error)],
          )
        : this.store.getMany!(keys).catch((error: unknown) => {
            keepRecordError(error); // any other error fails the whole call
            // A store that cannot tell which record of the batch it could not read: ask key by key.
            return this.#readEach(keys);
          });
    void this.#call("get", undefined, keys.length === 1 ? keys[0] : `${keys.length} keys`, run, "read").then((values) => {
      for (let i = 0; i < waiters.length; i++) waiters[i]!(values === FAILED ? FAILED : values[i]);
    });
  }

  /** Runs a store write of `full` once the previous one of that key has settled (see `#writing`). */
  #inOrder(full: string, run: () => Promise<boolean>): Promise<boolean> {
    const before = this.#writing.get(full);
    // Waits at most ORDER_WAIT_TIMEOUTS store timeouts: a store call that never settles (a store that
    // hangs for good) must not hold back the key's later writes — the retry that would close the
    // breaker among them — for ever. (Without a timeout, it waits.)
    const call = before === undefined ? run() : withTimeout(this.#clock, before, ORDER_WAIT_TIMEOUTS * this.#timeoutMs, () => new Error("layercache: previous write still under way"), true).catch(noop).then(run);
    const settled = call.then(noop, noop);
    this.#writing.set(full, settled);
    void settled.then(() => {
      if (this.#writing.get(full) === settled) this.#writing.delete(full);
    });
    return call;
  }

  #readEach(keys: string[]): Promise<(string | null | undefined | RecordError)[]> {
    return Promise.all(keys.map((k) => this.store.get(k).catch(keepRecordError)));
  }

  /**
   * Serializes a value; throws `SerializationError` when the serializer cannot. `tooLarge` when the
   * payload is over `maxPayloadBytes` (in UTF-8, measured only when its length leaves a doubt): the
   * value is then kept out of L2 by the caller.
   */
  encode(key: string, value: unknown): Encoded {
    let payload: string;
    try {
      payload = this.#serializer.serialize(value);
      if (typeof payload !== "string") throw new TypeError(`serializer returned ${typeof payload}, not a string`);
    } catch (error) {
      throw new SerializationError(key, error);
    }
    const bytes = payload.length <= this.maxPayloadBytes / 3 ? payload.length : Buffer.byteLength(payload);
    return { payload, bytes, tooLarge: bytes > this.maxPayloadBytes };
  }

  /**
   * Stores an encoded value with the given windows under generation `gen`. With `ifGen` the write
   * is a load's write-back, conditional on the record's generation and not retried when L2 fails
   * (it is only a copy). Without it, it is a `set`: when L2 fails, the key's record is replaced by
   * a tombstone in the background instead (see `PendingTombstone`). When the store refuses this
   * record alone (a `RecordError`), the write fails — reported, not a backend failure — and a `set`
   * replaces the old record with a tombstone at once.
   */
  async put(ns: RemoteScope, key: string, enc: Encoded, times: EntryTimes, gen: string, ifGen?: string): Promise<PutResult> {
    const t: RecordTimes = { born: times.born, ttl: times.fresh - times.born, maxStale: times.maxStale, failSafe: times.failSafe };
    // Even a record past its windows is written: it carries the generation that fences older loads.
    const ttlMs = Math.max(times.fresh + Math.max(times.maxStale, times.failSafe) - this.#clock.now(), GENERATION_MEMORY_MS);
    const record = encodeRecord(gen, t, enc.payload);
    const full = this.keyOf(ns, key);
    if (ifGen !== undefined) {
      // A write-back keeps the generation it saw; one that long was not written by layercache, and
      // the record would outgrow the header room `encode` counted on: no write-back.
      if (overBytes(gen, MAX_GENERATION_BYTES)) return "failed";
      const ok = await this.#write("set", ns, key, () => this.#inOrder(full, () => this.store.set(full, record, ttlMs, ifGen)));
      return ok === FAILED || ok === REJECTED ? "failed" : ok ? "written" : "conflict";
    }
    this.#pending.delete(full); // this write supersedes a removal still waiting
    const ok = await this.#write("set", ns, key, () => this.#inOrder(full, () => this.store.set(full, record, ttlMs)));
    if (ok === REJECTED) {
      // The old record is still there: no instance may read it after this set.
      await this.remove(ns, key);
      return "failed";
    }
    if (ok !== FAILED) return "written";
    this.#pending.put(full, { ns, key, gen: this.#newGen() });
    return "failed";
  }

  /** Replaces the record with a tombstone of a new generation (retried in the background if L2 fails). */
  async remove(ns: RemoteScope, key: string): Promise<PutResult> {
    const full = this.keyOf(ns, key);
    this.#pending.delete(full);
    const t: PendingTombstone = { ns, key, gen: this.#newGen() };
    const ok = await this.#tombstone(full, t);
    if (ok === REJECTED) return "failed"; // refused for this record: a retry would be refused too
    if (ok !== FAILED) return "written";
    this.#pending.put(full, t);
    return "failed";
  }

  /** Gives queued removals one more try (bounded by the caller) and stops retrying. */
  async close(): Promise<void> {
    this.#pending.kick();
    await this.#pending.close();
    this.#deadlines.close();
    try {
      // Not through the breaker: connections must be released even when L2 is failing.
      await withTimeout(this.#clock, Promise.resolve(this.store.close?.()), Math.max(this.#timeoutMs, 1000), () => new L2TimeoutError("close", this.#timeoutMs));
    } catch (error) {
      this.#failed("close", undefined, undefined, error);
    }
  }

  #tombstone(full: string, t: PendingTombstone, kind: "write" | "background" = "write"): Promise<boolean | typeof FAILED | typeof REJECTED> {
    return this.#write("remove", t.ns, t.key, () => this.#inOrder(full, () => this.store.set(full, encodeTombstone(t.gen, this.#clock.now()), GENERATION_MEMORY_MS)), kind);
  }

  async #retry(full: string, t: PendingTombstone): Promise<boolean> {
    // Background work: it may be the probe of a half-open breaker, and waits for it.
    const ok = await this.#tombstone(full, t, "background");
    if (ok === FAILED) return false;
    if (ok !== REJECTED) this.#onRetried(t.ns, t.key);
    return true; // done (a refused record is not retried: it would be refused again)
  }

  /**
   * A store write under the breaker and the timeout. A `RecordError` means the store answered and
   * refused this record alone: reported as an `l2Error`, REJECTED, and not a backend failure (for
   * the breaker it is an answer, like any other).
   */
  async #write(operation: string, ns: RemoteScope, key: string, run: () => Promise<boolean>, kind: "write" | "background" = "write"): Promise<boolean | typeof FAILED | typeof REJECTED> {
    const result = await this.#call(operation, ns, key, () => run().catch(keepRecordError), kind);
    if (result === FAILED || typeof result === "boolean") return result;
    if (!isRecordError(result)) return Boolean(result); // a store returning a truthy non-boolean
    this.#failed(operation, ns, key, result, "layercache: L2 refused one record (not counted as a backend failure)");
    return REJECTED;
  }

  /**
   * Runs one store call under the breaker and the timeout; FAILED (already reported) when it could
   * not. No caller waits for the probe of a half-open breaker: a read that draws it is sent in the
   * background (its answer only tells the breaker) and its caller is answered as if the breaker were
   * still open; a write gives the probe back (a write's outcome must be known to its caller). Only
   * `background` calls (retries) wait for a probe.
   */
  #call<T>(operation: string, ns: RemoteScope | undefined, key: string | undefined, run: () => Promise<T>, kind: "read" | "write" | "background" = "write"): Promise<T | typeof FAILED> {
    const breaker = this.#breaker;
    const gate = breaker === undefined ? "pass" : breaker.gate();
    if (gate === "shut" || (gate === "probe" && kind !== "background")) {
      this.#report.counters.l2ShortCircuits++;
      if (gate === "probe") {
        if (kind === "read") void this.#guarded(operation, ns, key, run);
        else breaker!.skipProbe();
      }
      return Promise.resolve(FAILED);
    }
    return this.#guarded(operation, ns, key, run);
  }

  /** One store call under the timeout; its outcome tells the breaker. */
  #guarded<T>(operation: string, ns: RemoteScope | undefined, key: string | undefined, run: () => Promise<T>): Promise<T | typeof FAILED> {
    const breaker = this.#breaker;
    let pending: Promise<T>;
    try {
      pending = run();
    } catch (error) {
      pending = Promise.reject(error);
    }
    return this.#deadlines.wrap(pending).then(
      (result) => {
        breaker?.success();
        return result;
      },
      (error: unknown) => {
        breaker?.failure();
        this.#failed(operation, ns, key, error);
        return FAILED;
      },
    );
  }

  async #corrupt(ns: RemoteScope, key: string, error: unknown): Promise<RemoteRead | undefined> {
    this.#report.fact("l2Corrupt", { key, scope: ns.label, error });
    const full = this.keyOf(ns, key);
    const t: PendingTombstone = { ns, key, gen: this.#newGen() };
    const ok = await this.#tombstone(full, t);
    if (ok === REJECTED) return undefined; // the record stays unknown: the load that follows does not write back
    if (ok !== FAILED) return { gen: t.gen };
    this.#pending.put(full, t);
    return undefined;
  }

  #failed(operation: string, ns: RemoteScope | undefined, key: string | undefined, error: unknown, message?: string): void {
    // While the breaker is open nothing reaches the store, so this logs a bounded burst, not a flood.
    this.#report.fact("l2Error", { operation, key, scope: ns?.label, error }, message === undefined ? undefined : { message });
  }

  #breakerChanged(state: BreakerState): void {
    if (state === "open") {
      this.#report.fact("l2CircuitOpen", {});
    } else {
      this.#report.fact("l2CircuitClose", {}, { fields: { pendingRemovals: this.#pending.size } });
      this.#pending.kick();
    }
  }
}

function timesOf(t: RecordTimes): EntryTimes {
  return { born: t.born, fresh: t.born + t.ttl, maxStale: t.maxStale, failSafe: t.failSafe };
}
