/**
 * Process B of the message-broker benchmarks (bench/bus-bench.ts): holds keys and reports (with
 * the machine's monotonic clock, shared by all processes) the moment a peer's invalidation dropped
 * each one. Argv: <kind: rabbitmq|nats|nats-jetstream> <url> <prefix> <mode: layercache|raw>.
 * "raw": the client library alone (a Map as L1, a subscription as bus) — the floor.
 */
import { LayerCache } from "../src/index.js";
import { rawSubscriber, type BusKind, layercacheBus } from "./bus-kinds.js";

const [kind, url, prefix, mode] = process.argv.slice(2) as [BusKind, string, string, "layercache" | "raw"];
const send = (m: unknown): void => void process.send!(m);

interface Side {
  prime(key: string): Promise<void>;
  close(): Promise<void>;
}

async function layercacheSide(): Promise<Side> {
  const cache = new LayerCache({ prefix, ttl: "1h", bus: layercacheBus(kind, url) });
  cache.on("peerInvalidation", (e) => {
    const t = process.hrtime.bigint();
    if (e.op === "remove" && e.dropped > 0) for (const key of e.keys) send({ dropped: key, t: t.toString() });
  });
  await cache.ready();
  return {
    prime: async (key) => void (await cache.getOrSet(key, async () => ({ loadedBy: "B" }))),
    close: () => cache.close(),
  };
}

async function rawSide(): Promise<Side> {
  const l1 = new Map<string, unknown>();
  const sub = await rawSubscriber(kind, url, `${prefix}:raw`, (key) => {
    const t = process.hrtime.bigint();
    if (l1.delete(key)) send({ dropped: key, t: t.toString() });
  });
  return {
    prime: async (key) => void l1.set(key, { loadedBy: "B" }),
    close: () => sub.close(),
  };
}

const side = mode === "raw" ? await rawSide() : await layercacheSide();
process.on("message", async (m: { op: string; key?: string }) => {
  if (m.op === "prime") {
    await side.prime(m.key!);
    send({ primed: m.key });
  } else if (m.op === "stop") {
    await side.close();
    send({ stopped: true });
    process.exit(0);
  }
});
send({ ready: true });
