import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, type CacheScope } from "../src/index.js";
import { namespaceOf } from "../src/api/scope.js";
import { deferred, flush } from "./support/helpers.js";
import { MapStore } from "./support/map-store.js";

/**
 * Issue 7: per-scope state is reclaimed once a scope holds nothing, and a view (or cached
 * function) that outlives its scope's state keeps working on the one namespace of its path.
 */

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** Full collections, with turns of the event loop between them for FinalizationRegistry callbacks. */
async function collect(rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const root = (cache: LayerCache) => namespaceOf(cache);

/** Attached scopes, counted twice: the tree's own count, and a walk from the root (they must agree). */
function attached(cache: LayerCache): number {
  const r = root(cache);
  expect([...r.subtree()].length - 1).toBe(r.attachedScopes);
  return r.attachedScopes;
}

describe("scopes that hold nothing are reclaimed", () => {
  test("100 000 scopes set once with maxEntries 100: heap growth stays small, ~100 scopes stay attached", async () => {
    const cache = new LayerCache({ maxEntries: 100 });
    await cache.scope("warm-up").set("k", 0); // first-use allocations out of the measurement
    await collect();
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < 100_000; i++) await cache.scope(`tenant-${i}`).set("k", i);
    await collect();
    const growth = process.memoryUsage().heapUsed - before;
    expect(cache.stats().entries).toBe(100);
    expect(attached(cache)).toBeLessThanOrEqual(100);
    // ~59 MB before the fix.
    expect(growth).toBeLessThan(10 * 1024 * 1024);
    // The survivors are the last 100 tenants, readable as ever.
    expect(await cache.scope("tenant-99999").get("k")).toBe(99_999);
    expect(await cache.scope("tenant-0").get("k")).toBeUndefined();
  }, 60_000);

  test("a scope is detached when its last entry goes (eviction, remove, removeLocal, clear), its parent with it", async () => {
    const cache = new LayerCache({ maxEntries: 10 });
    const a = cache.scope("a");
    const b = a.scope("b");
    expect(attached(cache)).toBe(0); // views alone attach nothing
    await b.set("k", 1);
    expect(attached(cache)).toBe(2);
    await a.set("k", 1);
    await b.remove("k");
    expect(attached(cache)).toBe(1); // a still holds an entry
    b.removeLocal("nothing-here");
    await a.scope("b").set("k2", 2);
    a.removeLocal("k");
    expect(attached(cache)).toBe(2);
    await a.clear();
    expect(attached(cache)).toBe(0);
    await b.set("k", 1);
    b.clearMemory();
    expect(attached(cache)).toBe(0);
    expect(cache.stats().entries).toBe(0);
  });

  test("a view kept from before its scope was reclaimed still works, and sees what other views see", async () => {
    const cache = new LayerCache({ maxEntries: 3 });
    const kept = cache.scope("tenant").scope("orders");
    await kept.set("k", "v1");
    // Three root entries evict the scope's only entry: the scope and its parent are reclaimed.
    for (const k of ["x", "y", "z"]) await cache.set(k, k);
    expect(attached(cache)).toBe(0);

    expect(await kept.get("k")).toBeUndefined();
    await kept.set("k", "v2");
    expect(attached(cache)).toBe(2);
    // A view created after reclamation is a view of the same namespace.
    const later = cache.scope("tenant").scope("orders");
    expect(namespaceOf(later)).toBe(namespaceOf(kept));
    expect(await later.get("k")).toBe("v2");
    await later.set("k2", "w");
    expect(await kept.get("k2")).toBe("w");
    await kept.remove("k2");
    expect(await later.get("k2")).toBeUndefined();
    // clear() of the parent reaches entries written through the re-attached view.
    await cache.scope("tenant").clear();
    expect(await kept.get("k")).toBeUndefined();
    expect(await later.get("k")).toBeUndefined();
    await kept.set("k", "v3");
    await cache.clear();
    expect(await later.get("k")).toBeUndefined();
    expect(attached(cache)).toBe(0);
  });

  test("a cached function created on a reclaimed scope keeps working there", async () => {
    const cache = new LayerCache({ maxEntries: 2 });
    const kept = cache.scope("users");
    let calls = 0;
    const getUser = kept.cached(async function getUser(id: string) {
      return `${id}#${++calls}`;
    });
    expect(await getUser("1")).toBe("1#1");
    await cache.set("x", 1);
    await cache.set("y", 2); // evicts users' entry: the scope is reclaimed
    expect(attached(cache)).toBe(0);
    expect(await getUser("1")).toBe("1#2");
    expect(await getUser("1")).toBe("1#2");
    expect(await cache.scope("users").get(getUser.cacheKey("1"))).toBe("1#2");
    await cache.scope("users").remove(getUser.cacheKey("1"));
    expect(await getUser("1")).toBe("1#3");
    await getUser.removeCached("1");
    expect(await kept.get(getUser.cacheKey("1"))).toBeUndefined();
    expect(attached(cache)).toBe(0);
    expect(await getUser("1")).toBe("1#4");
    await cache.scope("users").clear();
    expect(await getUser("1")).toBe("1#5");
  });

  test("single flight holds across views made before and after a reclamation", async () => {
    const cache = new LayerCache({ maxEntries: 1 });
    const before = cache.scope("s");
    await before.set("old", 1);
    await cache.set("evictor", 1);
    expect(attached(cache)).toBe(0);
    const gate = deferred<string>();
    let loads = 0;
    const first = before.getOrSet("k", () => (loads++, gate.promise));
    expect(attached(cache)).toBe(1); // the flight holds the scope
    // Evictions elsewhere do not reclaim a scope with a load in flight.
    await cache.set("a", 1);
    await cache.set("b", 1);
    const second = cache.scope("s").getOrSet("k", () => (loads++, "other"));
    gate.resolve("loaded");
    expect(await first).toBe("loaded");
    expect(await second).toBe("loaded");
    expect(loads).toBe(1);
    expect(await before.get("k")).toBe("loaded");
  });

  test("a peer's invalidation reaches entries written through a re-attached view", async () => {
    const bus = new MemoryBus();
    const a = new LayerCache({ bus, maxEntries: 1 });
    const b = new LayerCache({ bus });
    const kept = a.scope("s");
    await kept.set("k", 1);
    await a.set("evictor", 1);
    expect(attached(a)).toBe(0);
    await kept.set("k", 2);
    await b.scope("s").remove("k");
    expect(await kept.get("k")).toBeUndefined();
    await kept.set("k", 3);
    await b.scope("s").clear();
    expect(await kept.get("k")).toBeUndefined();
    await a.close();
    await b.close();
  });

  test("with an L2: a reclaimed scope reads its own records again, and an L2 read in flight holds the scope", async () => {
    const store = new MapStore();
    const cache = new LayerCache({ l2: store, maxEntries: 1 });
    const kept = cache.scope("s");
    await kept.set("k", "v");
    await cache.set("evictor", 1);
    expect(attached(cache)).toBe(0);
    const reading = kept.get("k");
    expect(attached(cache)).toBeLessThanOrEqual(1);
    expect(await reading).toBe("v"); // same L2 prefix: the record written before reclamation
    expect(await cache.scope("s").get("k")).toBe("v");
    await cache.close();
  });

  test("loads that leave nothing behind cannot pile up attached scopes (periodic sweep)", async () => {
    const cache = new LayerCache();
    for (let i = 0; i < 5_000; i++) {
      // A loader returning undefined caches nothing; the scope only held the flight.
      await cache.scope(`t${i}`).getOrSet("k", () => undefined as unknown as number);
    }
    expect(attached(cache)).toBeLessThanOrEqual(512);
    expect(cache.stats().entries).toBe(0);
  });

  test("a live cooldown keeps its scope; an expired one does not", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background", maxEntries: 1, refreshCooldown: "30s" });
    const s = cache.scope("s");
    await s.getOrSet("k", () => "v1");
    clock.advance(1_500);
    expect(await s.getOrSet("k", () => Promise.reject(new Error("down")))).toBe("v1"); // stale; the refresh fails
    await flush();
    expect(cache.stats().refreshFailures).toBe(1);
    await cache.set("evictor", 1); // the scope's entry goes, its cooldown stays
    expect(attached(cache)).toBe(1);
    clock.advance(31_000);
    namespaceOf(s).settle();
    expect(attached(cache)).toBe(0);
  });
});

describe("the engine holding a reclaimed scope", () => {
  test("an L2 read that a peer's set fenced and detached still holds its scope until it ends, and fills L1 there", async () => {
    const inner = new MapStore();
    let gate: Promise<void> | undefined;
    const store = {
      get: async (key: string) => {
        if (gate) await gate;
        return inner.get(key);
      },
      set: (key: string, record: string, ttlMs: number, ifGeneration?: string) => inner.set(key, record, ttlMs, ifGeneration),
    };
    const bus = new MemoryBus();
    const a = new LayerCache({ l2: store, bus });
    const b = new LayerCache({ l2: store, bus });
    await a.ready();
    await b.ready();
    const kept = a.scope("s");
    const open = deferred<void>();
    gate = open.promise;
    const reading = kept.get("k"); // an L2 read in flight holds the scope
    expect(attached(a)).toBe(1);
    await b.scope("s").set("k", "new"); // fences that read (it may still take this very write) and detaches it
    namespaceOf(kept).settle(); // what the engine's call site after `peeks.delete` does
    // Still running, it keeps the scope reachable: a peer's removeByTag must find (and fence) it.
    expect(attached(a)).toBe(1);
    gate = undefined;
    open.resolve();
    expect(await reading).toBe("new");
    // The fill went into the one namespace of the path, attached again and reachable by peers.
    expect(attached(a)).toBe(1);
    expect(a.stats().entries).toBe(1);
    await b.scope("s").remove("k");
    expect(a.stats().entries).toBe(0);
    await a.close();
    await b.close();
  });

  test("operations issued before the cache is open run on the scope every later view sees", async () => {
    const inner = new MapStore();
    const connected = deferred<void>();
    const store = {
      connect: () => connected.promise,
      get: (key: string) => inner.get(key),
      set: (key: string, record: string, ttlMs: number, ifGeneration?: string) => inner.set(key, record, ttlMs, ifGeneration),
    };
    const cache = new LayerCache({ l2: store });
    const early = cache.scope("s").set("k", 1);
    const later = cache.scope("s");
    connected.resolve();
    await early;
    expect(await later.get("k")).toBe(1);
    await cache.clear();
    expect(cache.stats().entries).toBe(0);
    await cache.close();
  });

  test("random operations over many views: every entry stays reachable from the root", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, maxEntries: 6, ttl: "10s", refresh: "background", refreshCooldown: "5s", hardTimeout: 0 });
    const r = root(cache);
    let seed = 20_240_611;
    const rnd = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return Math.floor((seed / 2 ** 31) * n); // the high bits: an LCG's low bits repeat quickly
    };
    const names = ["a", "b", "c", "d"];
    const views: CacheScope[] = [cache];
    const gates: ReturnType<typeof deferred<string>>[] = [];
    const pending: Promise<unknown>[] = [];
    const keep = (p: Promise<unknown>) => pending.push(p.catch(() => undefined));
    const highWater: number[] = [];
    const check = () => {
      const nodes = [...r.subtree()];
      expect(nodes.length - 1).toBe(r.attachedScopes);
      let slots = 0;
      for (const ns of nodes) {
        slots += ns.slots.size;
        if (ns.parent) expect(ns.parent.children?.get(ns.name)).toBe(ns);
      }
      // No entry is held by a scope the root cannot reach (a "lost" scope).
      expect(slots).toBe(cache.stats().entries);
      for (const v of views) {
        const ns = namespaceOf(v);
        const found = r.find(v.path);
        if (found !== undefined) expect(found).toBe(ns); // one namespace per path
        if (ns.slots.size > 0 || (ns.flights?.size ?? 0) > 0) expect(found).toBe(ns);
      }
    };
    for (let step = 0; step < 6_000; step++) {
      const v = views[rnd(views.length)]!;
      const key = `k${rnd(8)}`;
      switch (rnd(14)) {
        case 0: {
          let s: CacheScope = cache;
          for (let d = 0, depth = 1 + rnd(3); d < depth; d++) s = s.scope(names[rnd(names.length)]!);
          views.push(s);
          break;
        }
        case 1:
          if (views.length > 1) views.splice(1 + rnd(views.length - 1), 1);
          break;
        case 2:
          keep(v.set(key, step));
          break;
        case 3:
          keep(v.get(key));
          break;
        case 4:
          keep(v.getOrSet(key, () => step));
          break;
        case 5: {
          const g = deferred<string>();
          gates.push(g);
          keep(v.getOrSet(key, () => g.promise));
          break;
        }
        case 6:
          keep(v.getOrSet(key, () => Promise.reject(new Error("down"))));
          break;
        case 7:
          keep(v.remove(key));
          break;
        case 8:
          if (rnd(12) === 0) keep(v.clear());
          else v.removeLocal(key);
          break;
        case 9:
          if (rnd(4) === 0) v.clearMemory();
          // Scopes that only ever held a flight pile up until a sweep (without the engine's call sites).
          else for (let i = 0; i < 4; i++) keep(cache.scope(`u${step}`).scope(`${i}`).getOrSet("k", () => undefined as unknown as number));
          break;
        case 10:
          clock.advance(rnd(8_000));
          break;
        case 11:
          if (gates.length > 0) gates.splice(rnd(gates.length), 1)[0]!.resolve(`g${step}`);
          break;
        case 12:
          namespaceOf(v).settle(); // the engine's call sites (after a flight or an L2 read ends)
          break;
        case 13:
          keep(v.cached(async function f(x: string) { return `${x}${step}`; })(key));
          break;
      }
      highWater.push(r.attachedScopes);
      if (step % 40 === 0) {
        await flush(1);
        check();
      }
    }
    for (const g of gates) g.resolve("late");
    await Promise.all(pending);
    await flush();
    check();
    await cache.clear();
    expect(cache.stats().entries).toBe(0);
    for (const ns of r.subtree()) ns.settle();
    for (const v of views) namespaceOf(v).settle();
    expect(attached(cache)).toBe(0);
    expect(cache.stats().evictions).toBeGreaterThan(20);
    // Scopes left attached with nothing (no settle() where a flight ended) are swept: never more than ~2 × 256.
    expect(Math.max(...highWater)).toBeLessThanOrEqual(512);
  });
});

describe("bounds of reclaimed scopes", () => {
  test("a bound lives with the scope while a view holds it; evictions stay counted", async () => {
    const cache = new LayerCache({ maxEntries: 100 });
    const small = cache.scope("small", { maxEntries: 2 });
    for (let i = 0; i < 5; i++) await small.set(`k${i}`, i);
    expect(cache.stats().evictions).toBe(3);
    await small.clear();
    expect(attached(cache)).toBe(0);
    expect(cache.stats().evictions).toBe(3); // the partition left with its scope; its count did not
    expect(() => cache.scope("small", { maxEntries: 3 })).toThrow(/"maxEntries"/);
    // Still bounded when it comes back.
    for (let i = 0; i < 5; i++) await cache.scope("small").set(`k${i}`, i);
    expect(cache.stats().entries).toBe(2);
    expect(cache.stats().evictions).toBe(6);
  });

  test("declaring a bound on a reclaimed scope moves its nested views along", async () => {
    const cache = new LayerCache({ maxEntries: 100 });
    const nested = cache.scope("p").scope("n");
    await nested.set("a", 1);
    await nested.remove("a");
    expect(attached(cache)).toBe(0);
    cache.scope("p", { maxEntries: 2 });
    for (let i = 0; i < 5; i++) await nested.set(`k${i}`, i);
    expect(cache.stats().entries).toBe(2);
    for (let i = 0; i < 5; i++) await cache.set(`r${i}`, i);
    expect(cache.stats().entries).toBe(7);
  });

  test("once nothing refers to a reclaimed scope, its bound is forgotten", async () => {
    const cache = new LayerCache({ maxEntries: 100 });
    await (async () => {
      const s = cache.scope("gone", { maxEntries: 2 });
      await s.set("k", 1);
      await s.remove("k");
    })();
    let accepted = false;
    for (let round = 0; round < 10 && !accepted; round++) {
      await collect(2);
      try {
        cache.scope("gone", { maxEntries: 3 });
        accepted = true;
      } catch {
        // still referenced somewhere (a WeakRef kept during the job): another round
      }
    }
    expect(accepted).toBe(true);
  });
});

describe("views are unaffected by reclamation", () => {
  test("views of one path share one namespace however it was reached", async () => {
    const cache = new LayerCache();
    const views: CacheScope[] = [cache.scope("a").scope("b"), cache.scope("a").scope("b")];
    await views[0]!.set("k", 1);
    views.push(cache.scope("a").scope("b"));
    await views[0]!.remove("k");
    views.push(cache.scope("a").scope("b"));
    for (const v of views) expect(namespaceOf(v)).toBe(namespaceOf(views[0]!));
    expect(views[0]!.path).toEqual(["a", "b"]);
  });
});
