import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, type LoadManyContext } from "../src/index.js";
import { MemoryStore } from "../src/l2/memory.js";
import { deferred, flush } from "./support/helpers.js";

/** A MemoryStore that counts its calls (it has getMany). */
class CountingStore extends MemoryStore {
  gets = 0;
  getManys = 0;
  override get(key: string) {
    this.gets++;
    return super.get(key);
  }
  override getMany(keys: string[]) {
    this.getManys++;
    return super.getMany(keys);
  }
}

function pair() {
  const clock = new FakeClock(1_000_000);
  const store = new CountingStore({ clock });
  const bus = new MemoryBus();
  const a = new LayerCache({ clock, l2: store, bus });
  const b = new LayerCache({ clock, l2: store, bus });
  return { clock, store, a, b };
}

/** A loadMany that records its calls and returns `v:<key>` for each key, as a Map or an array. */
function recorder(shape: "map" | "array" = "map") {
  const calls: string[][] = [];
  const fn = async (keys: string[]) => {
    calls.push([...keys]);
    return shape === "map" ? new Map(keys.map((k) => [k, `v:${k}`])) : keys.map((k) => `v:${k}`);
  };
  return { fn, calls };
}

/** A cache with distributedLock whose lease of "o1" (a compare-and-set write on an empty record) ends when `late` is resolved. */
function lateLease() {
  const late = deferred<void>();
  class LateLease extends MemoryStore {
    override async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
      if (ifGeneration === "" && key.endsWith("o1")) await late.promise;
      return super.set(key, record, ttlMs, ifGeneration);
    }
  }
  const clock = new FakeClock(1_000_000);
  const a = new LayerCache({ clock, l2: new LateLease({ clock }), distributedLock: true });
  return { clock, a, late };
}

describe("bulk operations (SPEC 9)", () => {
  test("getOrSetMany: L1 hits, then one L2 read, then ONE loadMany call for the rest", async () => {
    const { store, a, b } = pair();
    await a.set("k1", "l1-and-l2");
    await b.set("k2", "in-l2"); // a's L1 does not hold it (b's set told a to drop any copy)
    const { fn, calls } = recorder();
    const before = store.getManys + store.gets;
    const values = await a.getOrSetMany(["k1", "k2", "k3", "k4"], fn);
    expect(values).toEqual(["l1-and-l2", "in-l2", "v:k3", "v:k4"]);
    expect(calls).toEqual([["k3", "k4"]]);
    expect(store.getManys + store.gets - before).toBe(1); // one multi-key read for k2, k3, k4
    expect(await b.getOrSetMany(["k3", "k4"], fn)).toEqual(["v:k3", "v:k4"]); // from L2 now
    expect(calls).toHaveLength(1);
  });

  test("an array result in key order works too; a wrong-length array is a TypeError for those keys", async () => {
    const { a } = pair();
    const { fn } = recorder("array");
    expect(await a.getOrSetMany(["x", "y"], fn)).toEqual(["v:x", "v:y"]);
    await expect(a.getOrSetMany(["p", "q"], async () => ["only one"])).rejects.toThrow(TypeError);
    expect(await a.getOrSetMany(["p"], fn)).toEqual(["v:p"]);
  });

  test("overlapping concurrent callers: keys in flight are joined, each key loaded once", async () => {
    const { a } = pair();
    const gate = deferred<void>();
    const calls: string[][] = [];
    const slow = async (keys: string[]) => {
      calls.push([...keys]);
      await gate.promise;
      return new Map(keys.map((k) => [k, `v:${k}`]));
    };
    const p1 = a.getOrSetMany(["a", "b", "c"], slow);
    await flush();
    const p2 = a.getOrSetMany(["b", "c", "d"], slow);
    const p3 = a.getOrSet("a", async () => "single");
    await flush();
    gate.resolve();
    expect(await p1).toEqual(["v:a", "v:b", "v:c"]);
    expect(await p2).toEqual(["v:b", "v:c", "v:d"]);
    expect(await p3).toBe("v:a");
    expect(calls).toEqual([["a", "b", "c"], ["d"]]);
  });

  test("fail-safe per key; a key left out of the Map is returned undefined and not cached; duplicates share a load", async () => {
    const { clock, a } = pair();
    await a.set("old", "kept", { ttl: "1s", failSafe: "1m" });
    clock.advance(2_000);
    const failing = async (): Promise<Map<string, string>> => {
      throw new Error("source down");
    };
    expect(await a.getOrSetMany(["old"], failing)).toEqual(["kept"]);
    await expect(a.getOrSetMany(["old", "none"], failing)).rejects.toThrow("source down");
    const partial = async (keys: string[]) => new Map(keys.filter((k) => k !== "gap").map((k) => [k, k]));
    expect(await a.getOrSetMany(["x", "gap", "x"], partial)).toEqual(["x", undefined, "x"]);
    expect(await a.get("gap")).toBeUndefined();
  });

  test("hardTimeout is per key and aborts loadMany's signal once every key gave up", async () => {
    const { clock, a } = pair();
    let signal: AbortSignal | undefined;
    const p = a.getOrSetMany(["s1", "s2"], ({ length }, ctx) => {
      signal = ctx.signal;
      return new Promise(() => {}) as Promise<string[]>;
    }, { hardTimeout: "1s", failSafe: 0 });
    const result = p.catch((e: Error) => e.name);
    await flush();
    clock.advance(1_000);
    expect(await result).toBe("LoadTimeoutError");
    expect(signal?.aborted).toBe(true);
  });

  test("loadMany gets its keys in the caller's order, whichever key's lease is taken last", async () => {
    const { a, late } = lateLease();
    const { fn, calls } = recorder("array");
    const p = a.getOrSetMany(["o1", "o2", "o3"], fn);
    await flush();
    expect(calls).toEqual([]); // o2 and o3 hold their leases; the call waits for o1's
    late.resolve();
    expect(await p).toEqual(["v:o1", "v:o2", "v:o3"]);
    expect(calls).toEqual([["o1", "o2", "o3"]]);
    await a.close();
  });

  test("a key given up (hardTimeout) while the call waits for another key is left out of loadMany", async () => {
    const { clock, a, late } = lateLease();
    const { fn, calls } = recorder("array");
    const p = a.getOrSetMany(["o1", "o2", "o3"], fn, { hardTimeout: "1s", failSafe: 0 });
    const outcome = p.catch((e: Error) => e.name);
    await flush();
    clock.advance(1_000); // o2 and o3 called their loaders at once: given up now
    late.resolve();
    expect(await outcome).toBe("LoadTimeoutError");
    expect(calls).toEqual([["o1"]]);
    expect(await a.get("o1")).toBe("v:o1");
    expect(await a.get("o2")).toBeUndefined(); // nothing written for the keys given up
    expect(await a.get("o3")).toBeUndefined();
    await a.close();
  });

  test("close() while a getOrSetMany waits for one key's lease: loadMany is not called for the others", async () => {
    for (const order of [["o1", "o2"], ["o2", "o1"]]) {
      const { a } = lateLease(); // o1's lease never ends
      const { fn, calls } = recorder("array");
      const outcome = a.getOrSetMany(order, fn).catch((e: Error) => e.name);
      await flush();
      await a.close();
      expect(await outcome).toBe("CacheClosedError");
      expect(calls).toEqual([]);
    }
  });

  test("signalOf(key): a key's own signal aborts when that key is given up; signal when every key is", async () => {
    const { clock, a, late } = lateLease();
    let ctx: LoadManyContext | undefined;
    const p = a.getOrSetMany(["o1", "o2"], (_keys, c) => {
      ctx = c;
      return new Promise<string[]>(() => {});
    }, { hardTimeout: "1s", failSafe: 0 });
    const outcome = p.catch((e: Error) => e.name);
    await flush();
    clock.advance(600); // o2 has waited 600 ms; o1 needs the loader only now
    late.resolve();
    await flush();
    expect(ctx).toBeDefined();
    clock.advance(400); // o2 given up
    expect([ctx!.signalOf("o1").aborted, ctx!.signalOf("o2").aborted, ctx!.signal.aborted]).toEqual([false, true, false]);
    expect(ctx!.signalOf("elsewhere")).toBe(ctx!.signal);
    clock.advance(600); // o1 given up too
    expect([ctx!.signalOf("o1").aborted, ctx!.signal.aborted]).toEqual([true, true]);
    expect(await outcome).toBe("LoadTimeoutError");
    await a.close();
  });

  test("no resurrection per key: a key removed while loadMany runs is not written back", async () => {
    const { a, b } = pair();
    const gate = deferred<void>();
    const p = a.getOrSetMany(["r1", "r2"], async (keys) => {
      await gate.promise;
      return keys.map((k) => `old:${k}`);
    });
    await flush();
    await b.remove("r1");
    gate.resolve();
    expect(await p).toEqual(["old:r1", "old:r2"]);
    expect(await a.get("r1")).toBeUndefined();
    expect(await b.get("r1")).toBeUndefined();
    expect(await b.get("r2")).toBe("old:r2");
  });

  test("getMany, setMany, removeMany", async () => {
    const { store, a, b } = pair();
    await a.setMany([
      ["m1", 1],
      ["m2", 2, { tags: ["t"] }],
      ["m3", null],
    ]);
    const before = store.getManys + store.gets;
    expect(await b.getMany(["m1", "m2", "m3", "none"])).toEqual([1, 2, null, undefined]);
    expect(store.getManys + store.gets - before).toBeLessThanOrEqual(2); // one batch (+ the tag check)
    await b.removeByTag("t");
    expect(await a.getMany(["m1", "m2"])).toEqual([1, undefined]);
    await b.removeMany(["m1", "m3"]);
    expect(await a.getMany(["m1", "m3"])).toEqual([undefined, undefined]);
    await expect(a.setMany([["ok", 1], ["bad", undefined]])).rejects.toThrow(TypeError);
    expect(await a.get("ok")).toBeUndefined(); // checked before anything was written
    await expect(a.getMany([""])).rejects.toThrow(TypeError);
    await expect(a.removeMany("k" as never)).rejects.toThrow(TypeError);
    await expect(a.getOrSetMany(["k"], undefined as never)).rejects.toThrow(TypeError);
  });
});

describe("cachedBatch (SPEC 9)", () => {
  test("calls of one tick go to one loadMany; removeCached and cacheKey", async () => {
    const { a, b } = pair();
    const calls: number[][] = [];
    const users = a.cachedBatch(async (ids: number[]) => {
      calls.push([...ids]);
      return ids.map((id) => ({ id }));
    }, { key: (id) => `user:${id}` });
    const [u1, u2, u1again] = await Promise.all([users(1), users(2), users(1)]);
    expect([u1, u2, u1again]).toEqual([{ id: 1 }, { id: 2 }, { id: 1 }]);
    expect(calls).toEqual([[1, 2]]);
    expect(users.cacheKey(7)).toBe("user:7");
    expect(await b.get("user:2")).toEqual({ id: 2 });
    await users.removeCached(2);
    expect(await b.get("user:2")).toBeUndefined();
    expect(await users(2)).toEqual({ id: 2 });
    expect(calls).toEqual([[1, 2], [2]]);
  });

  test("a Map by argument; derived keys from the function's name; bad options are TypeErrors", async () => {
    const cache = new LayerCache();
    const byName = cache.cachedBatch(async function loadThings(ids: string[]) {
      return new Map(ids.map((id) => [id, id.toUpperCase()]));
    });
    expect(await Promise.all([byName("a"), byName("b")])).toEqual(["A", "B"]);
    expect(byName.cacheKey("a")).toBe('loadThings:["a"]');
    expect(() => cache.cachedBatch(async (x: string[]) => x)).toThrow(/"name"/);
    expect(() => cache.cachedBatch(async (x: string[]) => x, { name: "n", tags: (() => []) as never })).toThrow(/"tags"/);
  });
});
