/**
 * Process B of the Kafka invalidation benchmark: holds keys in its L1 and reports (with the
 * machine's monotonic clock, shared by all processes) the moment a peer's invalidation dropped each
 * one. Argv: <broker> <prefix> <layercache|raw>. "raw": the same with @platformatic/kafka alone — a
 * Map as L1 and the library's own consumer (a group of its own, reading from the latest offset) as
 * bus: the floor the client allows on this machine.
 */
import { LayerCache } from "../src/index.js";
import { KafkaBus } from "../src/backends/kafka/index.js";
import { rawClient } from "./kafka-raw.js";

const [broker, prefix, mode] = process.argv.slice(2) as [string, string, "layercache" | "raw"];
const send = (m: unknown): void => void process.send!(m);

interface Side {
  prime(key: string): Promise<void>;
  op(k: string, n: number): Promise<unknown>;
  close(): Promise<void>;
}

async function layercacheSide(): Promise<Side> {
  const cache = new LayerCache({ prefix, ttl: "1h", bus: new KafkaBus({ brokers: [broker] }) });
  cache.on("peerInvalidation", (e) => {
    const t = process.hrtime.bigint();
    if (e.op === "remove" && e.dropped > 0) for (const key of e.keys) send({ dropped: key, t: t.toString() });
  });
  await cache.ready();
  return {
    prime: async (key) => void (await cache.getOrSet(key, async () => ({ loadedBy: "B" }))),
    op: (k, n) => (n % 5 === 0 ? cache.set(k, { n }) : cache.getOrSet(k, async () => ({ n }))),
    close: () => cache.close(),
  };
}

async function rawSide(): Promise<Side> {
  const l1 = new Map<string, unknown>();
  const raw = await rawClient(broker, `${prefix}-raw`, (key) => {
    const t = process.hrtime.bigint();
    if (l1.delete(key)) send({ dropped: key, t: t.toString() });
  });
  return {
    prime: async (key) => void l1.set(key, { loadedBy: "B" }),
    op: async (k, n) => {
      if (n % 5 !== 0) return l1.get(k) ?? l1.set(k, { n });
      l1.set(k, { n });
      await raw.publish(k);
    },
    close: () => raw.close(),
  };
}

const side = mode === "raw" ? await rawSide() : await layercacheSide();
let background: ReturnType<typeof setInterval> | undefined;
process.on("message", async (m: { op: string; key?: string; perTick?: number }) => {
  if (m.op === "prime") {
    await side.prime(m.key!);
    send({ primed: m.key });
  } else if (m.op === "background") {
    let n = 0;
    background = setInterval(() => {
      for (let i = 0; i < m.perTick!; i++) void side.op(`bg:${n++ % 2000}`, n).catch(() => {});
    }, 2);
  } else if (m.op === "stop") {
    if (background) clearInterval(background);
    await side.close();
    send({ stopped: true });
    process.exit(0);
  }
});
send({ ready: true });
