import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, type CacheScope } from "../src/index.js";
import { MemoryStore } from "../src/l2/memory.js";
import type { L2Store } from "../src/l2/contract.js";
import { counter, deferred, flush } from "./support/helpers.js";

/** Instances sharing one L2 (and, unless `bus: false`, one bus), on one fake clock. */
function fleet(n: number, o: { bus?: boolean; extra?: Record<string, unknown> } = {}) {
  const clock = new FakeClock(1_000_000);
  const store = new MemoryStore({ clock });
  const bus = o.bus === false ? undefined : new MemoryBus();
  const caches = Array.from({ length: n }, () => new LayerCache({ clock, l2: store, bus, ...o.extra }));
  return { clock, store, caches };
}

describe("tags (SPEC 9)", () => {
  test("removeByTag drops tagged entries in L1, in L2 and on peers; untagged and other tags stay", async () => {
    const { caches: [a, b, c] } = fleet(3);
    await a.set("u1", "one", { tags: ["users"] });
    await a.set("u2", "two", { tags: ["users", "vip"] });
    await a.set("p1", "page", { tags: ["pages"] });
    await a.set("plain", "x");
    expect(await b.get("u1")).toBe("one"); // b holds an L1 copy now
    await a.removeByTag("users");
    for (const cache of [a, b, c]) {
      expect(await cache.get("u1")).toBeUndefined();
      expect(await cache.get("u2")).toBeUndefined();
      expect(await cache.get("p1")).toBe("page");
      expect(await cache.get("plain")).toBe("x");
      expect(await cache.has("u1")).toBe(false);
      expect(await cache.has("p1")).toBe(true);
    }
  });

  test("getOrSet and cached functions take tags (a function of the arguments, too)", async () => {
    const { caches: [a, b] } = fleet(2);
    const load = counter();
    expect(await a.getOrSet("k", load, { tags: ["t"] })).toBe("v1");
    const user = a.cached(async (id: string) => `user ${id}`, { key: (id) => `user:${id}`, tags: (id) => [`user:${id}`, "users"] });
    const fixed = a.cached(async (id: string) => `post ${id}`, { key: (id) => `post:${id}`, tags: ["posts"] });
    expect(await user("1")).toBe("user 1");
    expect(await user("2")).toBe("user 2");
    expect(await fixed("9")).toBe("post 9");
    await b.removeByTag("user:1");
    expect(await a.get("user:1")).toBeUndefined();
    expect(await a.get("user:2")).toBe("user 2");
    await b.removeByTag(["users", "posts"]);
    expect(await a.get("user:2")).toBeUndefined();
    expect(await a.get("post:9")).toBeUndefined();
    expect(await b.getOrSet("k", load, { tags: ["t"] })).toBe("v1"); // other tags untouched, read from L2
    expect(load.calls).toBe(1);
  });

  test("tags are per scope: a scope's removeByTag touches nothing elsewhere", async () => {
    const { caches: [a, b] } = fleet(2);
    const s = a.scope("s");
    await a.set("k", "root", { tags: ["t"] });
    await s.set("k", "scoped", { tags: ["t"] });
    await s.scope("n").set("k", "nested", { tags: ["t"] });
    await b.scope("s").removeByTag("t");
    expect(await s.get("k")).toBeUndefined();
    expect(await a.get("k")).toBe("root");
    expect(await s.scope("n").get("k")).toBe("nested");
    expect(await b.get("k")).toBe("root");
  });

  test("a tagged value read from L2 is checked against its tags: invalidated without a bus, it is a miss everywhere", async () => {
    const { caches: [a, b, c] } = fleet(3, { bus: false });
    await a.set("k", "old", { tags: ["t"] });
    expect(await b.get("k")).toBe("old");
    await a.removeByTag("t");
    // No bus: b's own L1 copy lives on until its ttl (as after a remove), but L2 serves it to nobody.
    expect(await c.get("k")).toBeUndefined();
    expect(await c.getOrSet("k", async () => "new", { tags: ["t"] })).toBe("new");
    expect(await a.get("k")).toBe("new");
  });

  test("a load that started before removeByTag never writes its value back (here, and on a peer)", async () => {
    for (const where of ["here", "peer"] as const) {
      const { caches: [a, b, c] } = fleet(3);
      const gate = deferred<string>();
      const p = a.getOrSet("k", () => gate.promise, { tags: ["t"] });
      await flush();
      await (where === "here" ? a : b).removeByTag("t");
      gate.resolve("before");
      expect(await p).toBe("before"); // its caller still gets it
      for (const cache of [a, b, c]) expect(await cache.get("k")).toBeUndefined();
    }
  });

  test("without a bus a peer's removeByTag during a load still keeps its value out of L2 (tag generations)", async () => {
    const { caches: [a, b, c] } = fleet(3, { bus: false });
    await a.set("other", 1, { tags: ["t"] }); // the tag has a record already
    const gate = deferred<string>();
    const p = a.getOrSet("k", () => gate.promise, { tags: ["t"] });
    await flush();
    await b.removeByTag("t");
    gate.resolve("before");
    expect(await p).toBe("before");
    expect(await c.get("k")).toBeUndefined();
    expect(await c.get("other")).toBeUndefined();
  });

  test("a tag without a record when the load started, invalidated meanwhile: the value stays out of L2", async () => {
    const { caches: [a, b, c] } = fleet(3, { bus: false });
    const gate = deferred<string>();
    const p = a.getOrSet("k", () => gate.promise, { tags: ["fresh"] });
    await flush();
    await b.removeByTag("fresh");
    gate.resolve("before");
    expect(await p).toBe("before");
    expect(await c.get("k")).toBeUndefined();
  });

  test("a background refresh running when removeByTag comes does not write its value", async () => {
    const { clock, caches: [a, b] } = fleet(2, { extra: { ttl: "10s", refresh: "background" } });
    await a.getOrSet("k", async () => "v1", { tags: ["t"] });
    clock.advance(11_000);
    const gate = deferred<string>();
    expect(await a.getOrSet("k", () => gate.promise, { tags: ["t"] })).toBe("v1"); // stale, refresh started
    await flush();
    await b.removeByTag("t");
    gate.resolve("v2-from-before");
    await flush();
    expect(await a.get("k")).toBeUndefined();
    expect(await b.get("k")).toBeUndefined();
    expect(await a.getOrSet("k", async () => "v3", { tags: ["t"] })).toBe("v3");
  });

  test("a stale or fail-safe value is not served once its tag was invalidated", async () => {
    const { clock, caches: [a, b] } = fleet(2, { extra: { ttl: "10s", failSafe: "1m" } });
    await a.getOrSet("k", async () => "v1", { tags: ["t"] });
    await b.get("k");
    await a.removeByTag("t");
    clock.advance(11_000);
    const fail = async (): Promise<string> => {
      throw new Error("down");
    };
    await expect(b.getOrSet("k", fail, { tags: ["t"] })).rejects.toThrow("down");
    await expect(a.getOrSet("k", fail, { tags: ["t"] })).rejects.toThrow("down");
  });

  test("a read a peer's set fenced and detached, still answering after a removeByTag (here or a peer's), does not fill L1 (load and get)", async () => {
    // The chaos run's `tagInvalidation` violation on Memcached (seed 226141229): B's read of k sees
    // A's set (generation X) and the tag's old generation; A's message "remove k, except X" detaches
    // it (it may still take X from L2); B's own removeByTag then found nothing in flight to fence;
    // the read's answer, arriving later, put A's value in B's L1, where B's next read found it. (The
    // same with A's removeByTag: B's scope, holding nothing but that read, was not even found.)
    for (const [how, by] of [["getOrSet", "here"], ["get", "here"], ["getOrSet", "peer"], ["get", "peer"]] as const) {
      const clock = new FakeClock(1_000_000);
      const memory = new MemoryStore({ clock });
      let answers: Promise<void> | undefined;
      let writes: Promise<void> | undefined;
      // A store that takes reads and writes at once and may answer them later (a busy server on one connection).
      const store: L2Store = {
        async get(key) {
          const later = answers;
          const text = await memory.get(key);
          await later;
          return text;
        },
        async set(key, record, ttlMs, ifGeneration) {
          const later = writes;
          const ok = await memory.set(key, record, ttlMs, ifGeneration);
          await later;
          return ok;
        },
      };
      const bus = new MemoryBus();
      const caches = [new LayerCache({ clock, l2: store, bus }), new LayerCache({ clock, l2: store, bus })];
      const [a, b] = caches.map((c) => c.scope("s")) as [CacheScope, CacheScope];
      await a.set("k", "first", { tags: ["t"] }); // the tag has a record
      const written = deferred<void>();
      writes = written.promise;
      const set = a.set("k", "old", { tags: ["t"] }); // in L2 at once; its message waits for the write's answer
      await flush();
      writes = undefined;
      let answer = deferred<void>();
      answers = answer.promise;
      const read = how === "get" ? b.get("k") : b.getOrSet("k", async () => "loaded", { tags: ["t"] });
      await flush(); // B has read k ("old", generation X) — a load, the tag's generation too
      if (how === "get") {
        // A get reads the tags of what it found in a second trip: taken now, answered later.
        const first = answer;
        answer = deferred<void>();
        answers = answer.promise;
        first.resolve();
        await flush();
      }
      answers = undefined;
      written.resolve();
      await set; // B heard "remove k, except generation X": its read is detached, still accepting X
      await (by === "here" ? b : a).removeByTag("t");
      answer.resolve();
      // Its caller asked before the removeByTag: a get still gets what it read; a load, fenced
      // now, takes nothing from L2 and loads for its caller (a value it writes nowhere).
      expect(await read).toBe(how === "get" ? "old" : "loaded");
      expect(await b.get("k")).toBeUndefined();
      expect(await b.getOrSet("k", async () => "new", { tags: ["t"] })).toBe("new");
      for (const c of caches) await c.close();
    }
  });

  test("a tag read sent while its invalidation waited for retry, answered after the retry landed, still counts as outdated", async () => {
    // The tag's old generation, read before the retried write landed, must not validate a value
    // written before the removeByTag (seen on PostgreSQL, whose reads and writes go on different
    // connections): the retry queue had forgotten the invalidation by the time the read answered.
    const clock = new FakeClock(1_000_000);
    const memory = new MemoryStore({ clock });
    let tagWritesFail = false;
    let answers: Promise<void> | undefined;
    const store: L2Store = {
      async get(key) {
        const later = answers;
        const text = await memory.get(key);
        await later;
        return text;
      },
      async set(key, record, ttlMs, ifGeneration) {
        if (tagWritesFail && key.includes("%tag:")) throw new Error("store down");
        return memory.set(key, record, ttlMs, ifGeneration);
      },
      resilience: { timeoutMs: 60_000 },
    };
    const cache = new LayerCache({ clock, l2: store });
    await cache.set("k", "old", { tags: ["t"] });
    tagWritesFail = true;
    await cache.removeByTag("t"); // L1 dropped; the tag's new generation waits for retry
    tagWritesFail = false;
    const answer = deferred<void>();
    answers = answer.promise;
    const read = cache.getOrSet("k", async () => "new", { tags: ["t"] });
    await flush(); // k ("old") and the tag's old generation are read; the answers are on their way
    answers = undefined;
    clock.advance(300); // the retry writes the tag's new generation (and the scope's epoch)
    await flush();
    expect(memory.records.get("layercache:%tag:t")?.record).not.toContain("|c."); // it landed
    answer.resolve();
    expect(await read).toBe("new");
    expect(await cache.get("k")).toBe("new");
    await cache.close();
  });

  test("a tagged set racing a removeByTag of its tag leaves neither its value nor the one it replaced in L2", async () => {
    const { store, caches: [a, b] } = fleet(2);
    await a.set("k", "v0");
    expect(await b.get("k")).toBe("v0");
    const set = a.set("k", "v1", { tags: ["t"] });
    const removal = a.removeByTag("t");
    await Promise.all([set, removal]);
    // v1 was invalidated by the removeByTag; v0 was replaced by the set: neither may be served.
    for (const cache of [a, b]) expect(await cache.get("k")).not.toBe("v0");
    const c = new LayerCache({ l2: store });
    expect(await c.get("k")).not.toBe("v0");
    await c.close();
  });

  test("removeByTag of an unknown tag, or with no L2 and no bus, is harmless; bad tags are TypeErrors", async () => {
    const solo = new LayerCache();
    await solo.set("k", 1, { tags: ["t"] });
    await solo.removeByTag("nothing");
    expect(await solo.get("k")).toBe(1);
    await solo.removeByTag("t");
    expect(await solo.get("k")).toBeUndefined();
    await expect(solo.removeByTag("")).rejects.toThrow(TypeError);
    await expect(solo.set("k", 1, { tags: "t" as never })).rejects.toThrow(/"tags"/);
    await expect(solo.set("k", 1, { tags: [1] as never })).rejects.toThrow(/"tags"/);
    await expect(solo.getOrSet("k", async () => 1, { tags: [""] })).rejects.toThrow(/"tags"/);
    expect(() => solo.scope("s", { tags: ["t"] } as never)).toThrow(/"tags"/);
    expect(() => new LayerCache({ tags: ["t"] } as never)).toThrow(/"tags"/);
    expect(() => solo.cached(async (x: string) => x, { tags: "t" as never })).toThrow(/"tags"/);
    await solo.set("k", 2);
    expect(await solo.get("k")).toBe(2); // nothing else lost
  });

  test("an L1 entry rewritten without its tag, evicted, or removed leaves the tag index", async () => {
    const cache = new LayerCache({ maxEntries: 2 });
    await cache.set("a", 1, { tags: ["t"] });
    await cache.set("a", 2); // no tags now
    await cache.removeByTag("t");
    expect(await cache.get("a")).toBe(2);
    await cache.set("b", 1, { tags: ["t"] });
    await cache.set("c", 1);
    await cache.set("d", 1); // evicts
    await cache.removeByTag("t");
    expect(await cache.get("c")).toBe(1);
  });
});

describe("loader context (SPEC 11)", () => {
  test("the loader gets its key, can set ttl and tags from the value, and can refuse caching", async () => {
    const { clock, caches: [a, b] } = fleet(2);
    const keys: string[] = [];
    const v = await a.getOrSet("k", ({ key, setOptions }) => {
      keys.push(key);
      setOptions({ ttl: "5s", tags: ["from-value"] });
      return "loaded";
    });
    expect(v).toBe("loaded");
    expect(keys).toEqual(["k"]);
    clock.advance(5_000);
    expect(await a.get("k")).toBeUndefined(); // its own ttl
    const load = counter();
    const fromLoader = async ({ setOptions }: { setOptions(o: object): void }) => {
      setOptions({ tags: ["late"] });
      return load();
    };
    expect(await a.getOrSet("m", fromLoader)).toBe("v1");
    await b.removeByTag("late");
    expect(await a.get("m")).toBeUndefined();
    let skipped = 0;
    expect(
      await a.getOrSet("n", ({ noCache }) => {
        skipped++;
        noCache();
        return "once";
      }),
    ).toBe("once");
    expect(await a.get("n")).toBeUndefined();
    expect(await b.get("n")).toBeUndefined();
    expect(skipped).toBe(1);
  });

  test("tags a loader names are shared through L2 once the scope reads its tag epoch, and removeByTag still wins", async () => {
    const { caches: [a, b, c] } = fleet(3, { bus: false });
    const load = counter();
    const loader = async ({ setOptions }: { setOptions(o: object): void }) => {
      setOptions({ tags: ["late"] });
      return load();
    };
    expect(await a.getOrSet("x", loader)).toBe("v1"); // first such load here: L1 only
    expect(await a.getOrSet("y", loader)).toBe("v2"); // now with the epoch: to L2 too
    expect(await b.getOrSet("y", loader)).toBe("v2");
    await c.removeByTag("late");
    expect(await c.get("y")).toBeUndefined();
    // A load running while the tag is invalidated does not reach L2.
    const gate = deferred<void>();
    const p = a.getOrSet("z", async (ctx) => {
      await gate.promise;
      return loader(ctx);
    });
    await flush();
    await c.removeByTag("late");
    gate.resolve();
    expect(await p).toBe("v3");
    expect(await c.get("z")).toBeUndefined();
  });

  test("setOptions with a bad option throws a TypeError into the loader; the load fails with it", async () => {
    const cache = new LayerCache();
    await expect(cache.getOrSet("k", ({ setOptions }) => (setOptions({ ttl: -1 }), 1))).rejects.toThrow(/"ttl"/);
    await expect(cache.getOrSet("k", ({ setOptions }) => (setOptions({ maxEntries: 1 } as never), 1))).rejects.toThrow(/"maxEntries"/);
    expect(await cache.getOrSet("k", async () => 2)).toBe(2);
  });
});
