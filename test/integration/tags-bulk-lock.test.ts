import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { generationOf, type Bus, type L2Store } from "../../src/backend.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import { PATIENT } from "../support/patient.js";
import { WorkerProcess } from "../support/processes.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Tags, getOrSetMany and distributed single flight on each backend family with an L2 and a bus of
 * its own — Redis (RedisStore + RedisBus) and PostgreSQL (PostgresStore + PostgresBus, nothing
 * else) — across separate Node processes, and between caches of one process.
 */
interface Family {
  name: string;
  url: string;
  store(url: string): L2Store;
  bus(url: string): Bus;
}
const FAMILIES: Family[] = [
  { name: "Redis", url: inject("redisUrl"), store: (url) => new RedisStore({ url, ...PATIENT }), bus: (url) => new RedisBus({ url, ...PATIENT }) },
  {
    name: "PostgreSQL",
    url: inject("postgresUrl"),
    store: (url) => new PostgresStore({ connectionString: url, ...PATIENT }),
    bus: (url) => new PostgresBus({ connectionString: url, ...PATIENT }),
  },
];

const workers: WorkerProcess[] = [];
afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
});

/** `n` processes on one prefix (test/support/worker.ts: the family's store and bus, chosen by the URL), `lock`: with distributedLock. */
async function spawn(url: string, n: number, lock: boolean): Promise<WorkerProcess[]> {
  const prefix = uniquePrefix();
  const out = Array.from({ length: n }, () => new WorkerProcess("test/support/worker.ts", lock ? [url, prefix, "lock"] : [url, prefix]));
  workers.push(...out);
  await Promise.all(out.map((w) => w.event((e) => e.event === "started")));
  await Promise.all(out.map((w) => w.send({ op: "ready" })));
  return out;
}

const loaderCalls = async (ws: WorkerProcess[]): Promise<number> => (await Promise.all(ws.map((w) => w.send<number>({ op: "loaderCalls" })))).reduce((x, y) => x + y, 0);
/** The keys each `loadMany` call of a process was given, for calls that named one of `keys`. */
const loadManyCalls = (w: WorkerProcess, keys: string[]): string[][] =>
  w.events.filter((e) => e.event === "loadMany" && (e.keys as string[]).some((k) => keys.includes(k))).map((e) => e.keys as string[]);

describe.each(FAMILIES)("tags, bulk and distributed single flight over $name, in separate processes", (family) => {
  // Three processes without the lock and three with it, started once (a process costs seconds to
  // start): each test uses keys of its own.
  let plain: WorkerProcess[] = [];
  let locked: WorkerProcess[] = [];
  beforeAll(async () => {
    [plain, locked] = await Promise.all([spawn(family.url, 3, false), spawn(family.url, 3, true)]);
  }, 90_000);

  test("removeByTag in one process drops the tagged entries everywhere; loads in flight on either side write back nowhere", async () => {
    const [a, b, c] = plain;
    await a!.send({ op: "set", key: "u1", value: "one", tags: ["users"] });
    await a!.send({ op: "set", key: "p1", value: "page", tags: ["pages"] });
    expect(await b!.send({ op: "get", key: "u1" })).toBe("one"); // an L1 copy in b
    // A load of a "users" value in flight in another process, and one in the process that removes.
    const elsewhere = c!.send({ op: "getOrSet", key: "u2", gate: "there", tags: ["users"] });
    const here = a!.send({ op: "getOrSet", key: "u3", gate: "here", tags: ["users"] });
    await c!.event((e) => e.event === "loading" && e.gate === "there");
    await a!.event((e) => e.event === "loading" && e.gate === "here");
    await a!.send({ op: "removeByTag", tags: ["users"] });
    await c!.send({ op: "release", gate: "there", value: "loaded-before" });
    await a!.send({ op: "release", gate: "here", value: "loaded-before" });
    expect(await elsewhere).toBe("loaded-before"); // their callers still get what they loaded...
    expect(await here).toBe("loaded-before");
    for (const w of [a!, b!, c!]) {
      // ...which no process serves afterwards, from L1 or L2.
      for (const key of ["u1", "u2", "u3"]) expect(await w.send({ op: "get", key })).toBeUndefined();
      expect(await w.send({ op: "get", key: "p1" })).toBe("page");
    }
    expect(await b!.send({ op: "getOrSet", key: "u1", value: "reloaded", tags: ["users"] })).toBe("reloaded");
  }, 60_000);

  test("getOrSetMany: overlapping callers in one process share the loads; another process reads L2", async () => {
    const [a, b] = plain;
    const first = a!.send<string[]>({ op: "getOrSetMany", keys: ["k1", "k2", "k3"], value: "A", gate: "m" });
    await a!.event((e) => e.event === "loadMany" && (e.keys as string[]).includes("k1"));
    const second = a!.send<string[]>({ op: "getOrSetMany", keys: ["k2", "k3", "k4"], value: "A2" });
    await a!.event((e) => e.event === "loadMany" && (e.keys as string[]).includes("k4"));
    const before = await loaderCalls([a!, b!]);
    await a!.send({ op: "release", gate: "m" });
    expect(await first).toEqual(["A:k1", "A:k2", "A:k3"]);
    expect(await second).toEqual(["A:k2", "A:k3", "A2:k4"]); // k2 and k3 joined the first call's loads
    expect(loadManyCalls(a!, ["k1", "k2", "k3", "k4"])).toEqual([["k1", "k2", "k3"], ["k4"]]);
    expect(await b!.send({ op: "getOrSetMany", keys: ["k1", "k4"], value: "B" })).toEqual(["A:k1", "A2:k4"]);
    expect(await loaderCalls([a!, b!])).toBe(before); // b found both in L2
  }, 60_000);

  test("getOrSetMany with distributedLock: keys another process is loading are waited for, the rest go to one loadMany", async () => {
    const [a, b] = locked;
    const first = a!.send<string[]>({ op: "getOrSetMany", keys: ["y1", "y2", "y3"], value: "A", gate: "y" });
    await a!.event((e) => e.event === "loadMany" && (e.keys as string[]).includes("y1")); // a holds the leases of y1..y3
    const second = b!.send<string[]>({ op: "getOrSetMany", keys: ["y2", "y3", "y4"], value: "B" });
    await a!.send({ op: "release", gate: "y" });
    expect(await first).toEqual(["A:y1", "A:y2", "A:y3"]);
    expect(await second).toEqual(["A:y2", "A:y3", "B:y4"]);
    // Each key loaded once across the two processes, each process in one loadMany call.
    expect(loadManyCalls(a!, ["y1", "y2", "y3", "y4"])).toEqual([["y1", "y2", "y3"]]);
    expect(loadManyCalls(b!, ["y1", "y2", "y3", "y4"])).toEqual([["y4"]]);
  }, 60_000);

  test("a stampede of misses over three processes: one loader call with distributedLock, one per process without", async () => {
    for (const [ws, lock] of [
      [locked, true],
      [plain, false],
    ] as const) {
      const key = `hot-${lock ? "lock" : "plain"}`;
      const before = await loaderCalls(ws);
      const results = await Promise.all(ws.map((w, i) => w.send<unknown[]>({ op: "stampede", key, n: 334, ms: lock ? 200 : 1_000, value: `from-${i}` })));
      const calls = (await loaderCalls(ws)) - before;
      if (lock) {
        expect(calls).toBe(1);
        expect(new Set(results.flat()).size).toBe(1); // every caller in every process got that one value
      } else {
        // Each process loads once (3 when their misses overlap, as they do unless a process starts a second late).
        expect(calls).toBeGreaterThan(1);
        expect(calls).toBeLessThanOrEqual(3);
      }
    }
  }, 90_000);

  test("no worker saw an unhandled rejection", () => {
    for (const w of [...plain, ...locked]) expect(w.events.filter((e) => e.event === "unhandledRejection")).toEqual([]);
  });
});

describe.each(FAMILIES)("tags and bulk on $name, between caches of one process", (family) => {
  const caches: LayerCache[] = [];
  afterAll(async () => {
    await Promise.all(caches.map((c) => c.close()));
  });
  const make = (prefix: string, bus: boolean, extra: Record<string, unknown> = {}, l2: L2Store = family.store(family.url)) => {
    const c = new LayerCache({ prefix, l2, ...(bus ? { bus: family.bus(family.url) } : {}), hardTimeout: 0, ...extra });
    caches.push(c);
    return c;
  };

  test("a background refresh running when removeByTag comes — from a peer or from its own instance — does not write; without a bus L2 still serves it to nobody", async () => {
    for (const bus of [true, false]) {
      for (const by of ["peer", "self"] as const) {
        const prefix = uniquePrefix();
        const a = make(prefix, bus, { ttl: 150, refresh: "background", maxStale: "1m" });
        const b = make(prefix, bus);
        const c = make(prefix, bus);
        await a.getOrSet("k", async () => "v1", { tags: ["t"] });
        await new Promise((r) => setTimeout(r, 200));
        let release!: (v: string) => void;
        const gate = new Promise<string>((r) => (release = r));
        expect(await a.getOrSet("k", () => gate, { tags: ["t"] })).toBe("v1"); // stale: a refresh starts
        await (by === "peer" ? b : a).removeByTag("t");
        release("v2-loaded-before");
        await new Promise((r) => setTimeout(r, 100));
        expect(await c.get("k")).toBeUndefined();
        if (by === "self") expect(await a.get("k")).toBeUndefined();
        expect(await c.getOrSet("k", async () => "v3", { tags: ["t"] })).toBe("v3");
        if (bus || by === "self") expect(await a.getOrSet("k", async () => "v4", { tags: ["t"] })).toBe("v3");
      }
    }
  }, 60_000);

  test("getOrSetMany of keys in L2 (L1 cold) reads them, and their tags, in one multi-key read", async () => {
    const prefix = uniquePrefix();
    const writer = make(prefix, false);
    const keys = Array.from({ length: 20 }, (_, i) => `m${i}`);
    expect(await writer.getOrSetMany(keys, (ks) => ks.map((k) => `${k}!`), { tags: ["bulk"] })).toHaveLength(20);
    const store = family.store(family.url);
    const calls: string[][] = [];
    const counted: L2Store = {
      connect: async () => store.connect?.(),
      get: (key) => (calls.push([key]), store.get(key)),
      getMany: (ks) => (calls.push(ks), store.getMany!(ks)),
      set: (key, record, ttlMs, ifGeneration) => store.set(key, record, ttlMs, ifGeneration),
      close: () => store.close!(),
      limits: store.limits,
      resilience: store.resilience,
    };
    const reader = make(prefix, false, {}, counted);
    await reader.ready();
    calls.length = 0;
    let loads = 0;
    const values = await reader.getOrSetMany(keys, (ks) => ((loads += ks.length), ks.map(() => "loaded")), { tags: ["bulk"] });
    expect(values).toEqual(keys.map((k) => `${k}!`));
    expect(loads).toBe(0);
    // One round trip: the 20 keys and the tag's record (which every key's read asks for).
    expect(calls).toHaveLength(1);
    expect(new Set(calls[0])).toEqual(new Set([...keys.map((k) => `${prefix}::${k}`), `${prefix}:%tag:bulk`]));
  }, 60_000);

  test("the distributed lock's lease: taken only when absent, expiring after `lease`, given back after a failed load; a holder that outlived it cannot overwrite the next holder's value", async () => {
    const prefix = uniquePrefix();
    const store = family.store(family.url);
    const lock = { distributedLock: { lease: "300ms", wait: "10s", poll: "25ms" } };
    const [a, b] = [make(prefix, true, lock, store), make(prefix, true, lock)];
    const c = make(prefix, true);
    const leaseOf = async (key: string): Promise<string> => generationOf((await store.get(`${prefix}:%lock:${key}`)) ?? "");

    // A failed load gives its lease back at once (the record no longer holds a generation).
    await expect(a.getOrSet("f", async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(await leaseOf("f")).toBe("");
    expect(await b.getOrSet("f", async () => "ok")).toBe("ok");

    // A tombstone in place: both loads below see its generation, so only the new generation the
    // lease holder writes with can fence the one that outlived its lease. (Written by a cache without
    // a bus: a message of it arriving late would fence a's load itself.)
    await make(prefix, false).remove("k");
    const started = Date.now();
    let release!: (v: string) => void;
    const held = a.getOrSet("k", () => new Promise<string>((r) => (release = r)));
    await eventually(async () => (await leaseOf("k")) !== ""); // a holds the lease and loads
    let bLoadedAt = 0;
    const newer = await b.getOrSet("k", async () => ((bLoadedAt = Date.now()), "newer"));
    expect(newer).toBe("newer");
    // b could take the lease only once a's had expired (its record is written only when none is there).
    expect(bLoadedAt - started).toBeGreaterThanOrEqual(290);
    release("older"); // a outlived its lease: its write-back is fenced by the generation b wrote
    expect(await held).toBe("older");
    expect(await c.get("k")).toBe("newer");
    expect(await a.get("k")).toBe("newer");
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
    // a's L1 copies go when the bus message arrives (shortly after removeByTag resolved).
    await eventually(async () => (await a.getMany(["x", "m1", "m2"])).every((v) => v === undefined));
  }, 60_000);
});
