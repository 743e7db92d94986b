import { describe, expect, test } from "vitest";
import { LayerCache } from "../src/index.js";
import { L1Partition, type SlotOwner } from "../src/l1/partition.js";

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

describe("L1 partition owner table (issue 7)", () => {
  type Tracked = SlotOwner & { events: string[] };
  const tracked = (): Tracked => {
    const o: Tracked = {
      slots: new Map(),
      ownerId: -1,
      events: [],
      occupied: () => void o.events.push(`occupied:${o.ownerId}`),
      vacated: () => void o.events.push(`vacated:${o.ownerId}`),
    };
    return o;
  };

  test("owner ids are reused: 10 000 owners passing through a partition of 100 entries never get an id above 100", () => {
    const p = new L1Partition(100, undefined);
    let highest = 0;
    for (let i = 0; i < 10_000; i++) {
      const o = owner();
      o.ownerId = -1;
      p.write(o, "k", i, times(), 0);
      highest = Math.max(highest, o.ownerId);
    }
    expect(highest).toBeLessThanOrEqual(100); // grew to 9 999 before the fix
    expect(p.owners).toBe(100);
    expect(p.size).toBe(100);
  });

  test("an owner is adopted when it gets its first slot and released (told) when its last slot goes", () => {
    const p = new L1Partition(2, undefined);
    const a = tracked();
    const b = tracked();
    p.write(a, "a1", 1, times(), 0);
    expect(a.events).toEqual(["occupied:-1"]);
    expect(a.ownerId).toBe(0);
    p.write(a, "a2", 2, times(), 0);
    p.delete(a, "a1");
    expect(a.events).toEqual(["occupied:-1"]); // one slot left
    p.write(b, "b1", 1, times(), 0);
    expect(b.ownerId).toBe(1);
    // Eviction of a's last slot releases a, and tells it.
    p.write(b, "b2", 2, times(), 0);
    expect(a.slots.size).toBe(0);
    expect(a.events).toEqual(["occupied:-1", "vacated:-1"]);
    expect(a.ownerId).toBe(-1);
    expect(p.owners).toBe(1);
    // a comes back: it takes the free id again.
    p.write(a, "a3", 3, times(), 0);
    expect(a.ownerId).toBe(0);
    expect(p.owners).toBe(2);
    // clearOwner and delete release too.
    expect(p.clearOwner(b)).toBe(1);
    expect(b.events).toEqual(["occupied:-1", "vacated:-1"]);
    p.delete(a, "a3");
    expect(a.events.at(-1)).toBe("vacated:-1");
    expect(p.owners).toBe(0);
    expect(p.size).toBe(0);
  });

  test("an owner whose own last entry is evicted to make room for its new entry is not released", () => {
    const p = new L1Partition(1, undefined);
    const a = tracked();
    p.write(a, "x", 1, times(), 0);
    p.write(a, "y", 2, times(), 0);
    expect(a.events).toEqual(["occupied:-1"]);
    expect([...a.slots.keys()]).toEqual(["y"]);
    expect(p.owners).toBe(1);
  });

  test("an entry too large on its own drops the old value and releases an owner left empty", () => {
    const p = new L1Partition(10, 100);
    const a = tracked();
    p.write(a, "k", 1, times(), 10);
    expect(p.write(a, "k", 2, times(), 101)).toBe(-1);
    expect(a.events).toEqual(["occupied:-1", "vacated:-1"]);
    expect(p.owners).toBe(0);
  });

  test("random writes, deletes and clears over many owners keep owners, slots and ids consistent", () => {
    const p = new L1Partition(20, 500);
    const owners = Array.from({ length: 60 }, tracked);
    let seed = 7;
    const rnd = (n: number) => Math.floor(((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * n);
    for (let step = 0; step < 20_000; step++) {
      const o = owners[rnd(owners.length)]!;
      const key = `k${rnd(5)}`;
      const op = rnd(10);
      if (op < 7) p.write(o, key, step, times(), rnd(60));
      else if (op < 9) p.delete(o, key);
      else p.clearOwner(o);
      if (step % 97 !== 0) continue;
      let total = 0;
      for (const x of owners) {
        total += x.slots.size;
        expect(x.ownerId >= 0).toBe(x.slots.size > 0);
        for (const [k, idx] of x.slots) {
          expect(p.keys[idx]).toBe(k);
          if (p.ownerIds !== undefined) expect(p.ownerIds[idx]).toBe(x.ownerId);
        }
      }
      expect(p.size).toBe(total);
      expect(p.owners).toBe(owners.filter((x) => x.slots.size > 0).length);
      expect(p.bytes).toBeLessThanOrEqual(500);
    }
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
