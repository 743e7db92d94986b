import { RecordError, checkOptions, generationOf, optionError, parseResilience, preview, type CircuitBreakerOptions, type Duration, type L2Limits, type L2Resilience, type L2Store } from "../../backend.js";
import { MemcachedClient, MemcachedServerError, type MemcachedClientOptions } from "./client.js";
import { MEMCACHED_MAX_KEY_BYTES } from "./keys.js";
import { exptime } from "./ttl.js";

export interface MemcachedStoreOptions {
  /** A `MemcachedClient` you made (and close yourself), to share its connections. */
  client?: MemcachedClient;
  /** Alternatively, the servers (`"host:port"`, or several): the store opens and closes its own connections. */
  servers?: MemcachedClientOptions["servers"];
  /** An L2 call taking longer counts as failed (and with `servers`, a request waiting longer resets its connection). Default `"1s"`; `0` disables. */
  timeout?: Duration;
  /** Circuit breaker: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"5s"`). */
  circuitBreaker?: CircuitBreakerOptions;
  /**
   * The servers' item size limit in bytes (`memcached -I`, default 1 MiB). Records are kept a margin
   * below it (for the item header and key); a larger one stays in L1 only (`valueTooLarge`).
   */
  maxItemSize?: number;
}

const KNOWN = ["client", "servers", "timeout", "circuitBreaker", "maxItemSize"];
const DEFAULT_ITEM_SIZE = 1024 * 1024;
/** Room left in an item for what is not the record: the item header, the cas, the key (up to 250 bytes), the data's "\r\n". */
const ITEM_OVERHEAD = 512;
/** Tries of a write-back whose item changed between its read and its write (each try starts by reading the generation again). */
const CAS_TRIES = 4;

/** Refusals that concern one item (too large for the server's slabs, no memory for its size), not the server. */
const ITEM_REFUSAL = /object too large|out of memory/i;

/**
 * L2 on Memcached (≥ 1.6, meta protocol), over one server or several (consistent hashing). Every
 * key holds one layercache record. A load's write-back is a compare-and-set: read the record with
 * its cas token (`mg … v c`), compare its generation, write with `ms … C<cas>` (or `ME`, add, when
 * there was none); if another write came in between, read again — so a load never overwrites a
 * newer set, remove or write-back, on any instance. Lifetimes convert to Memcached's seconds and
 * 30-day rule without ever being cut short (ttl.ts); keys of any content and length are mapped to
 * valid keys (keys.ts).
 */
export class MemcachedStore implements L2Store {
  readonly resilience: L2Resilience;
  readonly limits: L2Limits;
  /** The client passed in (or undefined when the store owns its own). */
  readonly connection: object | undefined;
  readonly #client: MemcachedClient;
  readonly #owned: boolean;

  constructor(options: MemcachedStoreOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/memcached: MemcachedStore needs options: { servers } or { client }");
    checkOptions(options, KNOWN, "MemcachedStore");
    if ((options.client === undefined) === (options.servers === undefined)) throw optionError("client", "or `servers` must be given (exactly one of them)");
    if (options.client !== undefined && !(options.client instanceof MemcachedClient)) throw optionError("client", `must be a MemcachedClient of layercache/memcached (got ${preview(options.client)})`);
    const itemSize = options.maxItemSize ?? DEFAULT_ITEM_SIZE;
    if (!Number.isSafeInteger(itemSize) || itemSize < 2048) throw optionError("maxItemSize", `must be a whole number of bytes, at least 2048 (got ${preview(options.maxItemSize)})`);
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 5000);
    this.limits = { maxKeyBytes: MEMCACHED_MAX_KEY_BYTES, maxRecordBytes: itemSize - ITEM_OVERHEAD };
    this.#owned = options.client === undefined;
    this.#client = options.client ?? new MemcachedClient({ servers: options.servers!, ...(options.timeout === undefined ? {} : { timeout: options.timeout }) });
    this.connection = this.#owned ? undefined : this.#client;
  }

  connect(): Promise<void> {
    return this.#client.connect();
  }

  get(key: string): Promise<string | undefined> {
    return this.#client.get(key);
  }

  /** One pipelined round trip per server holding some of the keys. */
  getMany(keys: string[]): Promise<(string | undefined)[]> {
    return this.#client.getMany(keys);
  }

  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    const exp = exptime(ttlMs, Date.now());
    try {
      if (ifGeneration === undefined) return (await this.#client.set(key, record, exp)) === "stored";
      for (let i = 0; i < CAS_TRIES; i++) {
        const current = await this.#client.gets(key);
        if ((current === undefined ? "" : generationOf(current.value)) !== ifGeneration) return false;
        const result = await this.#client.set(key, record, exp, current === undefined ? { add: true } : { cas: current.cas });
        if (result === "stored") return true;
        // Another write came between the read and this one (or the item expired): compare again.
      }
      return false; // still contended: the load's value is not written, which is always safe
    } catch (error) {
      if (error instanceof MemcachedServerError && ITEM_REFUSAL.test(error.reply)) {
        throw new RecordError(`layercache/memcached: the server refused a record of ${Buffer.byteLength(record)} bytes: ${error.reply}`, { key, cause: error });
      }
      throw error;
    }
  }

  async close(): Promise<void> {
    if (this.#owned) await this.#client.close();
  }
}
