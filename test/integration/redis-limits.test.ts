import { describe, expect, inject, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import type { BusLimits, L2Limits } from "../../src/backend.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { PATIENT, closedAfterAll, eventually, rawClientClosedAfterAll, uniquePrefix } from "../support/redis-clients.js";

/**
 * Limits on a real redis-server. Redis's own limits (512 MB keys, values and messages) are out of
 * reach of any key or value the cache accepts, so the mapping is exercised with subclasses that
 * declare smaller ones — as a backend with tighter limits (Memcached, PostgreSQL NOTIFY) does.
 */
const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);

class TightRedisStore extends RedisStore {
  override readonly limits: L2Limits = { maxKeyBytes: 100, maxRecordBytes: 2_000 };
}

class TightRedisBus extends RedisBus {
  override readonly limits: BusLimits = { maxMessageBytes: 600 };
}

test("RedisStore and RedisBus declare Redis's own limits", () => {
  expect(new RedisStore({ url }).limits).toEqual({ maxKeyBytes: 512 * 1024 * 1024, maxRecordBytes: 512 * 1024 * 1024 });
  expect(new RedisBus({ url }).limits).toEqual({ maxMessageBytes: 512 * 1024 * 1024 });
});

describe("with declared limits smaller than Redis's", () => {
  const open = closedAfterAll();

  async function pair() {
    const prefix = uniquePrefix();
    const make = () => new LayerCache({ prefix, l2: new TightRedisStore({ url, ...PATIENT }), bus: new TightRedisBus({ url, ...PATIENT }) });
    const a = make();
    const b = make();
    open.caches.push(a, b);
    await Promise.all([a.ready(), b.ready()]);
    const problems: string[] = [];
    for (const c of [a, b]) {
      c.on("l2Error", (e) => problems.push(`l2Error ${e.operation}`));
      c.on("l2CircuitOpen", () => problems.push("l2CircuitOpen"));
      c.on("busError", (e) => problems.push(`busError ${e.operation}`));
    }
    return { a, b, prefix, problems };
  }

  test("a long key is stored under its hashed form, read by the peer, and removed", async () => {
    const { a, b, prefix, problems } = await pair();
    const users = (c: LayerCache) => c.scope("users");
    const key = `user:${"x".repeat(300)}:profile`;
    await users(a).set(key, { n: 1 });
    await users(a).set(`${key}2`, { n: 2 });
    const keys = await raw.keys(`${prefix}:*`);
    expect(keys).toHaveLength(2);
    for (const k of keys) {
      expect(Buffer.byteLength(k)).toBeLessThanOrEqual(100);
      expect(k).toMatch(new RegExp(`^${prefix}:users%#[A-Za-z0-9_-]{43}:user:x+$`));
    }
    expect(await users(b).get(key)).toEqual({ n: 1 });
    expect(await users(b).get(`${key}2`)).toEqual({ n: 2 });
    await users(a).remove(key);
    await eventually(async () => (await users(b).get(key)) === undefined);
    expect(await users(b).get(`${key}2`)).toEqual({ n: 2 });
    // The record under the hashed key is a tombstone now.
    const values = await Promise.all(keys.map((k) => raw.get(k)));
    expect(values.filter((v) => v?.endsWith("|-"))).toHaveLength(1);
    expect(problems).toEqual([]);
  });

  test("a record over the declared limit stays in L1, the old record is replaced by a tombstone, the breaker stays closed", async () => {
    const { a, b, prefix, problems } = await pair();
    const tooLarge: unknown[] = [];
    a.on("valueTooLarge", (e) => tooLarge.push(e));
    await a.set("k", "small");
    expect(await b.get("k")).toBe("small");
    for (let i = 0; i < 5; i++) await a.set("k", "x".repeat(5_000) + i);
    expect(await a.get("k")).toBe(`${"x".repeat(5_000)}4`);
    await eventually(async () => (await b.get("k")) === undefined);
    expect(await raw.get(`${prefix}::k`)).toMatch(/\|-$/);
    expect(tooLarge).toHaveLength(5);
    expect(tooLarge[0]).toMatchObject({ layer: "l2", limit: 2_000 - 256 });
    expect(a.stats().l2CircuitOpens).toBe(0);
    expect(problems).toEqual([]);
  });

  test("a key too long for one bus message reaches the peer as a clear of its scope", async () => {
    const { a, b, problems } = await pair();
    const key = "k".repeat(700);
    await b.scope("s").set(key, 1); // b's L1 and L2
    await b.scope("t").set("other", 2);
    b.scope("s").removeLocal(key);
    expect(await b.scope("s").get(key)).toBe(1); // back in b's L1 from L2
    const cleared: string[] = [];
    b.on("peerInvalidation", (e) => cleared.push(`${e.op} ${e.scope}`));
    await a.scope("s").remove(key);
    await eventually(() => cleared.length > 0);
    expect(cleared).toEqual(["clear s"]);
    expect(await b.scope("s").get(key)).toBeUndefined();
    expect(await b.scope("t").get("other")).toBe(2);
    expect(problems).toEqual([]);
  });
});
