import type { TestProject } from "vitest/node";
import { MemcachedServer } from "./support/memcached-server.js";
import { ensureBinary, RedisServer } from "./support/servers.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A redis-server shared by the test files (each test uses its own prefix). */
    redisUrl: string;
    /** A memcached shared by the test files, as "host:port" (each test uses its own key prefix). */
    memcachedServer: string;
  }
}

/**
 * Runs once before the test files: makes sure the server binaries are there (installing them when
 * the run may) and starts the shared redis-server. Tests that kill or pause a server, or need a
 * cluster, start their own.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  ensureBinary("redis-server", "redis-server");
  ensureBinary("redis-cli", "redis-tools");
  ensureBinary("memcached", "memcached");
  const [redis, memcached] = await Promise.all([RedisServer.start(), MemcachedServer.start()]);
  project.provide("redisUrl", redis.url);
  project.provide("memcachedServer", memcached.address);
  return async () => {
    await Promise.all([redis.stop(), memcached.stop()]);
  };
}
