/**
 * Process B of the Kafka invalidation benchmark (see peer-protocol.ts). Argv: <broker> <prefix>
 * <layercache|raw>. "raw": the same with @platformatic/kafka alone — a Map as L1 and the library's
 * own consumer as bus: the floor the client allows on this machine.
 */
import { LayerCache } from "../src/index.js";
import { KafkaBus } from "../src/backends/kafka/index.js";
import { rawClient } from "./kafka-raw.js";
import { cacheSide, reportDrop, servePeer, type PeerSide } from "./peer-protocol.js";

const [broker, prefix, mode] = process.argv.slice(2) as [string, string, "layercache" | "raw"];

function layercacheSide(): Promise<PeerSide> {
  return cacheSide(new LayerCache({ prefix, ttl: "1h", bus: new KafkaBus({ brokers: [broker] }) }));
}

async function rawSide(): Promise<PeerSide> {
  const l1 = new Map<string, unknown>();
  const raw = await rawClient(broker, `${prefix}-raw`, (key) => {
    if (l1.delete(key)) reportDrop(key);
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

servePeer(mode === "raw" ? await rawSide() : await layercacheSide());
