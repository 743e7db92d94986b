import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { Cluster, Redis } from "ioredis";
import { LayerCache } from "../../src/index.js";
import { RecordError } from "../../src/shared/errors.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import type { L2Store } from "../../src/l2/contract.js";
import { CLIENT_KINDS, clusterForTests, closedAfterAll, type ClusterKind, PATIENT, rawClientClosedAfterAll, uniquePrefix, wire } from "../support/redis-clients.js";
import { MapStore } from "../support/map-store.js";

/**
 * A Redis key of another type (a hash, a list ...) under a layercache key is one bad record, not a
 * failing backend: it reads as a corrupt record (a miss, replaced, `l2Corrupt`), a load's write-back
 * replaces it, and it never counts toward the L2 circuit breaker — so writes of other keys keep
 * reaching Redis and peers keep seeing them.
 */

const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);

/** Everything a cache reports about L2, for the assertions below. */
function watch(cache: LayerCache) {
  const seen = { corrupt: [] as string[], errors: [] as unknown[], opens: 0 };
  cache.on("l2Corrupt", (e) => seen.corrupt.push(e.key));
  cache.on("l2Error", (e) => seen.errors.push(e.error));
  cache.on("l2CircuitOpen", () => seen.opens++);
  return seen;
}

/** Replaces whatever is under `key` with a hash, as another application sharing the server might. */
async function foreignHash(redis: Redis | Cluster, key: string): Promise<void> {
  await redis.del(key);
  await redis.hset(key, "f", "v");
}

describe.each(CLIENT_KINDS)("a foreign key type under a layercache key, with %s", (kind) => {
  const open = closedAfterAll();

  async function pair() {
    const prefix = uniquePrefix();
    const wa = await wire(kind, url);
    const wb = await wire(kind, url);
    open.wirings.push(wa, wb);
    // The default breaker (3 failures): three reads of one bad key used to open it.
    const a = new LayerCache({ prefix, l2: wa.store, bus: wa.bus });
    const b = new LayerCache({ prefix, l2: wb.store, bus: wb.bus });
    open.caches.push(a, b);
    await Promise.all([a.ready(), b.ready()]);
    return { a, b, prefix };
  }

  test("single reads: a miss or the loader's value, reported as corrupt, the hash replaced; the breaker stays closed", async () => {
    const { a, b, prefix } = await pair();
    const seen = watch(a);
    const bad = `${prefix}::bad`;
    for (let i = 0; i < 5; i++) {
      await foreignHash(raw, bad);
      expect(await a.get("bad")).toBeUndefined();
      expect(["string", "none"]).toContain(await raw.type(bad));
    }
    for (let i = 0; i < 5; i++) {
      await foreignHash(raw, bad);
      a.removeLocal("bad");
      expect(await a.getOrSet("bad", async () => `loaded${i}`)).toBe(`loaded${i}`);
      expect(await raw.type(bad)).toBe("string");
      b.removeLocal("bad");
      expect(await b.get("bad")).toBe(`loaded${i}`); // the write-back reached L2
    }
    expect(seen.corrupt).toEqual(Array(10).fill("bad"));
    expect(seen.errors).toEqual([]);
    expect(seen.opens).toBe(0);
    expect(a.stats()).toMatchObject({ l2Errors: 0, l2CircuitOpens: 0, l2ShortCircuits: 0, l2Corrupt: 10 });

    // Writes of other keys still reach Redis, so the peer reads them from L2.
    await a.set("other", { n: 1 });
    expect(await raw.exists(`${prefix}::other`)).toBe(1);
    expect(await b.get("other")).toEqual({ n: 1 });
  });

  test("reads batched in one tick: the foreign key is a miss, its write-back replaces it, nothing counts as a failure", async () => {
    const { a, b, prefix } = await pair();
    const seen = watch(a);
    const keys = ["f1", "n1", "f2", "n2", "f3"];
    for (let round = 0; round < 4; round++) {
      for (const k of keys) {
        a.removeLocal(k);
        if (k.startsWith("f")) await foreignHash(raw, `${prefix}::${k}`);
        else await raw.del(`${prefix}::${k}`);
      }
      expect(await Promise.all(keys.map((k) => a.get(k)))).toEqual(keys.map(() => undefined));
      const values = await Promise.all(keys.map((k) => a.getOrSet(k, async () => `${k}:${round}`)));
      expect(values).toEqual(keys.map((k) => `${k}:${round}`));
      for (const k of keys) expect(await raw.type(`${prefix}::${k}`)).toBe("string");
      for (const k of keys) b.removeLocal(k);
      expect(await Promise.all(keys.map((k) => b.get(k)))).toEqual(values);
    }
    expect(seen.errors).toEqual([]);
    expect(seen.opens).toBe(0);
    expect(a.stats()).toMatchObject({ l2Errors: 0, l2CircuitOpens: 0, l2ShortCircuits: 0 });
    await a.set("other", 2);
    expect(await b.get("other")).toBe(2);
  });
});

describe("the store itself", () => {
  test("RedisStore.get rejects with a RecordError for a key of another type; getMany reads it as a miss", async () => {
    const prefix = uniquePrefix();
    const store = new RedisStore({ url, ...PATIENT });
    try {
      await raw.hset(`${prefix}:h`, "f", "v");
      await raw.set(`${prefix}:s`, "text");
      const error = await store.get(`${prefix}:h`).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RecordError);
      expect((error as RecordError).key).toBe(`${prefix}:h`);
      expect((error as Error).message).toMatch(/WRONGTYPE/);
      expect(await store.getMany([`${prefix}:s`, `${prefix}:h`, `${prefix}:none`])).toEqual(["text", null, null]);
      // A write-back expecting "no layercache record" replaces the foreign key; a set always does.
      expect(await store.set(`${prefix}:h`, "LC1|g1|1|-", 60_000, "x")).toBe(false);
      expect(await raw.type(`${prefix}:h`)).toBe("hash");
      expect(await store.set(`${prefix}:h`, "LC1|g1|1|-", 60_000, "")).toBe(true);
      expect(await raw.get(`${prefix}:h`)).toBe("LC1|g1|1|-");
      await raw.rpush(`${prefix}:l`, "x");
      expect(await store.set(`${prefix}:l`, "LC1|g2|1|-", 60_000)).toBe(true);
      expect(await raw.get(`${prefix}:l`)).toBe("LC1|g2|1|-");
    } finally {
      await store.close();
    }
  });
});

describe("Redis Cluster (reads of a batch are one GET per key)", () => {
  const shared = clusterForTests();
  const closers = shared.closers;
  const client = (kind: ClusterKind): Promise<unknown> => shared.client(kind);

  test.each(["ioredis-cluster", "node-redis-cluster"] as const)("%s: one foreign key in a batch is corrupt, the other keys of the batch are read", async (kind) => {
    const prefix = uniquePrefix();
    const rawCluster = new Cluster(shared.cluster.startupNodes);
    closers.push(() => rawCluster.quit());
    const c = await client(kind);
    const a = new LayerCache({ prefix, l2: new RedisStore({ client: c, ...PATIENT }), bus: new RedisBus({ client: c, ...PATIENT }) });
    closers.push(() => a.close());
    await a.ready();
    const seen = watch(a);
    const keys = ["f1", "n1", "f2", "n2", "n3"];
    for (let round = 0; round < 4; round++) {
      for (const k of keys) {
        a.removeLocal(k);
        if (k.startsWith("f")) await foreignHash(rawCluster, `${prefix}::${k}`);
        else await rawCluster.set(`${prefix}::${k}`, `LC1|g${round}|${Date.now()}|600000|0|0|"${k}"`);
      }
      expect(await Promise.all(keys.map((k) => a.get(k)))).toEqual(keys.map((k) => (k.startsWith("f") ? undefined : k)));
      for (const k of keys) expect(await rawCluster.type(`${prefix}::${k}`)).toBe("string");
    }
    expect(seen.corrupt.sort()).toEqual(Array(4).fill(["f1", "f2"]).flat().sort());
    expect(seen.errors).toEqual([]);
    expect(seen.opens).toBe(0);
  });
});

/** The store contract: any store may report a problem of one record with a RecordError. */
describe("RecordError from a custom store", () => {
  class PickyStore extends MapStore implements L2Store {
    readonly badReads = new Set<string>();
    readonly badWrites = new Set<string>();
    /** getMany rejects as a whole (a store that cannot tell which key) instead of placing the error. */
    wholeBatch = false;
    manyCalls = 0;
    override async get(key: string): Promise<string | undefined> {
      if (this.badReads.has(key)) throw new RecordError("unreadable record", { key });
      return super.get(key);
    }
    async getMany(keys: string[]): Promise<(string | null | undefined | RecordError)[]> {
      this.manyCalls++;
      if (this.wholeBatch && keys.some((k) => this.badReads.has(k))) throw new RecordError("a record of this batch is unreadable");
      return Promise.all(keys.map((k) => this.get(k).catch((e: unknown) => e as RecordError)));
    }
    override async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
      // Tombstones always fit; values of a bad key never do.
      if (this.badWrites.has(key) && !record.endsWith("|-")) throw new RecordError("record too large for this store", { key });
      return super.set(key, record, ttlMs, ifGeneration);
    }
  }

  function picky() {
    const store = new PickyStore();
    const cache = new LayerCache({ prefix: "p", l2: store });
    return { store, cache, seen: watch(cache) };
  }

  test.each([false, true])("reads (getMany rejecting as a whole: %s): a corrupt record, replaced; the other keys of the batch are read; the breaker stays closed", async (wholeBatch) => {
    const { store, cache, seen } = picky();
    store.wholeBatch = wholeBatch;
    try {
      await cache.set("good", 1);
      cache.removeLocal("good");
      for (let i = 0; i < 5; i++) {
        store.badReads.add("p::bad");
        expect(await cache.get("bad")).toBeUndefined(); // alone: get
        expect(store.data.get("p::bad")?.record).toMatch(/\|-$/); // replaced by a tombstone
        store.badReads.add("p::bad");
        cache.removeLocal("good");
        expect(await Promise.all([cache.get("bad"), cache.get("good")])).toEqual([undefined, 1]); // batched: getMany
      }
      expect(store.manyCalls).toBe(5);
      expect(seen.corrupt).toEqual(Array(10).fill("bad"));
      expect(seen.errors).toEqual([]);
      expect(seen.opens).toBe(0);
      expect(cache.stats()).toMatchObject({ l2Errors: 0, l2Corrupt: 10, l2ShortCircuits: 0 });
    } finally {
      await cache.close();
    }
  });

  test("writes: that record fails (reported, its old value removed), nothing else; the breaker stays closed", async () => {
    const { store, cache, seen } = picky();
    try {
      await cache.set("big", "old");
      store.badWrites.add("p::big");
      for (let i = 0; i < 5; i++) {
        await cache.set("big", `new${i}`); // the set resolves: L1 has the value
        expect(await cache.get("big")).toBe(`new${i}`);
        expect(store.data.get("p::big")?.record).toMatch(/\|-$/); // never the old value
        cache.removeLocal("big");
        expect(await cache.getOrSet("big", async () => "loaded")).toBe("loaded"); // the write-back fails: L1 only
        expect(store.data.get("p::big")?.record).toMatch(/\|-$/);
        cache.removeLocal("big");
      }
      expect(seen.errors).toHaveLength(10);
      expect(seen.errors.every((e) => e instanceof RecordError)).toBe(true);
      expect(seen.opens).toBe(0);
      expect(cache.stats()).toMatchObject({ l2Errors: 10, l2CircuitOpens: 0, l2ShortCircuits: 0, l2Pending: 0 });
      await cache.set("small", 1);
      expect(store.data.get("p::small")?.record).toMatch(/\|1$/);
    } finally {
      await cache.close();
    }
  });
});
