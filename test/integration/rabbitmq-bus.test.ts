import { Connection } from "rabbitmq-client";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { RabbitMQBus } from "../../src/backends/rabbitmq/index.js";
import { exchangeName } from "../../src/backends/rabbitmq/bus.js";
import { RabbitMQServer } from "../support/rabbitmq-server.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";
import { TcpProxy } from "../support/tcp-proxy.js";

/**
 * RabbitMQBus on a rabbitmq-server of this file's own (its connections are closed from the server
 * side, and it is restarted): every loss of the consuming channel is a gap the cache repairs; the
 * broker keeps one exchange per prefix and nothing per instance.
 */
let server: RabbitMQServer;
let raw: Connection;
const caches: LayerCache[] = [];
beforeAll(async () => {
  server = await RabbitMQServer.start();
  raw = new Connection({ url: server.url, retryLow: 100, retryHigh: 1000 });
  raw.on("error", () => {});
}, 90_000);
afterAll(async () => {
  await Promise.all(caches.map((c) => c.close()));
  await raw?.close();
  await server?.stop();
});

/** A (publisher) and B (the instance under test), with no L2: B's own loads live in its L1 only, so an L1 repair shows as a miss. */
async function pair(extra: Record<string, unknown> = {}) {
  const prefix = uniquePrefix();
  const make = async (): Promise<LayerCache> => {
    const cache = new LayerCache({ prefix, bus: new RabbitMQBus({ url: server.url, heartbeat: "2s" }), ttl: "1h", ...extra });
    caches.push(cache);
    await cache.ready();
    return cache;
  };
  const [a, b] = [await make(), await make()];
  const events: string[] = [];
  for (const name of ["busDisconnect", "busReconnect", "busCaughtUp"] as const) b.on(name, () => events.push(name));
  return { a, b, prefix, events };
}

async function hold(b: LayerCache): Promise<void> {
  await b.getOrSet("held", async () => "b's own");
  expect(await b.get("held")).toBe("b's own");
}

/** Publishes `text` to the exchange of `prefix` as a peer (or an intruder) would. */
async function sendRaw(prefix: string, text: string): Promise<void> {
  const pub = raw.createPublisher({ confirm: true });
  await pub.send({ exchange: exchangeName(`${prefix}:bus`), routingKey: "" }, Buffer.from(text));
  await pub.close();
}

describe("RabbitMQBus", () => {
  test("remove and clear reach the peer; with a busSecret, unsigned and forged messages are dropped and counted", async () => {
    const { a, b, prefix } = await pair({ busSecret: "s3cret" });
    for (const k of ["k", "s"]) await b.getOrSet(k, async () => `${k} v1`);
    await sendRaw(prefix, encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: Date.now() }));
    await sendRaw(prefix, "garbage");
    await eventually(() => b.stats().busMessagesDropped === 2);
    expect(await b.get("k")).toBe("k v1");
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
    await a.clear();
    await eventually(async () => (await b.get("s")) === undefined);
  });

  test("connections closed from the server side (rabbitmqctl close_all_connections): B reports the gap, repairs its L1 on a new queue, and the bus goes on", async () => {
    const { a, b, events } = await pair();
    await b.getOrSet("k", async () => "k v1");
    await hold(b);
    await server.closeAllConnections();
    await eventually(() => events.includes("busReconnect"), 15_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined(); // revalidated: it may have been invalidated in the gap
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 10_000);
  });

  test("a broker restart: B reports the gap and repairs; the durable exchange is still there; nothing crashed", async () => {
    const { a, b, prefix, events } = await pair();
    await b.getOrSet("k", async () => "k v1");
    await hold(b);
    await server.restart();
    await eventually(() => events.includes("busReconnect"), 30_000);
    expect(events).toEqual(["busDisconnect", "busReconnect"]);
    expect(await b.get("held")).toBeUndefined();
    expect(await server.exchanges()).toContain(`${prefix}:bus`);
    await eventually(async () => {
      await a.remove("k");
      return (await b.get("k")) === undefined;
    }, 20_000);
  }, 60_000);

  test("close() while the broker is unreachable does not wait for it (nothing hangs, nothing is left rejected)", async () => {
    const proxy = await TcpProxy.start(server.port);
    const cache = new LayerCache({ prefix: uniquePrefix(), bus: new RabbitMQBus({ url: `amqp://guest:guest@127.0.0.1:${proxy.port}` }) });
    const events: string[] = [];
    cache.on("busDisconnect", () => events.push("busDisconnect"));
    await cache.ready();
    proxy.cut();
    await eventually(() => events.includes("busDisconnect"), 10_000);
    await cache.remove("k"); // queued: the bus is down
    await cache.close();
    await proxy.close();
  }, 15_000);

  test("nothing is left behind: after instances come and go (closed, or their connection dropped), one exchange per prefix and no queue", async () => {
    const prefix = uniquePrefix();
    const before = new Set((await server.queues()).map((q) => q.name));
    for (let round = 0; round < 5; round++) {
      const client = new Connection({ url: server.url });
      client.on("error", () => {});
      const cache = new LayerCache({ prefix, bus: new RabbitMQBus({ client }) });
      await cache.ready();
      for (let i = 0; i < 20; i++) await cache.remove(`k${round}-${i}`);
      // Half of them end as a crash would: the connection drops, the cache is never closed.
      if (round % 2 === 0) await cache.close();
      if (round % 2 === 0) await client.close();
      else client.unsafeDestroy();
    }
    await eventually(async () => (await server.queues()).filter((q) => !before.has(q.name)).length === 0, 10_000);
    expect((await server.exchanges()).filter((e) => e.startsWith(prefix))).toEqual([`${prefix}:bus`]);
  });

  test("options: bad ones are a TypeError naming the option; long prefixes get an exchange name within AMQP's 255 bytes", () => {
    expect(() => new RabbitMQBus({} as never)).toThrow(/client/);
    expect(() => new RabbitMQBus({ url: "amqp://x", client: raw })).toThrow(TypeError);
    expect(() => new RabbitMQBus({ client: {} })).toThrow(/"client"/);
    expect(() => new RabbitMQBus({ url: "http://x" })).toThrow(/"url"/);
    expect(() => new RabbitMQBus({ url: "amqp://x", heartbeat: "500ms" })).toThrow(/"heartbeat"/);
    expect(() => new RabbitMQBus({ url: "amqp://x", exchange: "e" } as never)).toThrow(/"exchange"/);
    expect(() => new RabbitMQBus({ url: "amqp://x", circuitBreaker: { threshold: -1 } })).toThrow(/"circuitBreaker.threshold"/);
    expect(exchangeName("layercache:bus")).toBe("layercache:bus");
    const long = exchangeName("é".repeat(300));
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(255);
    expect(long).not.toBe(exchangeName(`${"é".repeat(299)}e`));
  });
});
