/**
 * `layercache/memcached`: L2 on Memcached (≥ 1.6) with compare-and-set write-backs, through a small
 * built-in meta-protocol client (no client library to install).
 */
export { MemcachedStore, type MemcachedStoreOptions } from "./store.js";
export { MemcachedClient, MemcachedServerError, type MemcachedClientOptions, type SetResult, type Cased } from "./client.js";
