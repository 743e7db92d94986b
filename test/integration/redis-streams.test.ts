import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Redis } from "ioredis";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { RedisStreamsBus } from "../../src/backends/redis/index.js";
import { RedisServer } from "../support/servers.js";
import { CLIENT_KINDS, eventually, rawClient, uniquePrefix, wire, type ClientKind, type Wiring } from "../support/redis-clients.js";

/**
 * RedisStreamsBus on a real redis-server of this file's own (FLUSHALL and CLIENT KILL must not
 * reach other test files): a reader cut off catches up on what it missed and keeps its L1; when
 * catching up is impossible — the stream was trimmed past its position, or flushed — it repairs
 * L1 as the pub/sub bus does.
 */
let server: RedisServer;
let raw: Redis;
const caches: LayerCache[] = [];
const wirings: Wiring[] = [];
beforeAll(async () => {
  server = await RedisServer.start();
  raw = rawClient(server.url);
});
afterAll(async () => {
  await Promise.all(caches.map((c) => c.close()));
  await Promise.all(wirings.map((w) => w.close()));
  await raw?.quit();
  await server?.stop();
});

/** The ids of the connections blocked in (or last used for) XREAD: the readers of Streams buses. */
async function readerIds(): Promise<Set<string>> {
  const list = (await raw.call("CLIENT", "LIST")) as string;
  return new Set(list.split("\n").filter((line) => / cmd=xread\b/.test(line)).map((line) => /\bid=(\d+)/.exec(line)![1]!));
}

/** A (publisher) and B (the instance under test), each with its own client; and the id of B's reader connection. */
async function pair(kind: ClientKind, busOptions: Record<string, unknown> = {}) {
  const prefix = uniquePrefix();
  const make = async (): Promise<LayerCache> => {
    const w = await wire(kind, server.url, "streams", busOptions);
    wirings.push(w);
    const cache = new LayerCache({ prefix, l2: w.store, bus: w.bus, ttl: "1h" });
    caches.push(cache);
    await cache.ready();
    return cache;
  };
  // Each new instance's reader shows up once it has run its first XREAD: wait for A's before B comes.
  const newReader = async (before: Set<string>): Promise<string> => {
    let id: string | undefined;
    await eventually(async () => (id = [...(await readerIds())].find((r) => !before.has(r))) !== undefined);
    return id!;
  };
  const initial = await readerIds();
  const a = await make();
  await newReader(initial);
  const before = await readerIds();
  const b = await make();
  const bReader = await newReader(before);
  const events: string[] = [];
  for (const name of ["busDisconnect", "busReconnect", "busCaughtUp"] as const) b.on(name, () => events.push(name));
  return { a, b, prefix, bReader, events };
}

/** A message from a peer that is not running: XADD as a publisher would. */
const fromPeer = (keys: string[]) => encodeMessage({ from: "peer-x", op: "remove", scope: [], keys, at: Date.now() });

/**
 * B holds "held" in L1 only (its L2 record deleted behind the cache's back): a read serves it only
 * while it is trusted; after an L1 repair it revalidates against L2 and finds nothing.
 */
async function holdInL1Only(b: LayerCache, prefix: string): Promise<void> {
  await b.getOrSet("held", async () => "b's own");
  await raw.del(`${prefix}::held`);
  expect(await b.get("held")).toBe("b's own");
}

describe.each(CLIENT_KINDS)("RedisStreamsBus with %s", (kind) => {
  test("messages published while B's reader connection is cut are applied after it reconnects; B's other L1 entries stay fresh (catch-up, not repair)", async () => {
    const { a, b, prefix, bReader, events } = await pair(kind);
    for (const k of ["k1", "k2", "k3"]) await a.set(k, `${k} v1`);
    for (const k of ["k1", "k2", "k3"]) expect(await b.get(k)).toBe(`${k} v1`);
    await holdInL1Only(b, prefix);

    // The kill and a peer's removal (L2, then the bus) in one round trip: surely published while B is cut.
    await raw.multi().client("KILL", "ID", bReader).del(`${prefix}::k1`).xadd(`${prefix}:bus`, "*", "m", fromPeer(["k1"])).exec();
    await a.remove("k2"); // A's own invalidations, right after: most likely while B is still away
    await a.set("k3", "k3 v2");

    await eventually(() => events.includes("busCaughtUp"), 15_000);
    expect(await b.get("k1")).toBeUndefined();
    expect(await b.get("k2")).toBeUndefined();
    expect(await b.get("k3")).toBe("k3 v2");
    expect(events).toEqual(["busDisconnect", "busCaughtUp"]);
    expect(b.stats().busReconnects).toBe(0);
    // Not repaired: the entry nobody invalidated is still served from L1 as fresh.
    expect(await b.get("held")).toBe("b's own");

    // And the bus goes on as before.
    await a.remove("k3");
    await eventually(async () => (await b.get("k3")) === undefined);
  });
});

describe.each(["ioredis", "node-redis"] as const)("RedisStreamsBus with %s: when catching up is impossible, L1 is repaired", (kind) => {
  test("the stream was trimmed past B's position while B was cut (maxLen 10, 300 messages)", async () => {
    const { a, b, prefix, bReader, events } = await pair(kind, { maxLen: 10 });
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    await holdInL1Only(b, prefix);
    const flood = raw.multi().client("KILL", "ID", bReader);
    for (let i = 0; i < 300; i++) flood.xadd(`${prefix}:bus`, "MAXLEN", "~", 10, "*", "m", fromPeer([`other${i}`]));
    await flood.exec();
    expect(await raw.xlen(`${prefix}:bus`)).toBeLessThan(300);

    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(b.stats().busCatchUps).toBe(0);
    expect(await b.get("held")).toBeUndefined(); // revalidated: it may have been invalidated in the gap
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
  });

  test.each([
    ["and nothing was published since", "nothing"],
    ["and a peer published since (the stream starts again, with newer ids)", "newer"],
    ["and a peer published since, in the same millisecond as the last entry B read (the new entry has its id)", "same id"],
  ] as const)("FLUSHALL while B was cut, %s", async (_what, since) => {
    const { a, b, prefix, bReader, events } = await pair(kind);
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    await holdInL1Only(b, prefix);
    const [[lastRead]] = (await raw.xrevrange(`${prefix}:bus`, "+", "-", "COUNT", 1)) as [string, string[]][];
    const cut = raw.multi().client("KILL", "ID", bReader).flushall();
    if (since !== "nothing") cut.xadd(`${prefix}:bus`, since === "same id" ? lastRead! : "*", "m", fromPeer(["unrelated"]));
    await cut.exec();

    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(b.stats().busCatchUps).toBe(0);
    expect(await b.get("held")).toBeUndefined();
    expect(await b.get("k")).toBeUndefined(); // flushed from L2 too; the L1 copy is not trusted
    await a.set("k", "v2");
    await b.getOrSet("k", async () => "loaded");
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
  });
});

describe("RedisStreamsBus leaves nothing behind", () => {
  test("one stream key per prefix, trimmed by every publish; no consumer group; nothing per instance", async () => {
    const prefix = uniquePrefix();
    const started: LayerCache[] = [];
    // Instances come and go (restarts): the server keeps the one stream, nothing per instance.
    for (let round = 0; round < 3; round++) {
      const w = await wire("ioredis", server.url, "streams", { maxLen: 50 });
      wirings.push(w);
      const cache = new LayerCache({ prefix, l2: w.store, bus: w.bus });
      started.push(cache);
      for (let i = 0; i < 200; i++) await cache.remove(`k${round}-${i}`);
      await cache.close();
    }
    expect(await raw.keys(`${prefix}:bus*`)).toEqual([`${prefix}:bus`]);
    expect(await raw.type(`${prefix}:bus`)).toBe("stream");
    expect(await raw.xlen(`${prefix}:bus`)).toBeLessThanOrEqual(50 + 100); // approximate trimming: whole blocks of 100
    expect(await raw.call("XINFO", "GROUPS", `${prefix}:bus`)).toEqual([]);
  });

  test("options: maxLen must be a positive integer; unknown options are refused", () => {
    for (const maxLen of [0, -1, 1.5, Infinity, "10"]) {
      expect(() => new RedisStreamsBus({ url: "redis://127.0.0.1:6379", maxLen: maxLen as number })).toThrow(/"maxLen"/);
    }
    expect(() => new RedisStreamsBus({ url: "redis://127.0.0.1:6379", heartbeat: 0 })).toThrow(/"heartbeat"/);
    expect(() => new RedisStreamsBus({ url: "redis://127.0.0.1:6379", group: "g" } as never)).toThrow(TypeError);
    expect(() => new RedisStreamsBus({ url: "redis://127.0.0.1:6379", group: "g" } as never)).toThrow(/"group"/);
    expect(() => new RedisStreamsBus({} as never)).toThrow(/client/);
  });
});
