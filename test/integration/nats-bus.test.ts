import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { NatsBus } from "../../src/backends/nats/index.js";
import { streamOf, subjectOf } from "../../src/backends/nats/bus.js";
import { NatsServer } from "../support/nats-server.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";
import { TcpProxy } from "../support/tcp-proxy.js";

/**
 * NatsBus on a nats-server of this file's own (it is restarted). Core NATS: a disconnect is a
 * gap, repaired. JetStream: an instance cut off (through a relay that drops its connection) or
 * across a server restart catches up on what it missed and keeps its L1; when the stream no
 * longer holds what it missed (discarded by its limits, purged, deleted) it repairs.
 */
let server: NatsServer;
let raw: NatsConnection;
const caches: LayerCache[] = [];
const proxies: TcpProxy[] = [];
beforeAll(async () => {
  server = await NatsServer.start();
  raw = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
});
afterAll(async () => {
  await Promise.all(caches.map((c) => c.close()));
  await Promise.all(proxies.map((p) => p.close()));
  await raw?.close();
  await server?.stop();
});

type Mode = false | { maxMessages?: number; storage?: "file" | "memory" };

/**
 * A (publisher, straight to the server) and B (the instance under test, through a relay the test
 * can cut), sharing no L2: B's own loads live in its L1 only, so an L1 repair shows as a miss.
 */
async function pair(jetstreamMode: Mode, extra: Record<string, unknown> = {}) {
  const prefix = uniquePrefix();
  const proxy = await TcpProxy.start(server.port);
  proxies.push(proxy);
  const make = async (servers: string): Promise<LayerCache> => {
    const cache = new LayerCache({ prefix, bus: new NatsBus({ servers, jetstream: jetstreamMode, heartbeat: "1s" }), ttl: "1h", ...extra });
    caches.push(cache);
    await cache.ready();
    return cache;
  };
  const a = await make(server.url);
  const b = await make(`nats://127.0.0.1:${proxy.port}`);
  const events: string[] = [];
  for (const name of ["busDisconnect", "busReconnect", "busCaughtUp"] as const) b.on(name, () => events.push(name));
  return { a, b, prefix, proxy, events };
}

/** B holds a value of its own in L1 (no L2): served only while L1 is trusted. */
async function hold(b: LayerCache): Promise<void> {
  await b.getOrSet("held", async () => "b's own");
  expect(await b.get("held")).toBe("b's own");
}

/** B has loaded `keys` (its own copies; A's removals must reach it). */
async function loaded(b: LayerCache, keys: string[]): Promise<void> {
  for (const k of keys) await b.getOrSet(k, async () => `${k} v1`);
}

describe("NatsBus, core NATS", () => {
  test("remove and clear reach the peer; with a busSecret, unsigned and forged messages are dropped and counted", async () => {
    const { a, b, prefix } = await pair(false, { busSecret: "s3cret" });
    await loaded(b, ["k", "s"]);
    raw.publish(subjectOf(`${prefix}:bus`), encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: Date.now() }));
    raw.publish(subjectOf(`${prefix}:bus`), "garbage");
    await raw.flush();
    await eventually(() => b.stats().busMessagesDropped === 2);
    expect(await b.get("k")).toBe("k v1");
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
    await a.clear();
    await eventually(async () => (await b.get("s")) === undefined);
  });

  test("a server restart is a gap: B reports it and repairs its L1 once resubscribed; the bus goes on", async () => {
    const { a, b, events } = await pair(false);
    await loaded(b, ["k"]);
    await hold(b);
    await server.restart();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined(); // revalidated: it may have been invalidated in the gap
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 10_000);
  });

  test("B cut off alone (its connection dropped, peers go on) is a gap too", async () => {
    const { a, b, proxy, events } = await pair(false);
    await loaded(b, ["k"]);
    await hold(b);
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    await a.remove("k"); // published while B is away: lost for B
    proxy.restore();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined();
    expect(await b.get("k")).toBeUndefined();
  });
});

describe("NatsBus, JetStream", () => {
  test("messages published while B is cut off are applied when it is back; its other L1 entries stay fresh (catch-up, not repair)", async () => {
    const { a, b, proxy, events } = await pair({});
    await loaded(b, ["k1", "k2", "k3"]);
    await hold(b);
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    await a.remove("k1");
    await a.scope("other").clear();
    await a.remove("k2");
    proxy.restore();
    await eventually(() => events.includes("busCaughtUp"), 15_000);
    expect(events).toEqual(["busDisconnect", "busCaughtUp"]);
    expect(await b.get("k1")).toBeUndefined();
    expect(await b.get("k2")).toBeUndefined();
    expect(await b.get("k3")).toBe("k3 v1");
    expect(await b.get("held")).toBe("b's own"); // not repaired
    expect(b.stats().busReconnects).toBe(0);
    await a.remove("k3");
    await eventually(async () => (await b.get("k3")) === undefined);
  });

  test("a server restart (file storage keeps the stream): B catches up and keeps its L1", async () => {
    const { a, b, events } = await pair({ storage: "file" });
    await loaded(b, ["k"]);
    await hold(b);
    await server.restart();
    await eventually(() => events.includes("busCaughtUp"), 15_000);
    expect(events).toEqual(["busDisconnect", "busCaughtUp"]);
    expect(await b.get("held")).toBe("b's own");
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 10_000);
  });

  test("a server restart that loses the stream (memory storage): B repairs, and the stream is created again", async () => {
    const { a, b, events } = await pair({ storage: "memory" });
    await loaded(b, ["k"]);
    await hold(b);
    await a.remove("before");
    await server.restart();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined();
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 10_000);
  });

  test("the stream discarded messages B had not read (maxMessages 10, 50 published while B was away): B repairs", async () => {
    const { a, b, proxy, events } = await pair({ maxMessages: 10 });
    await loaded(b, ["k"]);
    await hold(b);
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    for (let i = 0; i < 50; i++) await a.remove(`other${i}`);
    proxy.restore();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(b.stats().busCatchUps).toBe(0);
    expect(await b.get("held")).toBeUndefined();
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
  });

  test.each([
    ["purged", "purge"],
    ["deleted", "delete"],
  ] as const)("the stream was %s while B was away: B repairs, the stream is back and the bus goes on", async (_what, how) => {
    const { a, b, prefix, proxy, events } = await pair({});
    await loaded(b, ["k"]);
    await hold(b);
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    await a.remove("gone");
    const jsm = await jetstreamManager(raw);
    if (how === "purge") await jsm.streams.purge(streamOf(`${prefix}:bus`));
    else await jsm.streams.delete(streamOf(`${prefix}:bus`));
    proxy.restore();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined();
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 10_000);
  });

  test("nothing is left behind: one stream per prefix with its limits, no consumer once instances close, a minute's life for a crashed one's", async () => {
    const prefix = uniquePrefix();
    for (let round = 0; round < 4; round++) {
      const cache = new LayerCache({ prefix, bus: new NatsBus({ servers: server.url, jetstream: { maxMessages: 100, maxAge: "10m" } }) });
      await cache.ready();
      for (let i = 0; i < 60; i++) await cache.remove(`k${round}-${i}`);
      await cache.close();
    }
    const jsm = await jetstreamManager(raw);
    const info = await jsm.streams.info(streamOf(`${prefix}:bus`));
    expect(info.config.subjects).toEqual([subjectOf(`${prefix}:bus`)]);
    expect(info.config.max_msgs).toBe(100);
    expect(info.config.max_age).toBe(10 * 60 * 1e9);
    expect(info.state.messages).toBeLessThanOrEqual(100);
    await eventually(async () => (await jsm.streams.info(streamOf(`${prefix}:bus`))).state.consumer_count === 0, 10_000);
    // An instance that ends without closing (its connection simply drops, as in a crash) leaves its
    // ordered consumer, set to be removed by the server after a minute without it.
    const nc = await connect({ servers: server.url });
    const crashed = new LayerCache({ prefix, bus: new NatsBus({ client: nc, jetstream: true }) });
    await crashed.ready();
    await eventually(async () => {
      const consumers = await jsm.consumers.list(streamOf(`${prefix}:bus`)).next();
      return consumers.length === 1 && consumers[0]!.config.inactive_threshold === 60e9;
    }, 5_000);
    await nc.close();
    // A raw publish to the subject is stored: the stream is the one instances read.
    await jetstream(raw).publish(subjectOf(`${prefix}:bus`), "x");
  });
});

describe("NatsBus close", () => {
  test.each([
    ["core NATS", false],
    ["JetStream", {}],
  ] as const)("%s: close() while the server is unreachable does not wait for it", async (_name, jetstreamMode) => {
    const { b, proxy, events } = await pair(jetstreamMode);
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    await b.remove("k");
    await b.close();
  }, 15_000);
});

describe("NatsBus options", () => {
  test("bad options are a TypeError naming the option", () => {
    expect(() => new NatsBus({} as never)).toThrow(/client/);
    expect(() => new NatsBus({ servers: "nats://127.0.0.1:4222", client: {} } as never)).toThrow(TypeError);
    expect(() => new NatsBus({ client: {} })).toThrow(/"client"/);
    expect(() => new NatsBus({ servers: [] })).toThrow(/"servers"/);
    expect(() => new NatsBus({ servers: "nats://127.0.0.1:4222", subject: "x" } as never)).toThrow(/"subject"/);
    expect(() => new NatsBus({ servers: "nats://127.0.0.1:4222", heartbeat: 0 })).toThrow(/"heartbeat"/);
    for (const maxMessages of [0, -1, 1.5, "10"]) expect(() => new NatsBus({ servers: "nats://x:1", jetstream: { maxMessages: maxMessages as number } })).toThrow(/"jetstream.maxMessages"/);
    expect(() => new NatsBus({ servers: "nats://x:1", jetstream: { maxAge: 0 } })).toThrow(/"jetstream.maxAge"/);
    expect(() => new NatsBus({ servers: "nats://x:1", jetstream: { storage: "disk" as never } })).toThrow(/"jetstream.storage"/);
    expect(() => new NatsBus({ servers: "nats://x:1", jetstream: { max_msgs: 1 } as never })).toThrow(/"jetstream.max_msgs"/);
  });

  test("subjects and stream names: one per channel, dots and wildcards are plain text", () => {
    expect(subjectOf("layercache:bus")).toBe("layercache:bus");
    expect(subjectOf("my.app:bus")).toBe("my%2Eapp:bus");
    expect(subjectOf("a*:bus")).not.toBe(subjectOf("a>:bus"));
    expect(subjectOf("ключ")).toMatch(/^[%0-9A-F]+$/);
    expect(streamOf("my.app:bus")).toMatch(/^my_app_bus-[0-9a-f]{16}$/);
    expect(streamOf("a.b")).not.toBe(streamOf("a_b"));
  });
});
