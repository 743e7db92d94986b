import { createHash } from "node:crypto";
import type { TimerClock } from "../shared/clock.js";
import { isRecordError, LayerCacheError, SerializationError, type RecordError } from "../shared/errors.js";
import type { Reporter } from "../telemetry/reporter.js";
import { channels } from "../telemetry/channels.js";
import type { EntryTimes } from "../l1/partition.js";
import { cutToBytes, declaredLimit, overBytes } from "../shared/limits.js";
import { Breaker, Deadlines, RetryQueue, withTimeout, type BreakerState } from "../shared/resilience.js";
import { L2_LIMIT_MINIMUMS, RESILIENCE_DEFAULTS, type L2Store } from "./contract.js";
import { MAX_GENERATION_BYTES, RECORD_HEADER_BYTES, decodeRecord, encodeRecord, encodeTombstone, generationOf, type RecordTimes, type TagSnapshot } from "./envelope.js";
import type { Serializer } from "./serializer.js";

/**
 * How long L2 remembers a key's generation: every record (a value, or the tombstone of a remove)
 * stays at least this long, even past its windows. A load that ran longer never writes back to L2,
 * because the generation it saw may have been forgotten.
 */
export const GENERATION_MEMORY_MS = 60_000;

const noop = (): void => {};

/**
 * How long a tag's record lives in L2 after it was created or invalidated. A tagged value is valid
 * only while its tags' records hold the generations it was written with, so a tag record that
 * expires makes the values carrying it misses (never valid again): this only bounds how long a
 * tagged value can be served, it never brings one back.
 */
export const TAG_MEMORY_MS = 30 * 24 * 3600_000;

/** How long (in store timeouts) a write waits for the previous write of its key before it is sent anyway. */
const ORDER_WAIT_TIMEOUTS = 2;

/** Most keys read by one `getMany`. */
const MAX_READ_BATCH = 256;

/** What a read of one key gives: the stored text, nothing, a `RecordError` of that record, or FAILED (L2 unreachable). */
type Fetched = string | null | undefined | RecordError | typeof FAILED;

/**
 * Reads sent in one store call: single keys (`keys`, each answered by `waiters` at the same
 * index), then the keys of bulk reads (`bulks`, each answered with its records in key order).
 */
interface ReadBatch {
  keys: string[];
  waiters: ((value: Fetched) => void)[];
  /** How many keys in all (singles and bulks). */
  size: number;
  bulks: BulkPart[] | undefined;
}

interface BulkPart {
  keys: readonly string[];
  resolve(records: readonly Fetched[] | typeof FAILED): void;
}

/** Most failed L2 writes kept for retry (one per key); beyond it the oldest is dropped and reported. */
const MAX_PENDING_WRITES = 10_000;

/** The L2 state of one key as a load sees it. */
export interface RemoteRead {
  /** Generation of the stored record ("" when there is none). */
  gen: string;
  /** The live value, when the record holds one (and, for a tagged value, its tags are all still valid). */
  entry?: RemoteEntry;
  /** The current generation of each tag the read was asked about ("" when the tag has no record). */
  tagGens?: Map<string, string>;
}

export interface RemoteEntry {
  value: unknown;
  times: EntryTimes;
  /** Length of the serialized payload. */
  bytes: number;
  /** A tagged value's tags. */
  tags?: readonly string[];
}

/** A value ready to be stored. */
export interface Encoded {
  payload: string;
  bytes: number;
  tooLarge: boolean;
}

export type PutResult = "written" | "conflict" | "failed";

/** A read record before its tags are checked. */
interface Checked extends RemoteRead {
  tagged?: TagSnapshot;
}

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
  /** A tag's record (`key` is the tag; "" is the scope's tag epoch), kept `TAG_MEMORY_MS`. */
  tag?: boolean;
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
  readonly #onRetried: (ns: RemoteScope, key: string, tag: boolean) => void;
  #batch: ReadBatch | undefined;
  /**
   * The last store write of each key still under way (settled: it never rejects). A store on a pool
   * of connections keeps no order between calls: the next write of the key is sent once this one
   * has settled, and a read of the key waits for it (at most the timeout), so that this instance's
   * writes land in call order and a read never overtakes them — whatever the store.
   */
  readonly #writing = new Map<string, Promise<void>>();
  /** Tag records (full keys) this instance is invalidating right now: until written, what L2 holds for them is outdated. */
  readonly #invalidating = new Map<string, number>();

  constructor(
    store: L2Store,
    o: {
      serializer: Serializer;
      prefix: string;
      maxValueBytes: number;
      report: Reporter;
      clock: TimerClock;
      newGen: () => string;
      /** A queued tombstone reached L2: peers should drop what they read meanwhile (`tag`: it was a tag invalidation). */
      onRetried: (ns: RemoteScope, key: string, tag: boolean) => void;
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
        this.#report.note("l2WritesDropped", "warn", "l2WritesDropped", { key, scope: t.ns.label }, "layercache: too many L2 removals waiting for retry; dropped the oldest");
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

  /**
   * The L2 key of a tag's record: `<prefix>:<scope/path>%tag:<tag>` (the scope's tag epoch: tag
   * ""). "%t" never appears in an escaped prefix or scope, so no user key and no hashed key (whose
   * marker is "%#") can be equal to it; past `maxKeyBytes` it is hashed like any key.
   */
  tagKeyOf(ns: RemoteScope, tag: string): string {
    return this.#markedKey(ns, "%tag:", tag);
  }

  /** `<prefix>:<scope/path><marker><name>` ("%tag:", "%lock:": never a user key, see `tagKeyOf`), hashed when too long. */
  #markedKey(ns: RemoteScope, marker: string, name: string): string {
    const p = (ns.l2Prefix ??= `${this.#prefix}:${ns.path.map(escapePart).join("/")}:`);
    const head = p.slice(0, -1) + marker;
    const full = head + name;
    return overBytes(full, this.#maxKeyBytes) ? hashedKey(full, head, this.#maxKeyBytes) : full;
  }

  /**
   * Takes the lease of a key for distributed single flight: a record at
   * `<prefix>:<scope>%lock:<key>` written only when there is none, expiring after `ms`. The
   * lease's generation when taken; null when another instance holds it; undefined when L2 could
   * not be reached.
   */
  async lease(ns: RemoteScope, key: string, ms: number): Promise<string | null | undefined> {
    const gen = this.#newGen();
    const full = this.#markedKey(ns, "%lock:", key);
    const ok = await this.#write("lease", ns, key, () => this.store.set(full, encodeTombstone(gen, this.#clock.now()), ms, ""));
    if (ok === FAILED || ok === REJECTED) return undefined;
    return ok ? gen : null;
  }

  /**
   * Gives a lease back (only if it is still ours): its record is replaced by text that is not a
   * record — generation "" by the contract, so the next `lease` takes it at once — expiring at once.
   */
  async releaseLease(ns: RemoteScope, key: string, gen: string): Promise<void> {
    const full = this.#markedKey(ns, "%lock:", key);
    await this.#write("lease", ns, key, () => this.store.set(full, "free", 1, gen));
  }

  async connect(): Promise<void> {
    if (this.store.connect === undefined) return;
    await this.#call("connect", undefined, undefined, () => this.store.connect!());
  }

  /**
   * The key's record; undefined when L2 could not be reached. Corrupt records become misses.
   * `tags`: tags the caller will write with (a load's declared tags), read in the same batch as the
   * key (one round trip); their generations come back as `tagGens`. A tagged value is checked
   * against its tags' current generations (the ones not read already take one more round trip):
   * a tag invalidated since it was written makes it a miss.
   */
  read(ns: RemoteScope, key: string, tags?: readonly string[]): Promise<RemoteRead | undefined> {
    const full = this.keyOf(ns, key);
    // A removal of this key that has not reached L2 yet: the record there may be the value this
    // instance invalidated, so a value read now counts as a miss (whose write-back, fenced on
    // that record's generation, stores a newer value; the removal still lands after it).
    const removedHere = this.#pending.size > 0 && this.#pending.get(full) !== undefined;
    // (Not while the breaker refuses calls: the read is answered at once then, like any other.)
    const writing = this.#writing.size > 0 && (this.#breaker?.ready() ?? true) ? this.#writing.get(full) : undefined;
    // A write of this key is under way: read what it leaves (or count L2 as unreachable for this read once the timeout is over).
    if (writing !== undefined) return this.#deadlines.wrap(writing).then(() => this.read(ns, key, tags), () => undefined);
    const record = this.#fetch(full).then((text) => this.#decode(ns, key, text, removedHere));
    if (tags === undefined) return record.then((r) => this.#tagged(ns, r, undefined));
    const gens = this.tagGenerations(ns, tags);
    return Promise.all([record, gens]).then(([r, g]) => (g === undefined ? undefined : this.#tagged(ns, r, g)));
  }

  /**
   * `read` of several keys of one scope at once (getOrSetMany): their records in key order
   * (undefined for a key whose L2 state is unknown: L2 unreachable). The keys — and `tags`, read
   * once for all of them — go to the store in the tick's batch (one `getMany`, one round trip); a
   * key with a write of this instance under way waits for it, as `read` does.
   */
  async readMany(ns: RemoteScope, keys: readonly string[], tags?: readonly string[]): Promise<(RemoteRead | undefined)[]> {
    const out: (RemoteRead | undefined)[] = new Array(keys.length);
    // Only work that needs it: most calls have no write under way and no removal waiting.
    const writing = this.#writing.size > 0 && (this.#breaker?.ready() ?? true);
    const removed = this.#pending.size > 0;
    let later: Promise<unknown>[] | undefined;
    const fulls: string[] = [];
    const at: number[] = []; // where each key of the batch sits in `keys`
    // Keys with a removal of this instance not in L2 yet when the read starts (see `read`).
    let removedHere: boolean[] | undefined;
    for (let i = 0; i < keys.length; i++) {
      const full = this.keyOf(ns, keys[i]!);
      if (writing && this.#writing.has(full)) {
        (later ??= []).push(this.read(ns, keys[i]!, tags).then((r) => void (out[i] = r)));
        continue;
      }
      if (removed && this.#pending.get(full) !== undefined) (removedHere ??= [])[fulls.length] = true;
      fulls.push(full);
      at.push(i);
    }
    // The tags first: their reads join the same batch as the keys.
    const gens = tags === undefined ? undefined : this.tagGenerations(ns, tags);
    const records = fulls.length === 0 ? [] : await this.#fetchMany(fulls);
    const g = await gens;
    if (records === FAILED || (tags !== undefined && g === undefined)) {
      if (later !== undefined) await Promise.all(later);
      return out; // unknown: the keys read on their own may still have answered
    }
    // Tagged values whose tags the call did not name: those tags are read once for all of them.
    let unnamed: [i: number, r: Checked][] | undefined;
    for (let j = 0; j < fulls.length; j++) {
      const i = at[j]!;
      const decoded = this.#decode(ns, keys[i]!, records[j], removedHere?.[j] === true);
      if (decoded instanceof Promise) {
        (later ??= []).push(decoded.then((d) => this.#tagged(ns, d, g)).then((v) => void (out[i] = v)));
        continue;
      }
      if (decoded?.tagged === undefined || knowsTags(decoded, g)) {
        out[i] = this.#tagged(ns, decoded, g) as RemoteRead | undefined; // answered at once: no tag to read
        continue;
      }
      if (g !== undefined) decoded.tagGens = g;
      (unnamed ??= []).push([i, decoded]);
    }
    if (unnamed !== undefined) {
      const rs = unnamed.map(([, r]) => r);
      (later ??= []).push(this.#readTagsOf(ns, rs, g).then((checked) => unnamed!.forEach(([i], j) => void (out[i] = checked[j]))));
    }
    if (later !== undefined) await Promise.all(later);
    return out;
  }

  /** A decoded record with the tag generations read with it, its own tags checked. */
  #tagged(ns: RemoteScope, r: Checked | RemoteRead | undefined, gens: Map<string, string> | undefined): RemoteRead | undefined | Promise<RemoteRead | undefined> {
    if (r === undefined) return undefined;
    if (gens !== undefined) r.tagGens = gens;
    return (r as Checked).tagged === undefined ? r : this.#checkTags(ns, r as Checked, gens);
  }

  /** The current generation of each tag ("" for none), read in one batch; undefined when L2 could not be reached. */
  async tagGenerations(ns: RemoteScope, tags: readonly string[]): Promise<Map<string, string> | undefined> {
    const fulls = tags.map((t) => this.tagKeyOf(ns, t));
    // A tag invalidation of this instance under way or still waiting to reach L2: the tag's record
    // there is outdated. Asked when the read is sent as well as when it answers: a read sent while
    // the invalidation waited may be answered after it landed (a retry; a store whose reads and
    // writes go on different connections), with the old generation.
    const outdated = (full: string): boolean => (this.#pending.size > 0 || this.#invalidating.size > 0) && (this.#pending.get(full) !== undefined || this.#invalidating.has(full));
    const before = fulls.map(outdated);
    const texts = await Promise.all(fulls.map((full) => this.#fetch(full)));
    const gens = new Map<string, string>();
    for (let i = 0; i < tags.length; i++) {
      const text = texts[i];
      if (text === FAILED) return undefined;
      if (before[i] || outdated(fulls[i]!)) gens.set(tags[i]!, "\u0000pending");
      else gens.set(tags[i]!, typeof text === "string" ? generationOf(text) : "");
    }
    return gens;
  }

  /**
   * A tagged value stays a value only while every tag it carries still has the generation it was
   * written with. Answered at once when `known` holds all its tags; else they are read (one more round trip).
   */
  #checkTags(ns: RemoteScope, r: Checked, known: Map<string, string> | undefined): RemoteRead | undefined | Promise<RemoteRead | undefined> {
    if (knowsTags(r, known)) return tagChecked(r, known!);
    return this.#readTagsOf(ns, [r], known).then((rs) => rs[0]);
  }

  /**
   * Tagged values checked after one read of the tags they carry that `known` lacks (each tag once,
   * for all of them); undefined for each when that read fails — never served unchecked.
   */
  #readTagsOf(ns: RemoteScope, rs: readonly Checked[], known: Map<string, string> | undefined): Promise<(RemoteRead | undefined)[]> {
    const missing = new Set<string>();
    for (const r of rs) for (const [tag] of r.tagged!) if (!known?.has(tag)) missing.add(tag);
    return this.tagGenerations(ns, [...missing]).then((more) => {
      if (more === undefined) return rs.map(() => undefined);
      const all = known === undefined ? more : new Map([...known, ...more]);
      return rs.map((r) => tagChecked(r, all));
    });
  }


  /**
   * The tags' generations a value written now carries. Tags without a record get one first (a
   * conditional write "only when absent"), so that a written value never carries "" — a tag record
   * that expires or is evicted later then makes the value a miss, never valid again. With `retry`
   * (a `set`, which wins whatever happened meanwhile) a lost race re-reads the tag; without it (a
   * load, whose tags had no record when it started) the tag read again must hold a creation ("c."
   * generation, someone else's): anything else means it may have been invalidated while the loader
   * ran — undefined, no write. Undefined too when L2 is unreachable.
   */
  async tagSnapshot(ns: RemoteScope, gens: Map<string, string>, retry: boolean): Promise<TagSnapshot | undefined> {
    const out: [string, string][] = [];
    const created: Promise<boolean | typeof FAILED | typeof REJECTED>[] = [];
    const fresh: [string, string][] = [];
    for (const [tag, gen] of gens) {
      if (gen.startsWith("\u0000")) return undefined; // an invalidation of this instance not in L2 yet
      if (gen !== "") {
        out.push([tag, gen]);
        continue;
      }
      // "c." marks a creation: only a removeByTag writes any other generation, and nothing but
      // expiry brings "c." back, so a tag found created (by anybody) was not invalidated since it was absent.
      const mine = `c.${this.#newGen()}`;
      fresh.push([tag, mine]);
      const full = this.tagKeyOf(ns, tag);
      created.push(this.#write("set", ns, tag, () => this.store.set(full, encodeTombstone(mine, this.#clock.now()), TAG_MEMORY_MS, "")));
    }
    const results = await Promise.all(created);
    const lost: string[] = [];
    for (let i = 0; i < results.length; i++) {
      const ok = results[i];
      if (ok === FAILED || ok === REJECTED) return undefined;
      if (ok) out.push(fresh[i]!);
      else lost.push(fresh[i]![0]);
    }
    if (lost.length > 0) {
      const again = await this.tagGenerations(ns, lost);
      if (again === undefined) return undefined;
      for (const [tag, gen] of again) {
        if (gen === "" || gen.startsWith("\u0000") || (!retry && !gen.startsWith("c."))) return undefined;
        out.push([tag, gen]);
      }
    }
    return out;
  }

  /**
   * Invalidates a tag in L2: the scope's tag epoch gets a new generation, then the tag's record (so
   * that whoever reads the new tag generation and then the epoch sees the epoch changed too). Both
   * unconditional; when L2 fails they are queued like removals, in that order.
   */
  async invalidateTag(ns: RemoteScope, tag: string): Promise<PutResult> {
    const results: PutResult[] = [];
    // Reads of this instance that run meanwhile must not take the tag's old generation for valid.
    const tagFull = this.tagKeyOf(ns, tag);
    this.#invalidating.set(tagFull, (this.#invalidating.get(tagFull) ?? 0) + 1);
    try {
      for (const t of ["", tag]) {
        const full = t === tag ? tagFull : this.tagKeyOf(ns, t);
        this.#pending.delete(full);
        const item: PendingTombstone = { ns, key: t, gen: this.#newGen(), tag: true };
        const ok = await this.#tombstone(full, item);
        if (ok === FAILED) this.#pending.put(full, item);
        results.push(ok === FAILED || ok === REJECTED ? "failed" : "written");
      }
    } finally {
      const n = this.#invalidating.get(tagFull)! - 1;
      if (n === 0) this.#invalidating.delete(tagFull);
      else this.#invalidating.set(tagFull, n);
    }
    return results[1]!;
  }

  #decode(ns: RemoteScope, key: string, text: Fetched, removedHere: boolean): Checked | undefined | Promise<Checked | undefined> {
    if (text === FAILED) return undefined;
    if (text === null || text === undefined) return { gen: "" };
    try {
      const rec = decodeRecord(text);
      if (rec.times === undefined || removedHere) return { gen: rec.gen };
      const value = this.#serializer.deserialize(rec.payload!);
      const entry: RemoteEntry = { value, times: timesOf(rec.times), bytes: rec.payload!.length };
      if (rec.tags === undefined) return { gen: rec.gen, entry };
      entry.tags = rec.tags.map((p) => p[0]);
      return { gen: rec.gen, entry, tagged: rec.tags };
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
    const batch = this.#batchFor(1);
    batch.keys.push(full);
    batch.size++;
    return new Promise((resolve) => batch.waiters.push(resolve));
  }

  /**
   * Reads several keys in the tick's batch (in batches of MAX_READ_BATCH at most): their records
   * in key order, or FAILED when L2 could not be reached. Without `getMany`, one `get` per key.
   */
  #fetchMany(fulls: readonly string[]): Promise<readonly Fetched[] | typeof FAILED> {
    if (this.store.getMany === undefined) return Promise.all(fulls.map((full) => this.#fetch(full)));
    if (fulls.length <= MAX_READ_BATCH) return this.#fetchPart(fulls);
    const parts: Promise<readonly Fetched[] | typeof FAILED>[] = [];
    for (let i = 0; i < fulls.length; i += MAX_READ_BATCH) parts.push(this.#fetchPart(fulls.slice(i, i + MAX_READ_BATCH)));
    return Promise.all(parts).then((records) => (records.includes(FAILED) ? FAILED : (records as Fetched[][]).flat()));
  }

  #fetchPart(keys: readonly string[]): Promise<readonly Fetched[] | typeof FAILED> {
    const batch = this.#batchFor(keys.length);
    batch.size += keys.length;
    return new Promise((resolve) => (batch.bulks ??= []).push({ keys, resolve }));
  }

  /** The tick's read batch, when it has room for `n` more keys; else a new one. */
  #batchFor(n: number): ReadBatch {
    const batch = this.#batch;
    if (batch !== undefined && batch.size + n <= MAX_READ_BATCH) return batch;
    const b: ReadBatch = (this.#batch = { keys: [], waiters: [], size: 0, bulks: undefined });
    process.nextTick(() => this.#flushReads(b));
    return b;
  }

  #flushReads(batch: ReadBatch): void {
    if (this.#batch === batch) this.#batch = undefined;
    const { waiters, bulks } = batch;
    // The common cases without copying: single keys only, or one bulk read alone.
    let keys: readonly string[] = batch.keys;
    if (bulks !== undefined) keys = keys.length === 0 && bulks.length === 1 ? bulks[0]!.keys : keys.concat(...bulks.map((b) => b.keys));
    const run = (): Promise<(string | null | undefined | RecordError)[]> =>
      keys.length === 1
        ? this.store.get(keys[0]!).then(
            (v) => [v],
            (error: unknown) => [keepRecordError(error)],
          )
        : this.store.getMany!(keys as string[]).catch((error: unknown) => {
            keepRecordError(error); // any other error fails the whole call
            // A store that cannot tell which record of the batch it could not read: ask key by key.
            return this.#readEach(keys);
          });
    void this.#call("get", undefined, keys.length === 1 ? keys[0] : `${keys.length} keys`, run, "read").then((values) => {
      for (let i = 0; i < waiters.length; i++) waiters[i]!(values === FAILED ? FAILED : values[i]);
      if (bulks === undefined) return;
      let at = waiters.length;
      for (const b of bulks) {
        const n = b.keys.length;
        b.resolve(values === FAILED || (at === 0 && n === values.length) ? values : values.slice(at, at + n));
        at += n;
      }
    });
  }

  /** Whether a write of `key` asked for now reaches the store at once: no earlier write of it is still under way (see `#inOrder`). */
  writesAtOnce(ns: RemoteScope, key: string): boolean {
    return this.#writing.size === 0 || !this.#writing.has(this.keyOf(ns, key));
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

  #readEach(keys: readonly string[]): Promise<(string | null | undefined | RecordError)[]> {
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
  async put(ns: RemoteScope, key: string, enc: Encoded, times: EntryTimes, gen: string, ifGen?: string, tags?: TagSnapshot): Promise<PutResult> {
    const t: RecordTimes = { born: times.born, ttl: times.fresh - times.born, maxStale: times.maxStale, failSafe: times.failSafe };
    // Even a record past its windows is written: it carries the generation that fences older loads.
    const ttlMs = Math.max(times.fresh + Math.max(times.maxStale, times.failSafe) - this.#clock.now(), GENERATION_MEMORY_MS);
    const record = encodeRecord(gen, t, enc.payload, tags);
    const full = this.keyOf(ns, key);
    if (tags !== undefined && overBytes(record, this.#maxRecordBytes)) {
      // The tags took the room the payload was measured against: L1 only, like any value too large.
      this.#report.fact("valueTooLarge", { key, scope: ns.label, bytes: Buffer.byteLength(record), limit: this.#maxRecordBytes, layer: "l2" });
      if (ifGen !== undefined) return "failed";
      await this.remove(ns, key);
      return "failed";
    }
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
    return this.#write("remove", t.ns, t.key, () => this.#inOrder(full, () => this.store.set(full, encodeTombstone(t.gen, this.#clock.now()), t.tag ? TAG_MEMORY_MS : GENERATION_MEMORY_MS)), kind);
  }

  async #retry(full: string, t: PendingTombstone): Promise<boolean> {
    // Background work: it may be the probe of a half-open breaker, and waits for it.
    const ok = await this.#tombstone(full, t, "background");
    if (ok === FAILED) return false;
    if (ok !== REJECTED && !(t.tag && t.key === "")) this.#onRetried(t.ns, t.key, t.tag === true);
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
    const trace = channels.l2;
    const pending = trace.hasSubscribers ? trace.tracePromise(this.#attempt<T>, { cache: this.#report.id, operation, scope: ns?.label, key }, this, run) : this.#attempt(run);
    return pending.then(
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

  /** One store call under the L2 timeout. */
  #attempt<T>(run: () => Promise<T>): Promise<T> {
    let pending: Promise<T>;
    try {
      pending = run();
    } catch (error) {
      pending = Promise.reject(error);
    }
    return this.#deadlines.wrap(pending);
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

/** The read of a tagged record, its value kept only when every tag it carries still has the generation it was written with. */
/** Whether `known` holds the generation of every tag the tagged value `r` carries. */
function knowsTags(r: Checked, known: Map<string, string> | undefined): boolean {
  return known !== undefined && r.tagged!.every(([tag]) => known.has(tag));
}

function tagChecked(r: Checked, gens: Map<string, string>): RemoteRead {
  const out: RemoteRead = { gen: r.gen };
  if (r.tagGens !== undefined) out.tagGens = r.tagGens;
  if (r.tagged!.every(([tag, gen]) => gens.get(tag) === gen)) out.entry = r.entry;
  return out;
}

function timesOf(t: RecordTimes): EntryTimes {
  return { born: t.born, fresh: t.born + t.ttl, maxStale: t.maxStale, failSafe: t.failSafe };
}
