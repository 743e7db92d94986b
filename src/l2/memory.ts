import { checkOptions } from "../shared/backend-options.js";
import { overBytes } from "../shared/limits.js";
import { RecordError, optionError, preview } from "../shared/errors.js";
import type { L2Store } from "./contract.js";
import { generationOf } from "./envelope.js";

export interface MemoryStoreOptions {
  /**
   * Time source of expiry: a `FakeClock` makes records expire when the test moves time, not when
   * real time passes. Default: `Date.now`.
   */
  clock?: { now(): number };
  /**
   * Largest key and record, in UTF-8 bytes, as a backend with hard limits would state them
   * (Memcached: 250-byte keys). A larger one is refused with a `RecordError`, as such a backend
   * would refuse it. Default: no limits.
   */
  limits?: { maxKeyBytes?: number; maxRecordBytes?: number };
}

/** One stored record and the clock time at which it expires (`Infinity`: never). */
export interface StoredRecord {
  record: string;
  expires: number;
}

const KNOWN = ["clock", "limits"];
const LIMITS = ["maxKeyBytes", "maxRecordBytes"];

/** A limit: a positive integer number of bytes, or absent. */
function limit(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) <= 0) throw optionError(`limits.${name}`, `must be a positive integer (got ${preview(value)})`);
  return value as number;
}

/**
 * An L2 store in process memory, for tests: two caches given the same `MemoryStore` share their
 * L2 as two instances share a Redis. It keeps the L2 contract exactly — expiry on the clock it is
 * given, atomic conditional writes on the record's generation, `getMany` — and passes the
 * contract suite like every built-in store.
 *
 * Nothing is opened, so `close()` releases nothing and the store stays usable: several caches may
 * share one and close in any order.
 */
export class MemoryStore implements L2Store {
  /**
   * What is stored, by key: for a test to look at (or tamper with — a write here bypasses the
   * conditional write). A record past its expiry may still be here until it is read or swept.
   */
  readonly records = new Map<string, StoredRecord>();
  readonly limits?: { readonly maxKeyBytes?: number; readonly maxRecordBytes?: number };
  readonly #now: () => number;
  #writesSinceSweep = 0;
  /** Writes until the next sweep: as many as records were left by the last one, so a sweep costs a constant per write. */
  #sweepAfter = 1024;

  constructor(options: MemoryStoreOptions = {}) {
    checkOptions(options, KNOWN, "MemoryStore");
    const clock = options.clock;
    if (clock !== undefined && typeof clock?.now !== "function") throw optionError("clock", "must have a now() method");
    this.#now = clock === undefined ? () => Date.now() : () => clock.now();
    if (options.limits !== undefined) {
      const l = checkOptions(options.limits, LIMITS, "limits", "limits");
      this.limits = { maxKeyBytes: limit("maxKeyBytes", l.maxKeyBytes), maxRecordBytes: limit("maxRecordBytes", l.maxRecordBytes) };
    }
  }

  async get(key: string): Promise<string | undefined> {
    return this.#read(key);
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    return keys.map((key) => this.#read(key));
  }

  /** Synchronous from the check of the generation to the write: no other call can come between them. */
  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    this.#checkLimits(key, record);
    if (ifGeneration !== undefined) {
      const current = this.#read(key);
      if ((current === undefined ? "" : generationOf(current)) !== ifGeneration) return false;
    }
    this.records.set(key, { record, expires: this.#now() + ttlMs });
    // Expired records nobody reads again are dropped once in a while.
    if (++this.#writesSinceSweep >= this.#sweepAfter) this.#sweep();
    return true;
  }

  async close(): Promise<void> {}

  #read(key: string): string | undefined {
    const stored = this.records.get(key);
    if (stored === undefined) return undefined;
    if (this.#now() >= stored.expires) {
      this.records.delete(key);
      return undefined;
    }
    return stored.record;
  }

  #sweep(): void {
    this.#writesSinceSweep = 0;
    const now = this.#now();
    for (const [key, stored] of this.records) if (now >= stored.expires) this.records.delete(key);
    this.#sweepAfter = Math.max(1024, this.records.size);
  }

  #checkLimits(key: string, record: string): void {
    // Measured only when the length leaves a doubt (overBytes), as the cache's facades do.
    const maxKey = this.limits?.maxKeyBytes;
    if (maxKey !== undefined && overBytes(key, maxKey)) throw new RecordError(`layercache: MemoryStore key of ${Buffer.byteLength(key)} bytes is over limits.maxKeyBytes (${maxKey})`, { key });
    const maxRecord = this.limits?.maxRecordBytes;
    if (maxRecord !== undefined && overBytes(record, maxRecord)) throw new RecordError(`layercache: MemoryStore record of ${Buffer.byteLength(record)} bytes is over limits.maxRecordBytes (${maxRecord})`, { key });
  }
}
