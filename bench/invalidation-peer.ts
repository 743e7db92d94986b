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

const [url, prefix, mode] = process.argv.slice(2) as [string, string, string | undefined];
const client = new Redis(url);
const send = (m: unknown): void => void process.send!(m);

/** The operations the scenario drives, on layercache or on the raw floor. */
interface Side {
  prime(key: string): Promise<void>;
  op(k: string, n: number): Promise<unknown>;
  close(): Promise<void>;
}

async function layercacheSide(): Promise<Side> {
  const bus = mode === "streams" ? new RedisStreamsBus({ client }) : new RedisBus({ client });
  const cache = new LayerCache({ prefix, ttl: "1h", l2: new RedisStore({ client }), bus });
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
  const sub = new Redis(url);
  await sub.subscribe(`${prefix}:raw`);
  sub.on("message", (_ch, key: string) => {
    const t = process.hrtime.bigint();
    if (l1.delete(key)) send({ dropped: key, t: t.toString() });
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

let background: ReturnType<typeof setInterval> | undefined;
const { monitorEventLoopDelay, PerformanceObserver } = await import("node:perf_hooks");
const eld = monitorEventLoopDelay({ resolution: 1 });
const gcs: number[] = [];
if (process.env.BENCH_DEBUG) {
  eld.enable();
  new PerformanceObserver((l) => l.getEntries().forEach((e) => gcs.push(e.duration))).observe({ entryTypes: ["gc"] });
}

process.on("message", async (m: { op: string; key?: string; perTick?: number }) => {
  if (m.op === "prime") {
    await side.prime(m.key!);
    send({ primed: m.key });
  } else if (m.op === "background") {
    // Steady load: `perTick` operations every 2 ms on keys of their own.
    let n = 0;
    background = setInterval(() => {
      for (let i = 0; i < m.perTick!; i++) {
        const k = `bg:${n++ % 2000}`;
        void side.op(k, n);
      }
    }, 2);
  } else if (m.op === "stop") {
    if (background) clearInterval(background);
    if (process.env.BENCH_DEBUG) console.error(mode ?? "layercache", "B event-loop delay p99/max ms", (eld.percentile(99) / 1e6).toFixed(2), (eld.max / 1e6).toFixed(2), "gc", gcs.length, gcs.reduce((a, b) => a + b, 0).toFixed(1), "ms");
    await side.close();
    client.disconnect();
    send({ stopped: true });
    process.exit(0);
  }
});
send({ ready: true });
