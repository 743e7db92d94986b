import type { TestProject } from "vitest/node";
import { KafkaServer } from "./support/kafka-server.js";
import { ensureBinary, RedisServer } from "./support/servers.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A redis-server shared by the test files (each test uses its own prefix). */
    redisUrl: string;
    /** A Kafka broker (KRaft) shared by the test files, as "host:port" (each test uses its own topics). */
    kafkaBroker: string;
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
  ensureBinary("java", "openjdk-17-jre-headless");
  ensureBinary("mvn", "maven");
  // Kafka starts in a few seconds (its jars are fetched once into a cache folder): beside Redis.
  const [redis, kafka] = await Promise.all([RedisServer.start(), KafkaServer.start()]);
  project.provide("redisUrl", redis.url);
  project.provide("kafkaBroker", kafka.broker);
  return async () => {
    await Promise.all([redis.stop(), kafka.stop()]);
  };
}
