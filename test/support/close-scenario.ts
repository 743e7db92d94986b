/**
 * A process that sets up a cache against a redis-server in a given state, closes it, and must
 * then exit on its own: anything the cache left open (a connection, a timer) would keep it alive.
 * Argv: <scenario> <redis url> [pubsub|streams].
 */
import { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore, RedisStreamsBus } from "../../src/backends/redis/index.js";

const [scenario, url, bus] = process.argv.slice(2) as [string, string, string | undefined];
const cache = new LayerCache({
  prefix: "close-scenario",
  l2: new RedisStore({ url, timeout: "200ms", circuitBreaker: { threshold: 2, cooldown: "300ms" } }),
  bus: bus === "streams" ? new RedisStreamsBus({ url, heartbeat: "200ms" }) : new RedisBus({ url, heartbeat: "200ms" }),
});
process.on("unhandledRejection", (e) => {
  console.error("unhandled rejection", e);
  process.exit(3);
});

if (scenario === "close-while-opening") {
  void cache.get("x").catch(() => {});
  await cache.close();
} else if (scenario === "close-after-breaker-opened" || scenario === "close-while-hung") {
  // The test kills (or pauses) the server once it reads "ready".
  await cache.ready();
  await cache.set("k", 1);
  console.log("ready");
  await new Promise((r) => process.stdin.once("data", r));
  process.stdin.destroy();
  for (let i = 0; i < 6; i++) await cache.getOrSet(`k${i}`, async () => i);
  await cache.set("k", 2);
  await cache.close();
}
console.log("closed");
