import type { TestProject } from "vitest/node";
import { MemcachedServer } from "./support/memcached-server.js";
import { NatsServer } from "./support/nats-server.js";
import { RabbitMQServer } from "./support/rabbitmq-server.js";
import { ensureBinary, RedisServer } from "./support/servers.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A redis-server shared by the test files (each test uses its own prefix). */
    redisUrl: string;
    /** A rabbitmq-server shared by the test files (each test uses its own exchanges). */
    rabbitmqUrl: string;
    /** A nats-server with JetStream shared by the test files (each test uses its own subjects and streams). */
    natsUrl: string;
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
  ensureBinary("rabbitmq-server", "rabbitmq-server");
  ensureBinary("nats-server", "nats-server");
  // RabbitMQ takes seconds to boot: it starts while the others do.
  const [redis, memcached, rabbitmq, nats] = await Promise.all([RedisServer.start(), MemcachedServer.start(), RabbitMQServer.start(), NatsServer.start()]);
  project.provide("redisUrl", redis.url);
  project.provide("memcachedServer", memcached.address);
  project.provide("rabbitmqUrl", rabbitmq.url);
  project.provide("natsUrl", nats.url);
  return async () => {
    await Promise.all([redis.stop(), memcached.stop(), rabbitmq.stop(), nats.stop()]);
  };
}
