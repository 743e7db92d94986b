/**
 * Process B of the message-broker benchmarks (bench/bus-bench.ts): holds keys and reports (with
 * the machine's monotonic clock, shared by all processes) the moment a peer's invalidation dropped
 * each one. Argv: <kind: rabbitmq|nats|nats-jetstream> <url> <prefix> <mode: layercache|raw>.
 * "raw": the client library alone (a Map as L1, a subscription as bus) — the floor.
 */
import { LayerCache } from "../src/index.js";
import { rawSubscriber, type BusKind, layercacheBus } from "./bus-kinds.js";
import { cacheSide, reportDrop, servePeer, type PeerSide } from "./peer-protocol.js";

const [kind, url, prefix, mode] = process.argv.slice(2) as [BusKind, string, string, "layercache" | "raw"];

async function rawSide(): Promise<PeerSide> {
  const l1 = new Map<string, unknown>();
  const sub = await rawSubscriber(kind, url, `${prefix}:raw`, (key) => {
    if (l1.delete(key)) reportDrop(key);
  });
  return {
    prime: async (key) => void l1.set(key, { loadedBy: "B" }),
    op: async (k, n) => void l1.set(k, { n }),
    close: () => sub.close(),
  };
}

servePeer(mode === "raw" ? await rawSide() : await cacheSide(new LayerCache({ prefix, ttl: "1h", bus: layercacheBus(kind, url) })));
