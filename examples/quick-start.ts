/**
 * The README's quick start, runnable: `npx tsx examples/quick-start.ts`.
 */
import { LayerCache, MemoryBus } from "../src/index.js";

const db = { find: async (id: string) => ({ id, name: `user ${id}` }) };

await using cache = new LayerCache({ ttl: "1m", bus: new MemoryBus() });

await cache.set("greeting", "hello");
console.log(await cache.get("greeting")); // "hello"

const answer = await cache.getOrSet("answer", async ({ signal }) => {
  signal.throwIfAborted();
  return 42;
});
console.log(answer); // 42

const users = cache.scope("users", { ttl: "10m" });
const getUser = users.cached(async (id: string) => db.find(id), {
  key: (id) => `user:${id}`,
  refresh: "background",
});
console.log(await getUser("123"), getUser.cacheKey("123")); // { id: "123", ... } "user:123"
await getUser.removeCached("123");
console.log(await users.get("user:123")); // undefined

console.log(cache.stats().hits, "hit(s)");
