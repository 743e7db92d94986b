import { RECORD_VERSION, checkOptions, optionError, parseResilience, type CircuitBreakerOptions, type Duration, type L2Limits, type L2Resilience, type L2Store, type RecordError } from "../../backend.js";
import { REDIS_MAX_BULK_BYTES, checkRedisUrl, driverFor, driverForUrl, luaScript, type RedisDriver } from "./driver.js";

export interface RedisStoreOptions {
  /** An ioredis `Redis` or `Cluster`, or a node-redis client or cluster. Not closed by the store. */
  client?: unknown;
  /** Alternatively, a `redis://` URL: the store opens (with ioredis if installed, else node-redis) and closes its own connection. */
  url?: string;
  /** An L2 call taking longer counts as failed. Default `"1s"`; `0` disables. */
  timeout?: Duration;
  /** Circuit breaker: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"5s"`). */
  circuitBreaker?: CircuitBreakerOptions;
}

const KNOWN = ["client", "url", "timeout", "circuitBreaker"];

/**
 * A load's write-back: store ARGV[2] (expiring after ARGV[3] ms, or never when empty) only if the
 * generation of the current record — its second `|`-separated field — equals ARGV[1] ("" when
 * there is no record). Anything that is not a layercache record has generation "" (as
 * `generationOf` says), a key of another type (a hash, a list ...) too: it is not read (a GET of it
 * would fail with WRONGTYPE), and a write-back that saw a miss replaces it. One key, so it is
 * cluster-safe.
 */
const CAS = luaScript(`
local gen = ''
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  local cur = redis.call('GET', KEYS[1])
  local head = '${RECORD_VERSION}|'
  if cur and string.sub(cur, 1, #head) == head then
    local bar = string.find(cur, '|', #head + 1, true)
    if bar then gen = string.sub(cur, #head + 1, bar - 1) end
  end
end
if gen ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
`);

/** Milliseconds for PX: a positive integer, or undefined for "no expiry". */
function px(ttlMs: number): number | undefined {
  return ttlMs === Infinity ? undefined : Math.max(1, Math.ceil(ttlMs));
}

/**
 * L2 on Redis, Valkey or Redis Cluster. Every key is a plain string holding one layercache record.
 * Reads are GET, or MGET for the reads of one tick on a standalone server; a set or remove
 * is a SET with PX; a load's write-back is a one-key Lua compare-and-set on the record's
 * generation.
 */
export class RedisStore implements L2Store {
  readonly resilience: L2Resilience;
  /**
   * Redis's own: a key and a value are each at most 512 MB (`proto-max-bulk-len`). A record is the
   * envelope header plus the payload, and the cache counts the header, so `maxValueBytes` (1 MiB by
   * default) is what limits values in practice; keys are hashed only past 512 MB, which the rules
   * of keys never reach.
   */
  readonly limits: L2Limits = { maxKeyBytes: REDIS_MAX_BULK_BYTES, maxRecordBytes: REDIS_MAX_BULK_BYTES };
  /** The client passed in (L2 writes and a RedisBus on the same client are sent in order). */
  readonly connection: object | undefined;
  readonly #url: string | undefined;
  #driver: RedisDriver | undefined;
  #opening: Promise<RedisDriver> | undefined;
  #closed = false;

  constructor(options: RedisStoreOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/redis: RedisStore needs options: { client } or { url }");
    checkOptions(options, KNOWN, "RedisStore");
    if ((options.client === undefined) === (options.url === undefined)) throw optionError("client", "or `url` must be given (exactly one of them)");
    if (options.client !== undefined) this.#driver = driverFor(options.client);
    else checkRedisUrl(options.url);
    this.connection = options.client as object | undefined;
    this.#url = options.url;
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 5000);
  }

  async connect(): Promise<void> {
    const d = await this.#ready();
    await d.open();
  }

  /** Rejects with a `RecordError` when the key holds another Redis type (a hash, a list ...). */
  get(key: string): Promise<string | null> {
    const d = this.#driver;
    return d !== undefined ? d.get(key) : this.#ready().then((ready) => ready.get(key));
  }

  /**
   * MGET on a standalone server; one GET per key on a cluster (keys of one batch live on different
   * slots). A key of another type reads as null with MGET (its write-back then replaces it), as a
   * `RecordError` in its place with GET.
   */
  getMany(keys: string[]): Promise<(string | null | RecordError)[]> {
    const d = this.#driver;
    return d !== undefined ? d.getMany(keys) : this.#ready().then((ready) => ready.getMany(keys));
  }

  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    const d = this.#driver ?? (await this.#ready());
    const p = px(ttlMs);
    if (ifGeneration === undefined) {
      await d.set(key, record, p);
      return true;
    }
    return (await d.eval(CAS, [key], [ifGeneration, record, p === undefined ? "" : String(p)])) === 1;
  }

  async close(): Promise<void> {
    this.#closed = true;
    // A client the user passed in is theirs to close; one we are still opening is closed once open.
    if (this.#url === undefined) return;
    const d = this.#driver ?? (await this.#opening?.catch(() => undefined));
    await d?.quit();
  }

  #ready(): Promise<RedisDriver> {
    if (this.#driver) return Promise.resolve(this.#driver);
    if (this.#closed) return Promise.reject(new Error("layercache/redis: the store is closed"));
    this.#opening ??= driverForUrl(this.#url!).then(
      (d) => (this.#driver = d),
      (error: unknown) => {
        this.#opening = undefined; // the next call tries again
        throw error;
      },
    );
    return this.#opening;
  }
}
