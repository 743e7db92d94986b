import { describe, expect, test } from "vitest";
import { LayerCache } from "../src/index.js";
import { L1Partition, type SlotOwner } from "../src/memory/l1.js";

const times = (fresh = Infinity) => ({ born: 0, fresh, maxStale: 0, failSafe: 0 });
const owner = (): SlotOwner => ({ slots: new Map(), ownerId: 0 });

describe("L1 partition (SIEVE)", () => {
  test("never holds more than maxEntries", () => {
    const p = new L1Partition(100, undefined);
    const o = owner();
    p.adopt(o);
    for (let i = 0; i < 10_000; i++) p.write(o, `k${i}`, i, times(), 0);
    expect(p.size).toBe(100);
    expect(o.slots.size).toBe(100);
    expect(p.evictions).toBe(9_900);
  });

  test("entries read since the hand passed survive eviction (hot set kept)", () => {
    const p = new L1Partition(10, undefined);
    const o = owner();
    p.adopt(o);
    for (let i = 0; i < 10; i++) p.write(o, `hot${i}`, i, times(), 0);
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 5; i++) p.flags[o.slots.get(`hot${i}`)!]! |= 1; // read the first five
      p.write(o, `cold${round}`, round, times(), 0);
    }
    for (let i = 0; i < 5; i++) expect(o.slots.has(`hot${i}`)).toBe(true);
  });

  test("delete, re-insert and slot reuse keep the structure consistent", () => {
    const p = new L1Partition(50, undefined);
    const o = owner();
    p.adopt(o);
    for (let n = 0; n < 2_000; n++) {
      const k = `k${(n * 7919) % 123}`;
      if (n % 3 === 0) p.delete(o, k);
      else p.write(o, k, n, times(), 0);
      expect(p.size).toBe(o.slots.size);
      expect(p.size).toBeLessThanOrEqual(50);
    }
    for (const [k, idx] of o.slots) expect(p.keys[idx]).toBe(k);
  });

  test("maxBytes bounds the sum of entry sizes; an entry larger than maxBytes is not stored", () => {
    const p = new L1Partition(1000, 100);
    const o = owner();
    p.adopt(o);
    for (let i = 0; i < 20; i++) p.write(o, `k${i}`, i, times(), 10);
    expect(p.bytes).toBeLessThanOrEqual(100);
    expect(p.size).toBe(10);
    expect(p.write(o, "huge", 0, times(), 101)).toBe(-1);
    expect(o.slots.has("huge")).toBe(false);
  });
});

describe("L1 bounds on the cache and on scopes", () => {
  test("maxEntries on the cache", async () => {
    const cache = new LayerCache({ maxEntries: 5 });
    for (let i = 0; i < 20; i++) await cache.set(`k${i}`, i);
    expect(cache.stats().entries).toBe(5);
  });

  test("default maxEntries is 10 000", async () => {
    const cache = new LayerCache();
    for (let i = 0; i < 10_050; i++) await cache.set(`k${i}`, i);
    expect(cache.stats().entries).toBe(10_000);
  });

  test("a scope with its own maxEntries has its own partition", async () => {
    const cache = new LayerCache({ maxEntries: 100 });
    const small = cache.scope("small", { maxEntries: 3 });
    for (let i = 0; i < 10; i++) await small.set(`k${i}`, i);
    for (let i = 0; i < 50; i++) await cache.set(`k${i}`, i);
    expect(cache.stats().entries).toBe(53);
    // Nested scopes without their own bound share the partition of the scope above.
    const nested = small.scope("nested");
    for (let i = 0; i < 10; i++) await nested.set(`n${i}`, i);
    expect(cache.stats().entries).toBe(53);
  });

  test("maxBytes measures values by their serialized length", async () => {
    const cache = new LayerCache({ maxBytes: 1000 });
    const tooLarge: unknown[] = [];
    cache.on("valueTooLarge", (e) => tooLarge.push(e));
    for (let i = 0; i < 50; i++) await cache.set(`k${i}`, "x".repeat(98)); // 100 bytes of JSON each
    expect(cache.stats().bytes).toBeLessThanOrEqual(1000);
    expect(cache.stats().entries).toBe(10);
    await cache.set("big", "y".repeat(2000));
    expect(await cache.get("big")).toBeUndefined();
    expect(tooLarge).toHaveLength(1);
  });

  test("declaring a bound for a scope already in use moves it to its own partition", async () => {
    const cache = new LayerCache({ maxEntries: 1000 });
    await cache.scope("s").set("a", 1);
    const bounded = cache.scope("s", { maxEntries: 2 });
    for (let i = 0; i < 5; i++) await bounded.set(`k${i}`, i);
    expect(cache.stats().entries).toBe(2);
    expect(() => cache.scope("s", { maxEntries: 3 })).toThrow(/"maxEntries"/);
    expect(() => cache.scope("s", { maxEntries: 2 })).not.toThrow();
  });
});
