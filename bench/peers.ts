/**
 * Every library under test behind one small interface, each set up the way its documentation
 * shows (defaults unless a scenario needs a bound), plus the raw baselines.
 */
import KeyvRedis from "@keyv/redis";
import { BentoCache, bentostore } from "bentocache";
import { memoryDriver } from "bentocache/drivers/memory";
import { redisDriver } from "bentocache/drivers/redis";
import { createCache } from "cache-manager";
import { Cacheable, KeyvCacheableMemory } from "cacheable";
import { Redis } from "ioredis";
import { Keyv } from "keyv";
import { LRUCache } from "lru-cache";
import { LayerCache } from "../src/index.js";
import { RedisStore } from "../src/backends/redis/index.js";

export type Loader = () => Promise<unknown>;

export interface Peer {
  readonly name: string;
  getOrSet(key: string, loader: Loader): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  get(key: string): Promise<unknown>;
  /** The library's own cache object, for calls only some libraries have (bulk reads, scenario 9). */
  cache?: unknown;
  /** A cached function `(id) => load(id)` keyed `user:<id>`, built the library's way. */
  cached(load: (id: string) => Promise<unknown>): (id: string) => Promise<unknown>;
  close(): Promise<void>;
}

const HOUR = 3_600_000;

export function layercachePeer(o: { l1Size?: number; redis?: Redis; prefix?: string } = {}): Peer & { cache: LayerCache } {
  const cache = new LayerCache({
    ttl: "1h",
    maxEntries: o.l1Size ?? 10_000,
    prefix: o.prefix ?? "bench-lc",
    ...(o.redis ? { l2: new RedisStore({ client: o.redis }) } : {}),
  });
  return {
    name: "layercache",
    cache,
    getOrSet: (key, loader) => cache.getOrSet(key, loader),
    set: (key, value) => cache.set(key, value),
    get: (key) => cache.get(key),
    cached: (load) => cache.cached(load, { key: (id) => `user:${id}` }),
    close: () => cache.close(),
  };
}

export function bentoPeer(o: { l1Size?: number; redis?: Redis; prefix?: string } = {}): Peer {
  const store = bentostore().useL1Layer(memoryDriver({ maxItems: o.l1Size ?? 10_000 }));
  if (o.redis) store.useL2Layer(redisDriver({ connection: o.redis, prefix: o.prefix ?? "bench-bento" }));
  const bento = new BentoCache({ default: "c", stores: { c: store } });
  return {
    name: "BentoCache",
    getOrSet: (key, loader) => bento.getOrSet({ key, factory: loader, ttl: HOUR }),
    set: async (key, value) => void (await bento.set({ key, value, ttl: HOUR })),
    get: (key) => bento.get({ key }),
    cached: (load) => (id) => bento.getOrSet({ key: `user:${id}`, factory: () => load(id), ttl: HOUR }),
    close: () => bento.disconnectAll(),
  };
}

export function cacheManagerPeer(o: { l1Size?: number; redisUrl?: string; prefix?: string } = {}): Peer {
  const l1 = new Keyv({ store: new LRUCache<string, object>({ max: o.l1Size ?? 10_000 }) });
  const stores = [l1];
  if (o.redisUrl) stores.push(new Keyv({ store: new KeyvRedis(o.redisUrl), namespace: o.prefix ?? "bench-cm" }));
  const cache = createCache({ stores, ttl: HOUR });
  return {
    name: "cache-manager",
    cache,
    getOrSet: (key, loader) => cache.wrap(key, loader),
    set: async (key, value) => void (await cache.set(key, value)),
    get: (key) => cache.get(key),
    cached: (load) => (id) => cache.wrap(`user:${id}`, () => load(id)),
    close: () => cache.disconnect().then(() => undefined),
  };
}

export function cacheablePeer(o: { l1Size?: number; redisUrl?: string; prefix?: string } = {}): Peer {
  const cache = o.redisUrl
    ? new Cacheable({
        primary: new Keyv({ store: new KeyvCacheableMemory({ lruSize: o.l1Size ?? 10_000 }) }),
        secondary: new Keyv({ store: new KeyvRedis(o.redisUrl), namespace: o.prefix ?? "bench-cacheable" }),
        ttl: HOUR,
      })
    : new Cacheable({ ttl: HOUR });
  return {
    name: "cacheable",
    cache,
    getOrSet: (key, loader) => cache.getOrSet(key, loader),
    set: async (key, value) => void (await cache.set(key, value)),
    get: (key) => cache.get(key),
    cached: (load) => cache.wrap(load, { keyPrefix: "user" }),
    close: () => cache.disconnect(),
  };
}

/** lru-cache `get` (and `set` on a miss) wrapped in an async function: the floor of an async L1. */
export function lruBaseline(size = 10_000): Peer {
  const lru = new LRUCache<string, object>({ max: size });
  const getOrSet = async (key: string, loader: Loader): Promise<unknown> => {
    const v = lru.get(key);
    if (v !== undefined) return v;
    const loaded = (await loader()) as object;
    lru.set(key, loaded);
    return loaded;
  };
  return {
    name: "lru-cache (async)",
    getOrSet,
    set: async (key, value) => void lru.set(key, value as object),
    get: async (key) => lru.get(key),
    cached: (load) => (id) => getOrSet(`user:${id}`, () => load(id)),
    close: async () => {},
  };
}

/** Raw ioredis GET + JSON.parse: the floor of any L2 read. */
export function rawRedisBaseline(redis: Redis, prefix = "bench-raw"): Peer {
  return {
    name: "ioredis GET+JSON.parse",
    getOrSet: async () => {
      throw new Error("not a cache");
    },
    set: async (key, value) => void (await redis.set(`${prefix}:${key}`, JSON.stringify(value))),
    get: async (key) => {
      const s = await redis.get(`${prefix}:${key}`);
      return s === null ? undefined : JSON.parse(s);
    },
    cached: () => {
      throw new Error("not a cache");
    },
    close: async () => {},
  };
}
