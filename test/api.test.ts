import { describe, expect, test, vi } from "vitest";
import { CacheClosedError, FakeClock, LayerCache, MemoryBus } from "../src/index.js";
import { counter } from "./support/helpers.js";

describe("basic operations (L1 only)", () => {
  test("get returns undefined on a miss and the value after set", async () => {
    const cache = new LayerCache();
    expect(await cache.get("k")).toBeUndefined();
    await cache.set("k", { a: 1 });
    expect(await cache.get("k")).toEqual({ a: 1 });
  });

  test("getOrSet loads once and then serves the cached value", async () => {
    const cache = new LayerCache();
    const load = counter();
    expect(await cache.getOrSet("k", load)).toBe("v1");
    expect(await cache.getOrSet("k", load)).toBe("v1");
    expect(load.calls).toBe(1);
  });

  test("a synchronous loader works too", async () => {
    const cache = new LayerCache();
    expect(await cache.getOrSet("k", () => 42)).toBe(42);
  });

  test("the loader receives an AbortSignal and the stale value", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s" });
    const seen: unknown[] = [];
    await cache.getOrSet("k", (ctx) => {
      seen.push(ctx.signal instanceof AbortSignal, ctx.stale);
      return "one";
    });
    clock.advance(2_000);
    await cache.getOrSet("k", (ctx) => {
      seen.push(ctx.stale);
      return "two";
    });
    expect(seen).toEqual([true, undefined, "one"]);
  });

  test("null is a normal cacheable value", async () => {
    const cache = new LayerCache();
    const load = vi.fn(async () => null);
    expect(await cache.getOrSet("k", load)).toBeNull();
    expect(await cache.getOrSet("k", load)).toBeNull();
    expect(load).toHaveBeenCalledTimes(1);
    await cache.set("n", null);
    expect(await cache.get("n")).toBeNull();
  });

  test("a loader returning undefined: the value is returned, not cached", async () => {
    const cache = new LayerCache();
    const load = vi.fn(async () => undefined);
    expect(await cache.getOrSet("k", load)).toBeUndefined();
    expect(await cache.getOrSet("k", load)).toBeUndefined();
    expect(load).toHaveBeenCalledTimes(2);
    expect(cache.stats().entries).toBe(0);
  });

  test("set(key, undefined) is a TypeError and changes nothing", async () => {
    const cache = new LayerCache();
    await cache.set("k", 1);
    await expect(cache.set("k", undefined)).rejects.toThrow(TypeError);
    expect(await cache.get("k")).toBe(1);
  });

  test("ttl: fresh until t0 + ttl, a miss from then on", async () => {
    const clock = new FakeClock(1_000);
    const cache = new LayerCache({ clock, ttl: "1s" });
    await cache.set("k", "v");
    clock.advance(999);
    expect(await cache.get("k")).toBe("v");
    clock.advance(1);
    expect(await cache.get("k")).toBeUndefined();
  });

  test("per-call ttl on set", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1h" });
    await cache.set("k", "v", { ttl: 10 });
    clock.advance(10);
    expect(await cache.get("k")).toBeUndefined();
  });

  test("jitter adds between 0 and jitter to the lifetime", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: 1_000, jitter: 1_000 });
    for (let i = 0; i < 50; i++) await cache.set(`k${i}`, i);
    clock.advance(999);
    for (let i = 0; i < 50; i++) expect(await cache.get(`k${i}`)).toBe(i);
    clock.advance(1_001); // t = 2000: every lifetime is < 2000
    for (let i = 0; i < 50; i++) expect(await cache.get(`k${i}`)).toBeUndefined();
  });

  test("remove deletes; removeLocal and clearMemory are local", async () => {
    const cache = new LayerCache();
    await cache.set("a", 1);
    await cache.set("b", 2);
    await cache.remove("a");
    expect(await cache.get("a")).toBeUndefined();
    cache.removeLocal("b");
    expect(await cache.get("b")).toBeUndefined();
    await cache.set("c", 3);
    cache.clearMemory();
    expect(await cache.get("c")).toBeUndefined();
  });

  test("clear empties the cache, scopes included", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    await cache.set("a", 1);
    await users.set("a", 2);
    await cache.clear();
    expect(await cache.get("a")).toBeUndefined();
    expect(await users.get("a")).toBeUndefined();
  });
});

describe("bad input (SPEC 6)", () => {
  const badKeys: unknown[] = [undefined, null, 1, {}, [], "", Symbol("s")];
  test.each(badKeys.map((k) => [k]))("key %s is a TypeError on every method", async (key) => {
    const cache = new LayerCache();
    await expect(cache.get(key as string)).rejects.toThrow(TypeError);
    await expect(cache.getOrSet(key as string, () => 1)).rejects.toThrow(TypeError);
    await expect(cache.set(key as string, 1)).rejects.toThrow(TypeError);
    await expect(cache.remove(key as string)).rejects.toThrow(TypeError);
    expect(() => cache.removeLocal(key as string)).toThrow(TypeError);
  });

  test("a key longer than maxKeyLength is a TypeError that names the key", async () => {
    const cache = new LayerCache({ maxKeyLength: 10 });
    await expect(cache.get("x".repeat(11))).rejects.toThrow(/key "xxxxxxxxxxx" is longer than maxKeyLength \(10\)/);
    expect(await cache.getOrSet("x".repeat(10), () => 1)).toBe(1);
    const def = new LayerCache();
    await expect(def.set("k".repeat(1025), 1)).rejects.toThrow(TypeError);
    await def.set("k".repeat(1024), 1);
  });

  test("a bad call does not disturb others", async () => {
    const cache = new LayerCache();
    await cache.set("k", 1);
    await expect(cache.set("", 2)).rejects.toThrow(TypeError);
    await expect(cache.getOrSet("k2", "notafunction" as never)).rejects.toThrow(TypeError);
    expect(await cache.get("k")).toBe(1);
  });

  test("scope names must be non-empty strings", () => {
    const cache = new LayerCache();
    expect(() => cache.scope("")).toThrow(TypeError);
    expect(() => cache.scope(3 as never)).toThrow(TypeError);
  });

  test("without an L2, values the serializer could not encode are fine in L1", async () => {
    const cache = new LayerCache();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await cache.set("c", cyclic);
    expect(await cache.get("c")).toBe(cyclic);
  });
});

describe("scopes (SPEC 1.1)", () => {
  test("the same key in two scopes (and the root) are different entries", async () => {
    const cache = new LayerCache();
    const a = cache.scope("a");
    const b = cache.scope("b");
    await cache.set("k", "root");
    await a.set("k", "a");
    await b.set("k", "b");
    expect([await cache.get("k"), await a.get("k"), await b.get("k")]).toEqual(["root", "a", "b"]);
    await a.remove("k");
    expect([await cache.get("k"), await a.get("k"), await b.get("k")]).toEqual(["root", undefined, "b"]);
  });

  test("two views of one scope share entries", async () => {
    const cache = new LayerCache();
    await cache.scope("users").set("1", "ann");
    expect(await cache.scope("users").get("1")).toBe("ann");
  });

  test("scope.clear clears that scope and its nested scopes only", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    const admins = users.scope("admins");
    const posts = cache.scope("posts");
    await users.set("1", 1);
    await admins.set("1", 1);
    await posts.set("1", 1);
    await cache.set("1", 1);
    await users.clear();
    expect(await users.get("1")).toBeUndefined();
    expect(await admins.get("1")).toBeUndefined();
    expect(await posts.get("1")).toBe(1);
    expect(await cache.get("1")).toBe(1);
  });

  test("scope.clearMemory and removeLocal", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    await users.set("1", 1);
    await users.set("2", 2);
    users.removeLocal("1");
    expect(await users.get("1")).toBeUndefined();
    users.clearMemory();
    expect(await users.get("2")).toBeUndefined();
  });

  test("path", () => {
    const cache = new LayerCache();
    expect(cache.scope("a").scope("b").path).toEqual(["a", "b"]);
    expect(cache.path).toEqual([]);
  });
});

describe("events and stats (SPEC 7)", () => {
  test("hit, miss, load, counters", async () => {
    const cache = new LayerCache();
    const events: string[] = [];
    for (const e of ["hit", "miss", "load", "staleHit"] as const) cache.on(e, () => events.push(e));
    await cache.getOrSet("k", () => 1);
    await cache.getOrSet("k", () => 1);
    await cache.get("missing");
    expect(events).toEqual(["miss", "load", "hit", "miss"]);
    const s = cache.stats();
    expect(s).toMatchObject({ hits: 1, misses: 2, loads: 1, entries: 1 });
  });

  test("payloads carry key and scope", async () => {
    const cache = new LayerCache();
    const seen: unknown[] = [];
    cache.on("miss", (e) => seen.push(e));
    await cache.scope("users").scope("vip").get("7");
    expect(seen).toEqual([{ key: "7", scope: "users/vip" }]);
  });

  test("a listener that throws does not break the cache", async () => {
    const cache = new LayerCache();
    cache.on("miss", () => {
      throw new Error("listener bug");
    });
    expect(await cache.getOrSet("k", () => 1)).toBe(1);
  });

  test("off and once", async () => {
    const cache = new LayerCache();
    let n = 0;
    let m = 0;
    const l = (): void => void n++;
    cache.on("miss", l);
    cache.once("miss", () => void m++);
    await cache.get("a");
    cache.off("miss", l);
    await cache.get("b");
    expect([n, m]).toEqual([1, 1]);
  });
});

describe("lifecycle (SPEC 1.3)", () => {
  test("ready resolves; close makes later calls reject", async () => {
    const cache = new LayerCache({ bus: new MemoryBus() });
    await cache.ready();
    await cache.set("k", 1);
    await cache.close();
    await expect(cache.get("k")).rejects.toThrow(CacheClosedError);
    await expect(cache.ready()).rejects.toThrow(CacheClosedError);
    await cache.close(); // idempotent
  });

  test("await using closes the cache", async () => {
    let ref: LayerCache | undefined;
    {
      await using cache = new LayerCache();
      ref = cache;
      await cache.set("k", 1);
    }
    await expect(ref!.get("k")).rejects.toThrow(CacheClosedError);
  });

  test("close waits for a background refresh in flight", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background" });
    await cache.getOrSet("k", () => "old");
    clock.advance(1_500);
    let finished = false;
    expect(
      await cache.getOrSet("k", async () => {
        await new Promise((r) => setTimeout(r, 30));
        finished = true;
        return "new";
      }),
    ).toBe("old");
    await cache.close();
    expect(finished).toBe(true);
  });
});
