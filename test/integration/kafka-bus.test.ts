import { randomBytes } from "node:crypto";
import { Admin, Producer } from "@platformatic/kafka";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { KafkaBus } from "../../src/backends/kafka/index.js";
import { keyOf, topicFor } from "../../src/backends/kafka/topic.js";
import { KafkaServer } from "../support/kafka-server.js";
import { PATIENT } from "../support/patient.js";
import { waitFor } from "../support/servers.js";

/**
 * KafkaBus on a Kafka broker of this file's own (tests restart it and wipe its log). Instance A
 * reaches the broker directly, instance B through a relay the test cuts: B misses what A publishes
 * meanwhile and catches up from its offsets, keeping its L1; when catching up is impossible — the
 * log no longer holds B's offsets, or the broker lost the topic — B repairs its L1.
 */
let server: KafkaServer;
let admin: Admin;
const caches: LayerCache[] = [];
beforeAll(async () => {
  server = await KafkaServer.start({ cuttable: true });
  admin = new Admin({ clientId: "kafka-bus-test", bootstrapBrokers: server.brokers });
}, 90_000);
afterAll(async () => {
  await Promise.all(caches.map((c) => c.close()));
  await admin?.close();
  await server?.stop();
});

/** Short heartbeat (a fetch waits at most a third of it): gaps are seen and closed quickly. */
const FAST = { ...PATIENT, heartbeat: "600ms" } as const;

const uniquePrefix = (): string => `t${randomBytes(5).toString("hex")}`;
const eventually = (what: string | (() => string), check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> => waitFor(what, async () => await check(), ms);

function cache(prefix: string, brokers: string[], extra: Record<string, unknown> = {}): LayerCache {
  const c = new LayerCache({ prefix, bus: new KafkaBus({ brokers, ...FAST }), ttl: "1h", ...extra });
  caches.push(c);
  return c;
}

/** A (direct) and B (behind the relay), connected; B's bus events as they come. */
async function pair(extra: Record<string, unknown> = {}) {
  const prefix = uniquePrefix();
  const a = cache(prefix, server.brokers, extra);
  const b = cache(prefix, server.relayBrokers, extra);
  await Promise.all([a.ready(), b.ready()]);
  const events: string[] = [];
  for (const name of ["busDisconnect", "busReconnect", "busCaughtUp"] as const) b.on(name, () => events.push(name));
  return { a, b, prefix, events };
}

/** B holds keys in L1 that only its own loader knows: served while trusted, reloaded after a repair. */
async function fill(b: LayerCache, keys: string[]): Promise<void> {
  for (const k of keys) expect(await b.getOrSet(k, async () => `b's ${k}`)).toBe(`b's ${k}`);
}

/** Whether B still serves `k` from its L1 (a read that does not call the loader). */
async function held(b: LayerCache, k: string): Promise<boolean> {
  return (await b.getOrSet(k, async () => "reloaded")) === `b's ${k}`;
}

describe("KafkaBus: gaps", () => {
  test("B's connections are cut while A publishes: B catches up from its offsets after they are mended (no repair)", async () => {
    const { a, b, events } = await pair();
    await fill(b, ["k1", "k2", "held"]);
    server.relay!.cut();
    await eventually("B to notice the cut", () => events.includes("busDisconnect"));
    await a.remove("k1");
    await a.remove("k2");
    await new Promise((r) => setTimeout(r, 300));
    expect(await held(b, "k1")).toBe(true); // B is cut off: it cannot know yet
    server.relay!.mend();
    await eventually("B to catch up", () => events.includes("busCaughtUp"));
    expect(events).toEqual(["busDisconnect", "busCaughtUp"]);
    expect(b.stats().busReconnects).toBe(0);
    expect(await held(b, "k1")).toBe(false);
    expect(await held(b, "k2")).toBe(false);
    expect(await held(b, "held")).toBe(true); // not repaired: nobody invalidated it
    // And the bus goes on as before.
    await fill(b, ["k3"]);
    await a.remove("k3");
    await eventually("k3 to be dropped", async () => !(await held(b, "k3")));
  });

  test("the log no longer holds B's offset (records deleted past it while B was cut): B repairs its L1", async () => {
    const { a, b, prefix, events } = await pair();
    await fill(b, ["k", "held"]);
    server.relay!.cut();
    await eventually("B to notice the cut", () => events.includes("busDisconnect"));
    await a.remove("k");
    for (let i = 0; i < 20; i++) await a.remove(`other${i}`);
    // What retention does to old messages, at once: the log now starts after everything B missed.
    const topic = topicFor(`${prefix}:bus`);
    const ends = await admin.listOffsets({ topics: [{ name: topic, partitions: [{ partitionIndex: 0, timestamp: -1n }] }] } as never);
    const end = (ends as unknown as { partitions: { offset: bigint }[] }[])[0]!.partitions[0]!.offset;
    await admin.deleteRecords({ topics: [{ name: topic, partitions: [{ partition: 0, offset: end }] }] } as never);
    server.relay!.mend();
    await eventually("B to repair", () => events.includes("busReconnect"));
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(b.stats().busCatchUps).toBe(0);
    expect(await held(b, "held")).toBe(false); // revalidated: it may have been invalidated in the gap
    await fill(b, ["k2"]);
    await a.remove("k2");
    await eventually("k2 to be dropped", async () => !(await held(b, "k2")));
  });

  test("the broker hangs (SIGSTOP): the heartbeat finds the reader silent; after SIGCONT it catches up (no repair)", async () => {
    const { a, b, events } = await pair();
    await fill(b, ["k", "held"]);
    server.pause();
    try {
      await eventually("B to notice the silence", () => events.includes("busDisconnect"));
    } finally {
      server.resume();
    }
    await a.remove("k");
    await eventually("B to be told k was removed", async () => !(await held(b, "k")), 30_000);
    await eventually("B to be back", () => events.at(-1) === "busCaughtUp", 30_000);
    expect(events.filter((e) => e === "busReconnect")).toEqual([]);
    expect(await held(b, "held")).toBe(true);
  }, 60_000);

  test("the broker restarts with its log: everyone catches up on what was published once it was back (no repair)", async () => {
    const { a, b, events } = await pair();
    await fill(b, ["k", "held"]);
    await server.restart();
    await a.remove("k"); // queued by A while its publish fails, sent once the broker answers
    await eventually("B to be told k was removed", async () => !(await held(b, "k")), 30_000);
    await eventually("B to be back", () => events.at(-1) === "busCaughtUp", 30_000);
    expect(events.filter((e) => e === "busReconnect")).toEqual([]);
    expect(await held(b, "held")).toBe(true);
  }, 60_000);

  test("the broker restarts without its log (a replacement broker): the topic is made again and B repairs its L1", async () => {
    const { a, b, events } = await pair();
    await fill(b, ["held"]);
    await server.restart({ keepData: false });
    await eventually(() => `B to repair (events: ${events.join(", ")})`, () => events.includes("busReconnect"), 30_000);
    expect(await held(b, "held")).toBe(false);
    await fill(b, ["k"]);
    await a.remove("k");
    await eventually("k to be dropped", async () => !(await held(b, "k")), 30_000);
  }, 60_000);
});

describe("KafkaBus: on the wire", () => {
  test("signed messages (busSecret) go across; a forged one is dropped and counted", async () => {
    const { a, b, prefix } = await pair({ busSecret: "s3cret-s3cret-s3cret" });
    await fill(b, ["k", "other"]);
    const producer = new Producer({ clientId: "intruder", bootstrapBrokers: server.brokers });
    try {
      const forged = encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["other"], at: Date.now() }, new TextEncoder().encode("wrong-secret-wrong"));
      await producer.send({ messages: [{ topic: topicFor(`${prefix}:bus`), value: Buffer.from(forged) }] });
    } finally {
      await producer.close();
    }
    await a.remove("k");
    await eventually("k to be dropped", async () => !(await held(b, "k")));
    await eventually("the forged message to be counted", () => b.stats().busMessagesDropped > 0);
    expect(await held(b, "other")).toBe(true);
  });

  test("nothing is left behind: instances come and go, the broker keeps one topic per prefix and no consumer group", async () => {
    const prefix = uniquePrefix();
    for (let round = 0; round < 5; round++) {
      const c = new LayerCache({ prefix, bus: new KafkaBus({ brokers: server.brokers, ...FAST }) });
      await c.ready();
      for (let i = 0; i < 20; i++) await c.remove(`k${round}-${i}`);
      await c.close();
    }
    const topics = (await admin.listTopics()).filter((t) => t.startsWith(topicFor(prefix)));
    expect(topics).toEqual([topicFor(`${prefix}:bus`)]);
    expect([...(await admin.listGroups()).keys()]).toEqual([]);
  });

  test("the topic is created with the documented settings, and each scope's messages are keyed by it", async () => {
    const prefix = uniquePrefix();
    const c = new LayerCache({ prefix, bus: new KafkaBus({ brokers: server.brokers, partitions: 3, retention: "2h", ...FAST }) });
    await c.ready();
    const topic = topicFor(`${prefix}:bus`);
    const md = await admin.metadata({ topics: [topic] });
    expect(md.topics.get(topic)!.partitionsCount).toBe(3);
    const [described] = await admin.describeConfigs({ resources: [{ resourceType: 2, resourceName: topic, configurationKeys: ["retention.ms", "cleanup.policy", "max.message.bytes"] }] } as never);
    const configs = Object.fromEntries((described as { configs: { name: string; value: string }[] }).configs.map((x) => [x.name, x.value]));
    expect(configs).toMatchObject({ "retention.ms": "7200000", "cleanup.policy": "delete", "max.message.bytes": String(1024 * 1024 + 12) });
    // Every partition is read: invalidations of several scopes (keyed apart) all arrive.
    const d = new LayerCache({ prefix, bus: new KafkaBus({ brokers: server.brokers, partitions: 3, ...FAST }) });
    caches.push(d);
    await d.ready();
    const scopes = ["users", "orders", "carts", "eu", "us"].map((name) => d.scope(name));
    for (const s of scopes) await s.getOrSet("k", async () => "d's");
    for (const name of ["users", "orders", "carts", "eu", "us"]) await c.scope(name).remove("k");
    await eventually("every scope's removal to reach d", () => d.stats().peerInvalidations >= 5);
    for (const s of scopes) expect(await s.getOrSet("k", async () => "reloaded")).toBe("reloaded");
    await c.close();
    const m = encodeMessage({ from: "x", op: "remove", scope: ["users", "eu"], keys: ["k"], at: 1 });
    expect(keyOf(m, "fallback")).toBe('s["users","eu"]');
    expect(keyOf("not a cache message", "fallback")).toBe("fallback");
  });
});

describe("KafkaBus: names and options", () => {
  test("channels map to distinct legal topic names (escaping, no '.', long ones hashed)", () => {
    const channels = ["app:bus", "app_bus", "app.bus", "app-bus", "ü:bus", "a".repeat(300), "a".repeat(300) + "b", "x".repeat(249)];
    const names = channels.map(topicFor);
    expect(new Set(names).size).toBe(channels.length);
    for (const n of names) {
      expect(n).toMatch(/^[A-Za-z0-9_-]{1,249}$/);
      expect(n).not.toContain(".");
    }
    expect(topicFor("app:bus")).toBe("app_3abus");
  });

  test("bad options are a TypeError naming the option", () => {
    const brokers = ["127.0.0.1:9092"];
    expect(() => new KafkaBus({ brokers, group: "g" } as never)).toThrow(TypeError);
    expect(() => new KafkaBus({ brokers, group: "g" } as never)).toThrow(/"group"/);
    expect(() => new KafkaBus({} as never)).toThrow(/client/);
    expect(() => new KafkaBus({ brokers: [] })).toThrow(/"brokers"/);
    expect(() => new KafkaBus({ brokers: ["nohost"] })).toThrow(/"brokers"/);
    expect(() => new KafkaBus({ client: {} })).toThrow(/"client"/);
    for (const partitions of [0, -1, 1.5, "2"]) expect(() => new KafkaBus({ brokers, partitions: partitions as number })).toThrow(/"partitions"/);
    expect(() => new KafkaBus({ brokers, replicationFactor: 0 })).toThrow(/"replicationFactor"/);
    expect(() => new KafkaBus({ brokers, heartbeat: 0 })).toThrow(/"heartbeat"/);
    expect(() => new KafkaBus({ brokers, retention: 0 })).toThrow(/"retention"/);
    expect(() => new KafkaBus({ brokers, clientOptions: [] as never })).toThrow(/"clientOptions"/);
  });

  test("a broker that is not there: connecting fails with the client's error, nothing is left running", async () => {
    const bus = new KafkaBus({ brokers: ["127.0.0.1:1"], clientOptions: { connectTimeout: 200 } });
    await expect(bus.connect("nowhere", { onMessage() {}, onDisconnect() {}, onReconnect() {}, onError() {} })).rejects.toThrow();
  });
});
