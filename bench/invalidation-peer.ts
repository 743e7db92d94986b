/**
 * Process B of scenario 6: holds keys in its L1 and reports (with the machine's monotonic clock,
 * shared by all processes) the moment a peer's invalidation dropped each one.
 * Argv: <redis url> <prefix> [layercache|streams|raw]. "streams": layercache on RedisStreamsBus
 * instead of RedisBus. With "raw", the same thing with plain ioredis (a Map as L1, a SUBSCRIBE
 * callback as bus): the floor this machine allows.
 */
import { Redis } from "ioredis";
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore, RedisStreamsBus } from "../src/backends/redis/index.js";
import { cacheSide, reportDrop, servePeer, type PeerSide } from "./peer-protocol.js";

const [url, prefix, mode] = process.argv.slice(2) as [string, string, string | undefined];
const client = new Redis(url);

function layercacheSide(): Promise<PeerSide> {
  const bus = mode === "streams" ? new RedisStreamsBus({ client }) : new RedisBus({ client });
  return cacheSide(new LayerCache({ prefix, ttl: "1h", l2: new RedisStore({ client }), bus }));
}

async function rawSide(): Promise<PeerSide> {
  const l1 = new Map<string, unknown>();
  const sub = new Redis(url);
  await sub.subscribe(`${prefix}:raw`);
  sub.on("message", (_ch, key: string) => {
    if (l1.delete(key)) reportDrop(key);
  });
  const get = async (k: string) => {
    if (l1.has(k)) return l1.get(k);
    const s = await client.get(`${prefix}:${k}`);
    const v = s === null ? { n: 0 } : JSON.parse(s);
    l1.set(k, v);
    return v;
  };
  return {
    prime: async (key) => void (await get(key)),
    op: async (k, n) => {
      if (n % 5 !== 0) return get(k);
      l1.set(k, { n });
      void client.set(`${prefix}:${k}`, JSON.stringify({ n }));
      await client.publish(`${prefix}:raw`, k);
    },
    close: async () => sub.disconnect(),
  };
}

const side = mode === "raw" ? await rawSide() : await layercacheSide();

const { monitorEventLoopDelay, PerformanceObserver } = await import("node:perf_hooks");
const eld = monitorEventLoopDelay({ resolution: 1 });
const gcs: number[] = [];
if (process.env.BENCH_DEBUG) {
  eld.enable();
  new PerformanceObserver((l) => l.getEntries().forEach((e) => gcs.push(e.duration))).observe({ entryTypes: ["gc"] });
}

servePeer(side, () => {
  if (process.env.BENCH_DEBUG) console.error(mode ?? "layercache", "B event-loop delay p99/max ms", (eld.percentile(99) / 1e6).toFixed(2), (eld.max / 1e6).toFixed(2), "gc", gcs.length, gcs.reduce((a, b) => a + b, 0).toFixed(1), "ms");
  client.disconnect();
});
