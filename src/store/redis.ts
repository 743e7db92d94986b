import { optionError } from "../errors.js";
import { parseDuration, type Duration } from "../options.js";
import { driverFor, driverForUrl, luaScript, type RedisDriver } from "../redis/driver.js";
import type { L2Resilience, L2Store } from "./contract.js";
import { bornOf, RECORD_VERSION } from "./envelope.js";

export interface RedisStoreOptions {
  /** An ioredis `Redis` or `Cluster`, or a node-redis client or cluster. Not closed by the store. */
  client?: unknown;
  /** Alternatively, a `redis://` URL: the store opens (with ioredis if installed, else node-redis) and closes its own connection. */
  url?: string;
  /** An L2 call taking longer counts as failed. Default `"1s"`; `0` disables. */
  timeout?: Duration;
  /** Circuit breaker: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"5s"`). */
  circuitBreaker?: { threshold?: number; cooldown?: Duration };
}

const KNOWN = new Set(["client", "url", "timeout", "circuitBreaker"]);

// Both scripts read the record's generation (field 2) and write time (field 3); see
// store/envelope.ts. One key each, so they are cluster-safe.
const READ_HEADER = `
local function header(rec)
  local head = '${RECORD_VERSION}|'
  if not rec or string.sub(rec, 1, #head) ~= head then return '', nil end
  local a = string.find(rec, '|', #head + 1, true)
  if not a then return '', nil end
  local b = string.find(rec, '|', a + 1, true)
  return string.sub(rec, #head + 1, a - 1), tonumber(string.sub(rec, a + 1, (b or 0) - 1))
end
local function store(rec, px)
  if px == '' then redis.call('SET', KEYS[1], rec) else redis.call('SET', KEYS[1], rec, 'PX', px) end
  return 1
end
`;

/** A load's write-back: ARGV = generation seen ("" = none), record, px. Writes only if the generation is unchanged. */
const CAS = luaScript(`${READ_HEADER}
local gen = header(redis.call('GET', KEYS[1]))
if gen ~= ARGV[1] then return 0 end
return store(ARGV[2], ARGV[3])
`);

/** A set or remove: ARGV = record, px, its write time. Writes unless the stored record was written later. */
const LWW = luaScript(`${READ_HEADER}
local _, born = header(redis.call('GET', KEYS[1]))
if born and born > tonumber(ARGV[3]) then return 0 end
return store(ARGV[1], ARGV[2])
`);

/** Milliseconds for PX: a positive integer, or undefined for "no expiry". */
function px(ttlMs: number): number | undefined {
  return ttlMs === Infinity ? undefined : Math.max(1, Math.ceil(ttlMs));
}

/**
 * L2 on Redis, Valkey or Redis Cluster. Every key is a plain string holding one layercache record.
 * Reads are GET (batched into MGET within a tick on a standalone ioredis client). Writes are
 * one-key Lua scripts: a load's write-back compares the record's generation, a set or remove its
 * write time (see `L2Store.set`).
 */
export class RedisStore implements L2Store {
  readonly resilience: L2Resilience;
  readonly #url: string | undefined;
  #driver: RedisDriver | undefined;
  #opening: Promise<RedisDriver> | undefined;

  constructor(options: RedisStoreOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/redis: RedisStore needs options: { client } or { url }");
    for (const k of Object.keys(options)) if (!KNOWN.has(k)) throw optionError(k, `is not a RedisStore option (known: ${[...KNOWN].join(", ")})`);
    if ((options.client === undefined) === (options.url === undefined)) throw optionError("client", "or `url` must be given (exactly one of them)");
    if (options.client !== undefined) this.#driver = driverFor(options.client);
    else if (typeof options.url !== "string") throw optionError("url", "must be a redis:// URL");
    this.#url = options.url;
    const cb = options.circuitBreaker;
    if (cb !== undefined && (cb === null || typeof cb !== "object")) throw optionError("circuitBreaker", "must be { threshold?, cooldown? }");
    const threshold = cb?.threshold ?? 3;
    if (!Number.isInteger(threshold) || threshold < 0) throw optionError("circuitBreaker.threshold", "must be a non-negative integer");
    this.resilience = {
      timeoutMs: options.timeout === undefined ? 1000 : parseDuration("timeout", options.timeout, false),
      breakerThreshold: threshold,
      breakerCooldownMs: cb?.cooldown === undefined ? 5000 : parseDuration("circuitBreaker.cooldown", cb.cooldown, false),
    };
  }

  async connect(): Promise<void> {
    const d = await this.#ready();
    await d.open();
  }

  async get(key: string): Promise<string | null> {
    return (this.#driver ?? (await this.#ready())).get(key);
  }

  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    const d = this.#driver ?? (await this.#ready());
    const p = px(ttlMs);
    const ms = p === undefined ? "" : String(p);
    if (ifGeneration !== undefined) return (await d.eval(CAS, [key], [ifGeneration, record, ms])) === 1;
    return (await d.eval(LWW, [key], [record, ms, String(bornOf(record))])) === 1;
  }

  async close(): Promise<void> {
    // A client the user passed in is theirs to close.
    if (this.#url !== undefined && this.#driver !== undefined) await this.#driver.quit();
  }

  #ready(): Promise<RedisDriver> {
    if (this.#driver) return Promise.resolve(this.#driver);
    return (this.#opening ??= driverForUrl(this.#url!).then((d) => (this.#driver = d)));
  }
}
