import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { wireKey } from "../../src/backends/memcached/keys.js";
import { metaCommands } from "../support/memcached-server.js";
import { WorkerProcess } from "../support/processes.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Separate Node processes, each with its own LayerCache, with Memcached as L2 and Redis pub/sub as
 * the bus: the cross-instance races that only the compare-and-set of write-backs can win.
 */
const url = inject("redisUrl");
const servers = inject("memcachedServer");
const prefix = uniquePrefix();
const workers: WorkerProcess[] = [];
let a: WorkerProcess, b: WorkerProcess, c: WorkerProcess;
// Three processes for the whole file (starting one costs seconds); each test uses keys of its own.
beforeAll(async () => {
  workers.push(...Array.from({ length: 3 }, () => new WorkerProcess("test/support/worker.ts", [url, prefix, servers])));
  await Promise.all(workers.map((w) => w.event((e) => e.event === "started")));
  await Promise.all(workers.map((w) => w.send({ op: "ready" })));
  [a, b, c] = workers as [WorkerProcess, WorkerProcess, WorkerProcess];
}, 60_000);
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
});

/** The record stored in memcached for key `key` of the root scope. */
async function stored(key: string): Promise<string> {
  const k = wireKey(`${prefix}::${key}`);
  return metaCommands(servers, `mg ${k.token} v${k.base64 ? " b" : ""}\r\n`);
}

describe("several processes on one memcached (Redis bus)", () => {
  test("a value one process loads serves the others; a remove in one reaches the others", async () => {
    expect(await a.send({ op: "getOrSet", key: "k", value: "from-a" })).toBe("from-a");
    expect(await b.send({ op: "getOrSet", key: "k", value: "from-b" })).toBe("from-a");
    expect(await c.send({ op: "get", key: "k" })).toBe("from-a");
    await c.send({ op: "remove", key: "k" });
    await eventually(async () => (await a.send({ op: "get", key: "k" })) === undefined && (await b.send({ op: "get", key: "k" })) === undefined);
  }, 60_000);

  test.each(["remove", "set"] as const)("a load in B that started before a %s in A writes back nowhere", async (op) => {
    const key = `fresh-${op}`;
    const before = (await b.send<{ loadsDiscarded: number }>({ op: "stats" })).loadsDiscarded;
    const loading = b.send({ op: "getOrSet", key, gate: `g-${op}` });
    await b.event((e) => e.event === "loading" && e.gate === `g-${op}`);
    if (op === "remove") await a.send({ op: "remove", key });
    else await a.send({ op: "set", key, value: "newer" });
    await b.send({ op: "release", gate: `g-${op}`, value: "computed-before" });
    expect(await loading).toBe("computed-before"); // B's caller gets its answer...
    // ...but neither L2 nor B's L1 keep it.
    const record = await stored(key);
    expect(record).not.toMatch(/computed-before/);
    if (op === "remove") {
      expect(record).toMatch(/\|-\r\n/);
      expect(await b.send({ op: "get", key })).toBeUndefined();
    } else {
      expect(record).toMatch(/"newer"/);
      await eventually(async () => (await b.send({ op: "get", key })) === "newer");
    }
    const stats = await b.send<{ loadsDiscarded: number }>({ op: "stats" });
    expect(stats.loadsDiscarded).toBe(before + 1);
  }, 60_000);

  test("loads of one key in three processes at once: one write-back wins, and every process ends on that value", async () => {
    const prefix = uniquePrefix();
    const procs = [a, b, c];
    const loads = procs.map((p, i) => p.send({ op: "getOrSet", key: "raced", gate: `g${i}` }));
    await Promise.all(procs.map((p, i) => p.event((e) => e.event === "loading" && e.gate === `g${i}`)));
    await Promise.all(procs.map((p, i) => p.send({ op: "release", gate: `g${i}`, value: `from-${i}` })));
    expect((await Promise.all(loads)).sort()).toEqual(["from-0", "from-1", "from-2"]);
    const record = await stored("raced");
    const winner = /"(from-\d)"/.exec(record)?.[1];
    expect(winner, record).toBeDefined();
    // The losers' L1 copies were dropped by the winner's message (or never kept): all read the winner.
    await eventually(async () => (await Promise.all(procs.map((p) => p.send({ op: "get", key: "raced" })))).every((v) => v === winner));
  }, 60_000);

  test("no worker saw an unhandled rejection", () => {
    for (const w of workers) expect(w.events.filter((e) => e.event === "unhandledRejection")).toEqual([]);
  });
});
