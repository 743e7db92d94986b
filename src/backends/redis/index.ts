/**
 * `layercache/redis`: L2 and invalidation buses (pub/sub, Streams) on Redis, Valkey or Redis
 * Cluster, with ioredis or node-redis (optional peer dependencies: install the one you use).
 */
export { RedisStore, type RedisStoreOptions } from "./store.js";
export { RedisBus, type RedisBusOptions } from "./bus.js";
export { RedisStreamsBus, type RedisStreamsBusOptions } from "./streams-bus.js";
