import type { TestProject } from "vitest/node";
import { ensureBinary, RedisServer } from "./support/servers.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A redis-server shared by the test files (each test uses its own prefix). */
    redisUrl: string;
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
  const redis = await RedisServer.start();
  project.provide("redisUrl", redis.url);
  return async () => {
    await redis.stop();
  };
}
