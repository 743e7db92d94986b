/**
 * Bench scenario 10: one process of a stampede. A LayerCache on the shared redis-server (RedisStore
 * + RedisBus), with or without `distributedLock`; on "go" it misses one key `n` times at once with a
 * loader that takes `ms`, and answers with how many times its loader ran. Argv: <url> <prefix> <lock|nolock>.
 */
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore } from "../src/backends/redis/index.js";

const [url, prefix, mode] = process.argv.slice(2) as [string, string, string];
const cache = new LayerCache({ prefix, l2: new RedisStore({ url }), bus: new RedisBus({ url }), distributedLock: mode === "lock" });
await cache.ready();
process.on("message", async (m: { key: string; n: number; ms: number }) => {
  let calls = 0;
  const loader = async () => {
    calls++;
    await new Promise((r) => setTimeout(r, m.ms));
    return { loadedBy: process.pid };
  };
  await Promise.all(Array.from({ length: m.n }, () => cache.getOrSet(m.key, loader)));
  process.send!({ calls });
  await cache.close();
  process.exit(0);
});
process.send!({ ready: true });
