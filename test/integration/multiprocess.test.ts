import { afterAll, describe, expect, inject, test } from "vitest";
import { WorkerProcess } from "../support/processes.js";
import { eventually, rawClientClosedAfterAll, uniquePrefix } from "../support/redis-clients.js";

/**
 * Separate Node processes, each with its own LayerCache, on one real redis-server: races that
 * one process cannot fake (no shared memory, no shared event loop).
 */
const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);
const workers: WorkerProcess[] = [];
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
});

async function spawn(prefix: string, n: number): Promise<WorkerProcess[]> {
  const out = Array.from({ length: n }, () => new WorkerProcess("test/support/worker.ts", [url, prefix]));
  workers.push(...out);
  await Promise.all(out.map((w) => w.event((e) => e.event === "started")));
  await Promise.all(out.map((w) => w.send({ op: "ready" })));
  return out;
}

describe("several processes on one Redis", () => {
  test("a value one process loads serves the others", async () => {
    const prefix = uniquePrefix();
    const [a, b, c] = await spawn(prefix, 3);
    expect(await a!.send({ op: "getOrSet", key: "k", value: "from-a" })).toBe("from-a");
    expect(await b!.send({ op: "getOrSet", key: "k", value: "from-b" })).toBe("from-a");
    expect(await c!.send({ op: "get", key: "k" })).toBe("from-a");
  }, 60_000);

  test.each(["remove", "set"] as const)("a load in B that started before a %s in A writes back nowhere", async (op) => {
    const prefix = uniquePrefix();
    const [a, b] = await spawn(prefix, 2);
    const loading = b!.send({ op: "getOrSet", key: "k", gate: "g1" });
    await b!.event((e) => e.event === "loading" && e.gate === "g1");
    if (op === "remove") await a!.send({ op: "remove", key: "k" });
    else await a!.send({ op: "set", key: "k", value: "newer" });
    await b!.send({ op: "release", gate: "g1", value: "computed-before" });
    expect(await loading).toBe("computed-before"); // B's caller gets its answer...
    // ...but neither L2 nor B's L1 keep it.
    const stored = await raw.get(`${prefix}::k`);
    expect(stored).not.toMatch(/computed-before/);
    if (op === "remove") {
      expect(stored).toMatch(/\|-$/);
      expect(await b!.send({ op: "get", key: "k" })).toBeUndefined();
    } else {
      await eventually(async () => (await b!.send({ op: "get", key: "k" })) === "newer");
    }
    const stats = await b!.send<{ loadsDiscarded: number }>({ op: "stats" });
    expect(stats.loadsDiscarded).toBe(1);
  }, 60_000);

  test("no worker saw an unhandled rejection", () => {
    for (const w of workers) expect(w.events.filter((e) => e.event === "unhandledRejection")).toEqual([]);
  });
});
