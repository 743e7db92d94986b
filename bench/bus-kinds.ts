/**
 * The message-broker buses of the benchmarks, and the raw floor of each: the client library alone,
 * doing what the bus does underneath (RabbitMQ: a fanout exchange, an exclusive queue, confirmed
 * publishes, a connection to publish and one to consume; NATS: a subject, publish; JetStream: a
 * stream, an ordered consumer, acknowledged publishes — on one connection per process).
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Connection } from "rabbitmq-client";
import type { Bus } from "../src/backend.js";
import { NatsBus } from "../src/backends/nats/index.js";
import { RabbitMQBus } from "../src/backends/rabbitmq/index.js";

export type BusKind = "rabbitmq" | "nats" | "nats-jetstream";

export function layercacheBus(kind: BusKind, url: string): Bus {
  if (kind === "rabbitmq") return new RabbitMQBus({ url });
  return new NatsBus({ servers: url, jetstream: kind === "nats-jetstream" ? { storage: "file" } : false });
}

export interface Raw {
  publish(text: string): Promise<void>;
  close(): Promise<void>;
  /** NATS: the connection, which a listener in the same process shares (as the bus does). */
  nc?: NatsConnection;
}

/** A name the raw floor can use as a subject and a stream name. */
const plain = (channel: string): string => channel.replace(/[^A-Za-z0-9_-]/g, "_");

/** Subscribes `onText` to `channel` with the client library alone; resolves once subscribed. */
export async function rawSubscriber(kind: BusKind, url: string, channel: string, onText: (text: string) => void, shared?: NatsConnection): Promise<Raw> {
  if (kind === "rabbitmq") {
    const conn = new Connection({ url, noDelay: true });
    conn.on("error", () => {});
    const ch = await conn.acquire();
    await ch.exchangeDeclare({ exchange: channel, type: "fanout", durable: true });
    const { queue } = await ch.queueDeclare({ queue: "", exclusive: true, autoDelete: true });
    await ch.queueBind({ queue, exchange: channel });
    await ch.basicConsume({ queue, noAck: true }, (msg) => onText(Buffer.isBuffer(msg.body) ? msg.body.toString() : String(msg.body)));
    return { publish: () => Promise.reject(new Error("subscriber only")), close: async () => (await ch.close(), await conn.close()) };
  }
  const nc = shared ?? (await connect({ servers: url }));
  const closeNc = shared ? async () => {} : () => nc.close();
  if (kind === "nats") {
    nc.subscribe(plain(channel), { callback: (_e, m) => onText(m.string()) });
    await nc.flush();
    return { publish: () => Promise.reject(new Error("subscriber only")), close: closeNc };
  }
  await ensureStream(nc, channel);
  const js = jetstream(nc);
  const info = await (await jetstreamManager(nc)).streams.info(plain(channel));
  const consumer = await js.consumers.get(plain(channel), { deliver_policy: "by_start_sequence" as never, opt_start_seq: info.state.last_seq + 1 });
  const messages = await consumer.consume({ callback: (m) => onText(m.string()) });
  return { publish: () => Promise.reject(new Error("subscriber only")), close: async () => (await messages.close(), await closeNc()) };
}

/** Publishes to `channel` with the client library alone, as the bus would (confirmed, acknowledged). */
export async function rawPublisher(kind: BusKind, url: string, channel: string): Promise<Raw> {
  if (kind === "rabbitmq") {
    const conn = new Connection({ url, noDelay: true });
    conn.on("error", () => {});
    const pub = conn.createPublisher({ confirm: true, exchanges: [{ exchange: channel, type: "fanout", durable: true }] });
    return { publish: (text) => pub.send({ exchange: channel, routingKey: "" }, Buffer.from(text)), close: async () => (await pub.close(), await conn.close()) };
  }
  const nc = await connect({ servers: url });
  if (kind === "nats") {
    return {
      nc,
      publish: async (text) => {
        nc.publish(plain(channel), text);
        await nc.flush();
      },
      close: () => nc.close(),
    };
  }
  await ensureStream(nc, channel);
  const js = jetstream(nc);
  return { nc, publish: async (text) => void (await js.publish(plain(channel), text)), close: () => nc.close() };
}

async function ensureStream(nc: NatsConnection, channel: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(plain(channel));
  } catch {
    await jsm.streams.add({ name: plain(channel), subjects: [plain(channel)], max_msgs: 10_000, storage: "file" as never }).catch(() => {});
  }
}
