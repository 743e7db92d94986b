import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import type { Redis } from "ioredis";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { RedisServer } from "../support/servers.js";
import { BUS_KINDS, CLIENT_KINDS, closedAfterAll, eventually, rawClient, rawClientClosedAfterAll, sendRaw, uniquePrefix, wire, type BusKind } from "../support/redis-clients.js";

const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);
const { caches, wirings } = closedAfterAll();

async function instances(kind: (typeof CLIENT_KINDS)[number], n: number, extra: Record<string, unknown> = {}, withL2 = true, on = url, bus: BusKind = "pubsub") {
  const prefix = uniquePrefix();
  const out: LayerCache[] = [];
  for (let i = 0; i < n; i++) {
    const w = await wire(kind, on, bus);
    wirings.push(w);
    const c = new LayerCache({ prefix, bus: w.bus, ...(withL2 ? { l2: w.store } : {}), ...extra });
    caches.push(c);
    out.push(c);
  }
  await Promise.all(out.map((c) => c.ready()));
  return { caches: out, prefix };
}

/** Every Redis bus (pub/sub, Streams) with every client library. */
const BUS_AND_CLIENT = BUS_KINDS.flatMap((bus) => CLIENT_KINDS.map((kind) => [bus === "streams" ? "RedisStreamsBus" : "RedisBus", kind, bus] as const));

describe.each(BUS_AND_CLIENT)("%s with %s", (_name, kind, bus) => {
  test("remove, set and clear (cache and scope) reach every peer's L1", async () => {
    const { caches: [a, b, c] } = await instances(kind, 3, {}, false, url, bus);
    for (const x of [b!, c!]) {
      // getOrSet without an L2 publishes nothing, so each keeps its own copy.
      await x.getOrSet("k", () => "mine");
      await x.scope("s").getOrSet("k", () => "mine");
    }
    await a!.remove("k");
    await eventually(async () => (await b!.get("k")) === undefined && (await c!.get("k")) === undefined);
    expect(await b!.scope("s").get("k")).toBe("mine");
    await a!.scope("s").clear();
    await eventually(async () => (await b!.scope("s").get("k")) === undefined && (await c!.scope("s").get("k")) === undefined);
    await b!.set("x", 1);
    await a!.set("x", 2);
    await eventually(async () => (await b!.get("x")) === undefined);
    await b!.set("y", 1);
    await a!.clear();
    await eventually(async () => (await b!.get("y")) === undefined);
  });

  test("with a busSecret, unsigned and forged messages change nothing and are counted", async () => {
    const { caches: [a, b], prefix } = await instances(kind, 2, { busSecret: "s3cret" }, false, url, bus);
    await b!.set("k", "kept");
    await sendRaw(raw, bus, prefix, encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: Date.now() }));
    await sendRaw(raw, bus, prefix, encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: Date.now() }, new TextEncoder().encode("guess")));
    await sendRaw(raw, bus, prefix, "garbage");
    await eventually(() => b!.stats().busMessagesDropped === 3);
    expect(await b!.get("k")).toBe("kept");
    await a!.remove("k");
    await eventually(async () => (await b!.get("k")) === undefined);
  });
});

describe("bus repair after a lost subscription", () => {
  // CLIENT KILL TYPE pubsub cuts every subscriber on the server: these tests get their own, so
  // test files running beside them on the shared one (on machines with more cores) lose nothing.
  let own: RedisServer;
  let ownRaw: Redis;
  beforeAll(async () => {
    own = await RedisServer.start();
    ownRaw = rawClient(own.url);
  });
  afterAll(async () => {
    await Promise.all(caches.splice(0).map((c) => c.close()));
    await Promise.all(wirings.splice(0).map((w) => w.close()));
    await ownRaw?.quit();
    await own?.stop();
  });

  test("CLIENT KILL TYPE pubsub: values from before the gap are not served as fresh afterwards", async () => {
    const { caches: [a, b] } = await instances("ioredis", 2, {}, true, own.url);
    const gaps: string[] = [];
    b!.on("busDisconnect", () => gaps.push("disconnect"));
    b!.on("busReconnect", () => gaps.push("reconnect"));
    await a!.set("k", "v1");
    expect(await b!.get("k")).toBe("v1");
    await ownRaw.call("CLIENT", "KILL", "TYPE", "pubsub");
    await a!.set("k", "v2"); // this "remove" is likely published while b is not subscribed
    await eventually(() => gaps.includes("reconnect"));
    expect(gaps[0]).toBe("disconnect");
    expect(await b!.get("k")).toBe("v2");
    // The bus works again.
    await a!.set("k", "v3");
    await eventually(async () => (await b!.get("k")) === "v3");
  });

  test.each(["node-redis", "url"] as const)("CLIENT KILL TYPE pubsub with %s", async (kind) => {
    const { caches: [a, b] } = await instances(kind, 2, {}, true, own.url);
    await a!.set("k", "v1");
    expect(await b!.get("k")).toBe("v1");
    const before = b!.stats().busReconnects;
    await ownRaw.call("CLIENT", "KILL", "TYPE", "pubsub");
    await a!.set("k", "v2");
    await eventually(() => b!.stats().busReconnects > before, 10_000);
    expect(await b!.get("k")).toBe("v2");
  });
});

/** Calls `onMessage` with each message of the bus of `prefix`, as a peer hears it: SUBSCRIBE, or XREAD from the stream's end. */
async function listenRaw(bus: BusKind, prefix: string, onMessage: (message: string) => void): Promise<() => void> {
  const sub = rawClient(url);
  if (bus === "pubsub") {
    await sub.subscribe(`${prefix}:bus`);
    sub.on("message", (_channel, message: string) => onMessage(message));
    return () => sub.disconnect();
  }
  let stopped = false;
  void (async () => {
    let last = "$";
    while (!stopped) {
      const reply = (await sub.xread("BLOCK", 100, "STREAMS", `${prefix}:bus`, last).catch(() => null)) as [string, [string, string[]][]][] | null;
      for (const [id, fields] of reply?.[0]?.[1] ?? []) {
        last = id;
        onMessage(fields[1]!);
      }
    }
  })();
  // The first XREAD (from "$", the end) is on its way before anything is published.
  await new Promise((r) => setTimeout(r, 50));
  return () => {
    stopped = true;
    sub.disconnect();
  };
}

describe.each(BUS_KINDS)("order of an invalidation: L2 first, then the bus (%s)", (bus) => {
  test.each(["ioredis", "node-redis", "url"] as const)("with %s, a peer that re-reads L2 when the message arrives finds the new state", async (kind) => {
    const { caches: [a], prefix } = await instances(kind, 1, {}, true, url, bus);
    const reader = rawClient(url);
    const seen: string[] = [];
    const stop = await listenRaw(bus, prefix, (message) => {
      const [, , op, , keys] = JSON.parse(message) as [number, string, string, string[], string[]];
      if (op === "remove") void reader.get(`${prefix}::${keys[0]}`).then((v) => seen.push(`${keys[0]}=${v}`));
    });
    for (let i = 0; i < 30; i++) {
      await a!.set(`k${i}`, "old");
      await a!.remove(`k${i}`);
    }
    await eventually(() => seen.length === 60);
    // Every message about a remove found the tombstone, never the old value; a message about a set
    // found the new record (or, read a moment later, the remove that followed it).
    expect(seen.filter((_, i) => i % 2 === 1).every((s) => /\|-$/.test(s))).toBe(true);
    expect(seen.filter((_, i) => i % 2 === 0).every((s) => /\|"old"$|\|-$/.test(s))).toBe(true);
    stop();
    reader.disconnect();
  });
});
