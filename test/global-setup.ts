import type { TestProject } from "vitest/node";
import { MemcachedServer } from "./support/memcached-server.js";
import { ensureBinary, RedisServer } from "./support/servers.js";
import { PostgresServer, postgresBinaries } from "./support/postgres-server.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A redis-server shared by the test files (each test uses its own prefix). */
    redisUrl: string;
    /** A memcached shared by the test files, as "host:port" (each test uses its own key prefix). */
    memcachedServer: string;
    /** A PostgreSQL server shared by the test files (each test uses its own prefix, or its own table). */
    postgresUrl: string;
  }
}

/**
 * Runs once before the test files: makes sure the server binaries are there (installing them when
 * the run may) and starts the shared redis-server and PostgreSQL. Tests that kill or pause a server, or need a
 * cluster, start their own.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  ensureBinary("redis-server", "redis-server");
  ensureBinary("redis-cli", "redis-tools");
  ensureBinary("memcached", "memcached");
  postgresBinaries();
  const [redis, memcached, postgres] = await Promise.all([RedisServer.start(), MemcachedServer.start(), PostgresServer.start()]);
  project.provide("redisUrl", redis.url);
  project.provide("memcachedServer", memcached.address);
  project.provide("postgresUrl", postgres.url);
  return async () => {
    await Promise.all([redis.stop(), memcached.stop(), postgres.stop()]);
  };
}
