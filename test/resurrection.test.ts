import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus } from "../src/index.js";
import { deferred, flush } from "./support/helpers.js";

describe("no resurrection (SPEC 4.4), one instance", () => {
  test.each([
    ["remove", (c: LayerCache) => c.remove("k")],
    ["removeLocal", async (c: LayerCache) => c.removeLocal("k")],
    ["clear", (c: LayerCache) => c.clear()],
    ["clearMemory", async (c: LayerCache) => c.clearMemory()],
    ["a newer set", (c: LayerCache) => c.set("k", "newer")],
  ])("a load that started before %s never writes its result", async (name, invalidate) => {
    const cache = new LayerCache();
    const gate = deferred<string>();
    const events: unknown[] = [];
    cache.on("loadDiscarded", (e) => events.push(e.reason));
    const p = cache.getOrSet("k", () => gate.promise);
    await flush();
    await invalidate(cache);
    gate.resolve("old");
    expect(await p).toBe("old"); // the caller that asked still gets its answer
    expect(await cache.get("k")).toBe(name === "a newer set" ? "newer" : undefined);
    expect(events).toEqual(["invalidated"]);
  });

  test("a caller arriving after the invalidation does not join the old load", async () => {
    const cache = new LayerCache();
    const gate = deferred<string>();
    const p1 = cache.getOrSet("k", () => gate.promise);
    await flush();
    await cache.remove("k");
    const p2 = cache.getOrSet("k", async () => "after-remove");
    gate.resolve("before-remove");
    expect(await p1).toBe("before-remove");
    expect(await p2).toBe("after-remove");
    expect(await cache.get("k")).toBe("after-remove");
  });

  test("scope clear stops loads in that scope and its nested scopes, not elsewhere", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    const admins = users.scope("admins");
    const posts = cache.scope("posts");
    const gates = [deferred<string>(), deferred<string>(), deferred<string>()];
    const ps = [users.getOrSet("a", () => gates[0]!.promise), admins.getOrSet("a", () => gates[1]!.promise), posts.getOrSet("a", () => gates[2]!.promise)];
    await flush();
    await users.clear();
    gates.forEach((g, i) => g.resolve(`v${i}`));
    await Promise.all(ps);
    expect(await users.get("a")).toBeUndefined();
    expect(await admins.get("a")).toBeUndefined();
    expect(await posts.get("a")).toBe("v2");
  });

  test("removeCached called inside the cached function itself keeps the result out of the cache", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const getUser = cache.cached(
      async (id: string) => {
        calls++;
        await getUser.removeCached(id);
        return { id, calls };
      },
      { key: (id) => `user:${id}` },
    );
    expect(await getUser("1")).toEqual({ id: "1", calls: 1 });
    expect(await getUser("1")).toEqual({ id: "1", calls: 2 });
    expect(await cache.get("user:1")).toBeUndefined();
  });

  test("a background refresh that started before a remove does not write back", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(1_500);
    const gate = deferred<string>();
    expect(await cache.getOrSet("k", () => gate.promise)).toBe("v1");
    await cache.set("k", "set-after-refresh-started");
    gate.resolve("refreshed");
    await flush();
    expect(await cache.get("k")).toBe("set-after-refresh-started");
  });
});

describe("no resurrection across instances on a MemoryBus", () => {
  test.each([
    ["remove", (c: LayerCache) => c.remove("k")],
    ["clear", (c: LayerCache) => c.clear()],
    ["set", (c: LayerCache) => c.set("k", "from-a")],
  ])("a load on B that started before %s on A does not write to B's L1", async (_name, invalidate) => {
    const bus = new MemoryBus();
    const a = new LayerCache({ bus });
    const b = new LayerCache({ bus });
    await a.ready();
    const gate = deferred<string>();
    const p = b.getOrSet("k", () => gate.promise);
    await flush();
    await invalidate(a);
    gate.resolve("stale-load");
    expect(await p).toBe("stale-load");
    expect(await b.get("k")).toBeUndefined();
  });

  test("scope clear on A stops B's loads in that scope", async () => {
    const bus = new MemoryBus();
    const a = new LayerCache({ bus });
    const b = new LayerCache({ bus });
    await a.ready();
    const gate = deferred<string>();
    const p = b.scope("users").getOrSet("k", () => gate.promise);
    await flush();
    await a.scope("users").clear();
    gate.resolve("stale");
    await p;
    expect(await b.scope("users").get("k")).toBeUndefined();
  });
});
