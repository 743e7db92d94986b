import { describe, expect, test } from "vitest";
import { LayerCache, MemoryBus, RecordError } from "../src/index.js";
import { FakeClock, MemoryStore } from "../src/testing.js";

/** What MemoryStore adds to the contract (which test/contracts/memory.test.ts runs on it). */
describe("MemoryStore", () => {
  test("two caches sharing one store share L2, expire on the injected clock, and close in any order", async () => {
    const clock = new FakeClock();
    const store = new MemoryStore({ clock });
    const bus = new MemoryBus();
    const a = new LayerCache({ clock, l2: store, bus, ttl: "1m", failSafe: 0 });
    const b = new LayerCache({ clock, l2: store, bus, ttl: "1m", failSafe: 0 });
    let loads = 0;
    expect(await a.getOrSet("k", async () => `v${++loads}`)).toBe("v1");
    expect(await b.getOrSet("k", async () => `v${++loads}`)).toBe("v1");
    expect([...store.records.keys()]).toEqual(["layercache::k"]);
    await a.close();
    clock.advance(60_000 + 60_000); // past the ttl and the 60 s a record is kept for its generation
    expect(await store.get("layercache::k")).toBeUndefined();
    expect(await b.getOrSet("k", async () => `v${++loads}`)).toBe("v2");
    await b.close();
    expect(await store.get("layercache::k")).toBeDefined(); // still usable after both closed
  });

  test("limits: a larger key or record is refused with a RecordError; the cache keeps such a value in L1 only", async () => {
    const store = new MemoryStore({ limits: { maxKeyBytes: 20, maxRecordBytes: 200 } });
    expect(store.limits).toEqual({ maxKeyBytes: 20, maxRecordBytes: 200 });
    await expect(store.set("k".repeat(21), "x", 1000)).rejects.toBeInstanceOf(RecordError);
    await expect(store.set("é".repeat(11), "x", 1000)).rejects.toThrow(/22 bytes is over limits.maxKeyBytes \(20\)/);
    await expect(store.set("k", "x".repeat(201), 1000)).rejects.toThrow(/201 bytes is over limits.maxRecordBytes \(200\)/);
    expect(await store.set("k".repeat(20), "x".repeat(200), 1000)).toBe(true);
    expect(new MemoryStore({ limits: { maxRecordBytes: 10 } }).limits?.maxKeyBytes).toBeUndefined();

    // Under a cache (whose limits must leave room for a record header: at least 64 / 1024 bytes), a
    // value over the stated record limit stays in L1.
    const bounded = new MemoryStore({ limits: { maxKeyBytes: 64, maxRecordBytes: 1024 } });
    const cache = new LayerCache({ l2: bounded, prefix: "p" });
    await cache.set("big", "y".repeat(3000));
    expect(await cache.get("big")).toBe("y".repeat(3000));
    expect(cache.stats()).toMatchObject({ l2CircuitOpens: 0 });
    await cache.close();
  });

  test("options are checked", () => {
    expect(() => new MemoryStore({ clok: {} } as never)).toThrow(/"clok" is not a MemoryStore option/);
    expect(() => new MemoryStore({ clock: {} as never })).toThrow(/"clock" must have a now\(\) method/);
    expect(() => new MemoryStore({ limits: { maxKeyBytes: 0 } })).toThrow(/"limits.maxKeyBytes" must be a positive integer/);
    expect(() => new MemoryStore({ limits: { maxRecordBytes: 1.5 } })).toThrow(/"limits.maxRecordBytes" must be a positive integer/);
    expect(() => new MemoryStore({ limits: { maxBytes: 1 } as never })).toThrow(/"limits.maxBytes" is not a limits option/);
  });

  test("expired records nobody reads again do not pile up", async () => {
    const clock = new FakeClock();
    const store = new MemoryStore({ clock });
    for (let i = 0; i < 10_000; i++) {
      await store.set(`k${i}`, "x", 10);
      clock.advance(1);
    }
    expect(store.records.size).toBeLessThan(2_100);
  });
});
