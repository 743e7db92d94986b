/**
 * `layercache/redis`: L2 and invalidation bus on Redis, Valkey or Redis Cluster, with ioredis or
 * node-redis (optional peer dependencies: install the one you use).
 */
export { RedisStore, type RedisStoreOptions } from "./store.js";
export { RedisBus, type RedisBusOptions } from "./bus.js";
