import { describe, expect, test } from "vitest";
import { CacheClosedError, FakeClock, LayerCache, MemoryBus } from "../src/index.js";
import { L1Partition, type SlotOwner } from "../src/l1/partition.js";
import { MapStore } from "./support/map-store.js";
import { deferred, flush } from "./support/helpers.js";

/** Behaviours found by a cold review of the engine; each test failed before its fix. */
describe("engine regressions", () => {
  test("refreshAhead with jitter and an L2 calls the loader (a refresh does not adopt its own L2 copy)", async () => {
    const clock = new FakeClock(1_000_000);
    const store = new MapStore(() => clock.now());
    const cache = new LayerCache({ clock, l2: store, ttl: "10s", jitter: "1s", refreshAhead: 0.5 });
    for (let run = 0; run < 20; run++) {
      let calls = 0;
      const key = `k${run}`;
      await cache.getOrSet(key, async () => "v0");
      clock.advance(6_000);
      await cache.getOrSet(key, async () => `v${++calls}`);
      await flush();
      expect(calls).toBe(1);
      clock.advance(60_000);
    }
  });

  test("softTimeout uses a stale value even when failSafe is off, and the loader receives it", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", failSafe: 0, softTimeout: 100, maxStale: "10s" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(1_500);
    const slow = deferred<string>();
    let stale: unknown;
    const p = cache.getOrSet("k", (ctx) => {
      stale = ctx.stale;
      return slow.promise;
    });
    await flush();
    clock.advance(100);
    expect(await p).toBe("v1");
    expect(stale).toBe("v1");
    slow.resolve("v2");
  });

  test("a soft timeout never serves a value removed while the loader ran", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", softTimeout: 100 });
    await cache.getOrSet("k", async () => "secret-v0");
    clock.advance(2_000);
    const slow = deferred<string>();
    let answer: unknown;
    const p = cache.getOrSet("k", () => slow.promise).then((v) => (answer = v));
    await flush();
    await cache.remove("k");
    clock.advance(100);
    await flush();
    expect(answer).toBeUndefined();
    slow.resolve("v1");
    await p;
    expect(answer).toBe("v1");
  });

  test("a load that saw no record cannot write back after a peer's short-lived set expired in L2", async () => {
    const clock = new FakeClock(0);
    const store = new MapStore(() => clock.now());
    const a = new LayerCache({ clock, l2: store, ttl: "1s", failSafe: 0 });
    const b = new LayerCache({ clock, l2: store, ttl: "1s", failSafe: 0 });
    const slow = deferred<string>();
    const p = a.getOrSet("k", () => slow.promise, { hardTimeout: 0 });
    await flush();
    await b.set("k", "set-by-b");
    clock.advance(3_000); // b's value is past every window
    slow.resolve("computed-before-set");
    await p;
    b.clearMemory();
    expect(await b.getOrSet("k", async () => "reloaded")).toBe("reloaded");
  });

  test("set with a zero lifetime still replaces the old value in L2", async () => {
    const clock = new FakeClock(0);
    const store = new MapStore(() => clock.now());
    const a = new LayerCache({ clock, l2: store });
    await a.set("k", "v1");
    await a.set("k", "v2", { ttl: 0, failSafe: 0 });
    a.clearMemory();
    expect(await a.get("k")).toBeUndefined();
  });

  test("a getOrSet answered from L2 is a hit (layer l2), not a miss", async () => {
    const store = new MapStore();
    const a = new LayerCache({ l2: store });
    const b = new LayerCache({ l2: store });
    await a.set("k", 1);
    const events: string[] = [];
    b.on("hit", (e) => events.push(`hit:${e.layer}`));
    b.on("miss", () => events.push("miss"));
    expect(await b.getOrSet("k", async () => 2)).toBe(1);
    expect(events).toEqual(["hit:l2"]);
    expect(b.stats()).toMatchObject({ hits: 1, l2Hits: 1, misses: 0 });
  });

  test("a background refresh that fails counts only the stale hit that was served", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(1_500);
    expect(await cache.getOrSet("k", async () => Promise.reject(new Error("down")))).toBe("v1");
    await flush();
    expect(cache.stats()).toMatchObject({ staleHits: 1, failSafeHits: 0, refreshFailures: 1 });
  });

  test("maxBytes never evicts the entry being written", () => {
    const p = new L1Partition(100, 100);
    const o: SlotOwner = { slots: new Map(), ownerId: 0 };
    p.adopt(o);
    const t = { born: 0, fresh: Infinity, maxStale: 0, failSafe: 0 };
    for (const k of ["a", "b", "c"]) p.write(o, k, k, t, 30);
    for (const k of ["a", "b", "c"]) p.flags[o.slots.get(k)!] = 1;
    p.write(o, "d", "d", t, 30);
    expect(o.slots.has("d")).toBe(true);
    expect(p.bytes).toBeLessThanOrEqual(100);
    // Growing an existing entry evicts others, not itself.
    p.write(o, "d", "d", t, 90);
    expect(o.slots.has("d")).toBe(true);
    expect(p.bytes).toBeLessThanOrEqual(100);
  });

  test("a refresh invalidated while it read L2 does not call the loader", async () => {
    const clock = new FakeClock(0);
    const store = new MapStore(() => clock.now());
    const gate = deferred<void>();
    const slowStore = Object.assign(Object.create(store), {
      get: async (k: string) => {
        await gate.promise;
        return store.get(k);
      },
      set: store.set.bind(store),
    });
    const cache = new LayerCache({ clock, l2: slowStore, ttl: "1s", refresh: "background" });
    await cache.set("k", "v1");
    clock.advance(1_500);
    let calls = 0;
    expect(await cache.getOrSet("k", async () => ++calls)).toBe("v1");
    cache.removeLocal("k");
    gate.resolve();
    await flush();
    expect(calls).toBe(0);
    expect(cache.stats().refreshing).toBe(0);
  });

  test("close resolves when a loader never settles, and its caller gets CacheClosedError", async () => {
    const cache = new LayerCache({ hardTimeout: 0, bus: new MemoryBus() });
    const p = cache.getOrSet("k", () => new Promise<string>(() => {}));
    await flush();
    await cache.close();
    await expect(p).rejects.toBeInstanceOf(CacheClosedError);
  }, 15_000);
});
