import { afterAll, describe, expect, inject, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { PATIENT } from "../support/patient.js";
import { WorkerProcess } from "../support/processes.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Tags, getOrSetMany and distributed single flight across separate Node processes on one real
 * redis-server (RedisStore + RedisBus).
 */
const url = inject("redisUrl");
const workers: WorkerProcess[] = [];
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
});

async function spawn(prefix: string, n: number, mode?: "lock"): Promise<WorkerProcess[]> {
  const out = Array.from({ length: n }, () => new WorkerProcess("test/support/worker.ts", mode ? [url, prefix, mode] : [url, prefix]));
  workers.push(...out);
  await Promise.all(out.map((w) => w.event((e) => e.event === "started")));
  await Promise.all(out.map((w) => w.send({ op: "ready" })));
  return out;
}

describe("tags, bulk and distributed single flight over Redis, in separate processes", () => {
  test("removeByTag in one process drops the tagged entries everywhere; a load in flight elsewhere writes back nowhere", async () => {
    const [a, b, c] = await spawn(uniquePrefix(), 3);
    await a!.send({ op: "set", key: "u1", value: "one", tags: ["users"] });
    await a!.send({ op: "set", key: "p1", value: "page", tags: ["pages"] });
    expect(await b!.send({ op: "get", key: "u1" })).toBe("one");
    const loading = c!.send({ op: "getOrSet", key: "u2", gate: "g", tags: ["users"] });
    await c!.event((e) => e.event === "loading" && e.gate === "g");
    await a!.send({ op: "removeByTag", tags: ["users"] });
    await c!.send({ op: "release", gate: "g", value: "loaded-before" });
    expect(await loading).toBe("loaded-before");
    for (const w of [a!, b!, c!]) {
      expect(await w.send({ op: "get", key: "u1" })).toBeUndefined();
      expect(await w.send({ op: "get", key: "u2" })).toBeUndefined();
      expect(await w.send({ op: "get", key: "p1" })).toBe("page");
    }
  }, 60_000);

  test("getOrSetMany: overlapping callers in one process share the loads; another process reads L2", async () => {
    const [a, b] = await spawn(uniquePrefix(), 2);
    const first = a!.send<string[]>({ op: "getOrSetMany", keys: ["k1", "k2", "k3"], value: "A", gate: "m" });
    await a!.event((e) => e.event === "loadMany");
    const second = a!.send<string[]>({ op: "getOrSetMany", keys: ["k2", "k3", "k4"], value: "A2" });
    await a!.event((e) => e.event === "loadMany" && (e.keys as string[]).includes("k4"));
    await a!.send({ op: "release", gate: "m" });
    expect(await first).toEqual(["A:k1", "A:k2", "A:k3"]);
    expect(await second).toEqual(["A:k2", "A:k3", "A2:k4"]);
    expect(await a!.send({ op: "loaderCalls" })).toBe(2);
    expect(await b!.send({ op: "getOrSetMany", keys: ["k1", "k4"], value: "B" })).toEqual(["A:k1", "A2:k4"]);
    expect(await b!.send({ op: "loaderCalls" })).toBe(0);
  }, 60_000);

  test("a stampede of misses over three processes: one loader call with distributedLock, one per process without", async () => {
    for (const mode of ["lock", undefined] as const) {
      const ws = await spawn(uniquePrefix(), 3, mode);
      const results = await Promise.all(ws.map((w, i) => w.send<unknown[]>({ op: "stampede", key: "hot", n: 334, ms: mode === "lock" ? 200 : 1_000, value: `from-${i}` })));
      const calls = (await Promise.all(ws.map((w) => w.send<number>({ op: "loaderCalls" })))).reduce((x, y) => x + y, 0);
      if (mode === "lock") {
        expect(calls).toBe(1);
        expect(new Set(results.flat()).size).toBe(1);
      } else {
        // Each process loads once (3 when their misses overlap, as they do unless a process starts a second late).
        expect(calls).toBeGreaterThan(1);
        expect(calls).toBeLessThanOrEqual(3);
      }
    }
  }, 90_000);

  test("no worker saw an unhandled rejection", async () => {
    for (const w of workers) expect(w.events.filter((e) => e.event === "unhandledRejection")).toEqual([]);
  });
});

describe("tags on Redis, in one process (RedisStore + RedisBus, and RedisStore alone)", () => {
  const caches: LayerCache[] = [];
  afterAll(async () => {
    await Promise.all(caches.map((c) => c.close()));
  });
  const make = (prefix: string, bus: boolean, extra: Record<string, unknown> = {}) => {
    const c = new LayerCache({ prefix, l2: new RedisStore({ url, ...PATIENT }), ...(bus ? { bus: new RedisBus({ url, ...PATIENT }) } : {}), hardTimeout: 0, ...extra });
    caches.push(c);
    return c;
  };

  test("a background refresh running when removeByTag comes does not write; without a bus L2 still serves it to nobody", async () => {
    for (const bus of [true, false]) {
      const prefix = uniquePrefix();
      const a = make(prefix, bus, { ttl: 150, refresh: "background", maxStale: "1m" });
      const b = make(prefix, bus);
      const c = make(prefix, bus);
      await a.getOrSet("k", async () => "v1", { tags: ["t"] });
      await new Promise((r) => setTimeout(r, 200));
      let release!: (v: string) => void;
      const gate = new Promise<string>((r) => (release = r));
      expect(await a.getOrSet("k", () => gate, { tags: ["t"] })).toBe("v1"); // stale: a refresh starts
      await b.removeByTag("t");
      release("v2-loaded-before");
      await new Promise((r) => setTimeout(r, 100));
      expect(await c.get("k")).toBeUndefined();
      expect(await c.getOrSet("k", async () => "v3", { tags: ["t"] })).toBe("v3");
      if (bus) expect(await a.getOrSet("k", async () => "v4", { tags: ["t"] })).toBe("v3");
    }
  }, 60_000);

  test("tags set by the loader, getOrSetMany with tags, and removeByTag of several tags", async () => {
    const prefix = uniquePrefix();
    const a = make(prefix, true);
    const b = make(prefix, true);
    await a.getOrSet("warm", ({ setOptions }) => (setOptions({ tags: ["late"] }), 0)); // the scope reads its tag epoch from now on
    expect(await a.getOrSet("x", ({ setOptions }) => (setOptions({ tags: ["late"] }), "x1"))).toBe("x1");
    expect(await b.get("x")).toBe("x1"); // shared through L2
    expect(await a.getOrSetMany(["m1", "m2"], async (keys) => keys.map((k) => `${k}!`), { tags: ["many"] })).toEqual(["m1!", "m2!"]);
    expect(await b.getMany(["m1", "m2"])).toEqual(["m1!", "m2!"]);
    await b.removeByTag(["late", "many"]);
    expect(await b.has("x")).toBe(false);
    // a's L1 copies go when the bus message arrives (over Redis: shortly after removeByTag resolved).
    await eventually(async () => (await a.getMany(["x", "m1", "m2"])).every((v) => v === undefined));
  }, 60_000);
});
