import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { WorkerProcess } from "../support/processes.js";
import { rawPoolClosedAfterAll } from "../support/postgres-clients.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Separate Node processes, each with its own LayerCache, on one real PostgreSQL and nothing else
 * (PostgresStore and PostgresBus; no Redis anywhere): races that one process cannot fake.
 */
const url = inject("postgresUrl");
const raw = rawPoolClosedAfterAll(url);
const workers: WorkerProcess[] = [];
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
});

/** Three processes on one prefix, started once (starting a process costs seconds): each test uses keys of its own. */
const prefix = uniquePrefix();
let procs: WorkerProcess[] = [];
beforeAll(async () => {
  procs = await spawn(prefix, 3);
}, 60_000);

async function spawn(prefix: string, n: number): Promise<WorkerProcess[]> {
  const out = Array.from({ length: n }, () => new WorkerProcess("test/support/worker.ts", [url, prefix]));
  workers.push(...out);
  await Promise.all(out.map((w) => w.event((e) => e.event === "started")));
  await Promise.all(out.map((w) => w.send({ op: "ready" })));
  return out;
}

const stored = async (key: string): Promise<string | undefined> => (await raw.query("SELECT record FROM layercache WHERE key = $1", [key])).rows[0]?.record;

describe("several processes on one PostgreSQL", () => {
  test("a value one process loads serves the others; a remove in one reaches the others", async () => {
    const [a, b, c] = procs;
    expect(await a!.send({ op: "getOrSet", key: "shared", value: "from-a" })).toBe("from-a");
    expect(await b!.send({ op: "getOrSet", key: "shared", value: "from-b" })).toBe("from-a");
    expect(await c!.send({ op: "get", key: "shared" })).toBe("from-a");
    await c!.send({ op: "remove", key: "shared" });
    await eventually(async () => (await a!.send({ op: "get", key: "shared" })) === undefined && (await b!.send({ op: "get", key: "shared" })) === undefined);
  }, 60_000);

  test.each(["remove", "set", "clear"] as const)("a load in B that started before a %s in A writes back nowhere", async (op) => {
    const [a, b] = procs;
    const key = `before-${op}`;
    const discarded = (await b!.send<{ loadsDiscarded: number }>({ op: "stats" })).loadsDiscarded;
    const loading = b!.send({ op: "getOrSet", key, gate: op });
    await b!.event((e) => e.event === "loading" && e.gate === op);
    if (op === "remove") await a!.send({ op: "remove", key });
    else if (op === "set") await a!.send({ op: "set", key, value: "newer" });
    else {
      const heard = (await b!.send<{ peerInvalidations: number }>({ op: "stats" })).peerInvalidations;
      await a!.send({ op: "clear" });
      // A clear touches only L1s: what stops the write-back is the message B hears while loading.
      await eventually(async () => (await b!.send<{ peerInvalidations: number }>({ op: "stats" })).peerInvalidations > heard);
    }
    await b!.send({ op: "release", gate: op, value: "computed-before" });
    expect(await loading).toBe("computed-before"); // B's caller gets its answer...
    // ...but neither L2 nor B's L1 keep it.
    const record = await stored(`${prefix}::${key}`);
    expect(record ?? "").not.toMatch(/computed-before/);
    if (op === "set") await eventually(async () => (await b!.send({ op: "get", key })) === "newer");
    else expect(await b!.send({ op: "get", key })).toBeUndefined();
    if (op === "remove") expect(record).toMatch(/\|-$/);
    const stats = await b!.send<{ loadsDiscarded: number }>({ op: "stats" });
    expect(stats.loadsDiscarded).toBe(discarded + 1);
  }, 60_000);

  test("many processes racing on one key: every write-back is fenced, L2 ends with one value that a process loaded after the last remove", async () => {
    for (let round = 0; round < 5; round++) {
      const key = `race${round}`;
      const loads = procs.map((p, i) => p.send({ op: "getOrSet", key, value: `p${i}-r${round}` }));
      await procs[round % procs.length]!.send({ op: "remove", key });
      await Promise.all(loads);
      const after = await procs[(round + 1) % procs.length]!.send({ op: "getOrSet", key, value: `after-r${round}` });
      // Whatever L2 holds now was written after the remove (a fenced write-back or the last load), never an older load over the tombstone unseen.
      const record = await stored(`${prefix}::${key}`);
      if (record !== undefined && !/\|-$/.test(record)) expect(record).toContain(JSON.stringify(after));
    }
  }, 60_000);

  test("no worker saw an unhandled rejection", () => {
    for (const w of workers) expect(w.events.filter((e) => e.event === "unhandledRejection")).toEqual([]);
  });
});
