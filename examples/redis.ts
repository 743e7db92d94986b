/**
 * layercache with Redis as L2 and bus, the way a service would set it up:
 *   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts
 */
import { Redis } from "ioredis";
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore } from "../src/backends/redis/index.js";

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const client = new Redis(url); // yours: layercache never closes a client you pass in

const cache = new LayerCache({
  prefix: `example-${process.pid}`,
  ttl: "10m",
  l2: new RedisStore({ client, timeout: "250ms" }),
  bus: new RedisBus({ client }), // opens its own subscriber connection from `client`
});

const products = cache.scope("products", { refresh: "background", ttl: "1m" });
const getProduct = products.cached(async (sku: string) => ({ sku, price: 10 }), { key: (sku) => `product:${sku}` });

console.log(await getProduct("A1")); // loaded, then in L1 and Redis
console.log(await client.keys(`example-${process.pid}:*`)); // [ 'example-<pid>:products:product:A1' ]
await getProduct.removeCached("A1"); // L1, Redis (tombstone), and every peer's L1

cache.on("l2CircuitOpen", () => console.warn("Redis unreachable: serving from memory and the loader"));
await cache.close();
await client.quit();
