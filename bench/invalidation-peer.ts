/**
 * Process B of scenario 6: holds keys in its L1 and reports (with the machine's monotonic clock,
 * shared by all processes) the moment a peer's invalidation dropped each one.
 * Argv: <redis url> <prefix>.
 */
import { Redis } from "ioredis";
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore } from "../src/redis.js";

const [url, prefix] = process.argv.slice(2) as [string, string];
const client = new Redis(url);
const cache = new LayerCache({ prefix, ttl: "1h", l2: new RedisStore({ client }), bus: new RedisBus({ client }) });
const send = (m: unknown): void => void process.send!(m);

cache.on("peerInvalidation", (e) => {
  const t = process.hrtime.bigint();
  if (e.op === "remove" && e.dropped > 0) for (const key of e.keys) send({ dropped: key, t: t.toString() });
});

let background: ReturnType<typeof setInterval> | undefined;

process.on("message", async (m: { op: string; key?: string; perTick?: number }) => {
  if (m.op === "prime") {
    await cache.getOrSet(m.key!, async () => ({ loadedBy: "B" }));
    send({ primed: m.key });
  } else if (m.op === "background") {
    // Steady load: `perTick` operations every 10 ms on keys of their own.
    let n = 0;
    background = setInterval(() => {
      for (let i = 0; i < m.perTick!; i++) {
        const k = `bg:${n++ % 2000}`;
        void (n % 5 === 0 ? cache.set(k, { n }) : cache.getOrSet(k, async () => ({ n })));
      }
    }, 10);
  } else if (m.op === "stop") {
    if (background) clearInterval(background);
    await cache.close();
    client.disconnect();
    send({ stopped: true });
    process.exit(0);
  }
});
await cache.ready();
send({ ready: true });
