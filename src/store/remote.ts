import { SerializationError } from "../errors.js";
import type { Counters, Emitter } from "../events.js";
import { writeLog, type Logger } from "../logger.js";
import type { EntryTimes } from "../memory/l1.js";
import type { L2Store } from "./contract.js";
import { decodeRecord, encodeRecord, encodeTombstone, type RecordTimes } from "./envelope.js";
import type { Serializer } from "./serializer.js";

/** How long a tombstone stays in L2; a load that ran longer than this never writes back to L2. */
export const TOMBSTONE_MS = 60_000;

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
 * Escapes the separators of the L2 key layout in a prefix or scope name, so that no two
 * (prefix, scope, key) triples map to the same L2 key.
 */
function escapePart(part: string): string {
  return part.replace(/[%:/]/g, (c) => (c === "%" ? "%25" : c === ":" ? "%3A" : "%2F"));
}

/**
 * The facade every L2 access goes through: key layout, envelope, serializer, size limit, and
 * error handling — the engine above it never sees a store error, only "unavailable".
 */
export class RemoteLayer {
  readonly store: L2Store;
  readonly #serializer: Serializer;
  readonly #prefix: string;
  readonly #maxValueBytes: number;
  readonly #emitter: Emitter;
  readonly #counters: Counters;
  readonly #logger: Logger | undefined;
  readonly #newGen: () => string;

  constructor(
    store: L2Store,
    o: { serializer: Serializer; prefix: string; maxValueBytes: number; emitter: Emitter; counters: Counters; logger: Logger | undefined; newGen: () => string },
  ) {
    this.store = store;
    this.#serializer = o.serializer;
    this.#prefix = escapePart(o.prefix);
    this.#maxValueBytes = o.maxValueBytes;
    this.#emitter = o.emitter;
    this.#counters = o.counters;
    this.#logger = o.logger;
    this.#newGen = o.newGen;
  }

  /** `<prefix>:<scope/path>:<key>` with prefix and scope names escaped; the key is kept as is. */
  keyOf(ns: RemoteScope, key: string): string {
    const p = (ns.l2Prefix ??= `${this.#prefix}:${ns.path.map(escapePart).join("/")}:`);
    return p + key;
  }

  async connect(): Promise<void> {
    if (this.store.connect === undefined) return;
    try {
      await this.store.connect();
    } catch (error) {
      this.#failed("connect", undefined, undefined, error);
    }
  }

  /** The key's record; undefined when L2 could not be reached. Corrupt records become misses. */
  async read(ns: RemoteScope, key: string): Promise<RemoteRead | undefined> {
    let text: string | null | undefined;
    try {
      text = await this.store.get(this.keyOf(ns, key));
    } catch (error) {
      this.#failed("get", ns, key, error);
      return undefined;
    }
    if (text === null || text === undefined) return { gen: "" };
    let gen = "";
    try {
      const rec = decodeRecord(text);
      gen = rec.gen;
      if (rec.times === undefined) return { gen };
      const value = this.#serializer.deserialize(rec.payload!);
      const t = rec.times;
      return { gen, entry: { value, times: timesOf(t), bytes: rec.payload!.length } };
    } catch (error) {
      return this.#corrupt(ns, key, error);
    }
  }

  /** Serializes a value; throws `SerializationError` when the serializer cannot. */
  encode(key: string, value: unknown): Encoded {
    let payload: string;
    try {
      payload = this.#serializer.serialize(value);
      if (typeof payload !== "string") throw new TypeError(`serializer returned ${typeof payload}, not a string`);
    } catch (error) {
      throw new SerializationError(key, error);
    }
    const bytes = payload.length <= this.#maxValueBytes / 3 ? payload.length : Buffer.byteLength(payload);
    return { payload, bytes, tooLarge: bytes > this.#maxValueBytes };
  }

  /**
   * Stores an encoded value with the given windows. `ifGen` makes the write conditional on the
   * record's generation (a load's write-back); without it the write is a `set` with a new generation.
   */
  async put(ns: RemoteScope, key: string, enc: Encoded, times: EntryTimes, now: number, ifGen?: string): Promise<PutResult> {
    const born = times.fresh - times.ttl;
    const t: RecordTimes = { born, ttl: times.ttl, maxStale: times.maxStale, failSafe: times.failSafe };
    const ttlMs = times.fresh + Math.max(times.maxStale, times.failSafe) - now;
    if (!(ttlMs > 0)) return "written";
    const gen = ifGen ? ifGen : this.#newGen();
    try {
      const ok = await this.store.set(this.keyOf(ns, key), encodeRecord(gen, t, enc.payload), ttlMs, ifGen);
      return ok ? "written" : "conflict";
    } catch (error) {
      this.#failed("set", ns, key, error);
      return "failed";
    }
  }

  /** Replaces the record with a tombstone of a new generation; returns that generation, or undefined when L2 failed. */
  async remove(ns: RemoteScope, key: string): Promise<string | undefined> {
    const gen = this.#newGen();
    try {
      await this.store.set(this.keyOf(ns, key), encodeTombstone(gen), TOMBSTONE_MS);
      return gen;
    } catch (error) {
      this.#failed("remove", ns, key, error);
      return undefined;
    }
  }

  async close(): Promise<void> {
    try {
      await this.store.close?.();
    } catch (error) {
      this.#failed("close", undefined, undefined, error);
    }
  }

  async #corrupt(ns: RemoteScope, key: string, error: unknown): Promise<RemoteRead | undefined> {
    this.#counters.l2Corrupt++;
    writeLog(this.#logger, "warn", { key, scope: ns.label, err: error }, "layercache: corrupt L2 record treated as a miss and removed");
    if (this.#emitter.l.l2Corrupt) this.#emitter.emit("l2Corrupt", { key, scope: ns.label, error });
    const gen = await this.remove(ns, key);
    return gen === undefined ? undefined : { gen };
  }

  #failed(operation: string, ns: RemoteScope | undefined, key: string | undefined, error: unknown): void {
    this.#counters.l2Errors++;
    writeLog(this.#logger, "warn", { operation, key, scope: ns?.label, err: error }, "layercache: L2 operation failed");
    if (this.#emitter.l.l2Error) this.#emitter.emit("l2Error", { operation, key, scope: ns?.label, error });
  }
}

function timesOf(t: RecordTimes): EntryTimes {
  return { fresh: t.born + t.ttl, ttl: t.ttl, maxStale: t.maxStale, failSafe: t.failSafe };
}
