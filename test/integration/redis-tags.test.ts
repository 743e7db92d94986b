import { afterAll, describe, expect, inject, test } from "vitest";
import { WorkerProcess } from "../support/processes.js";
import { uniquePrefix } from "../support/redis-clients.js";

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
