import type { TestProject } from "vitest/node";
import { MemcachedServer } from "./support/memcached-server.js";
import { KafkaServer } from "./support/kafka-server.js";
import { NatsServer } from "./support/nats-server.js";
import { RabbitMQServer } from "./support/rabbitmq-server.js";
import { ensureBinary, RedisServer } from "./support/servers.js";
import { PostgresServer, postgresBinaries } from "./support/postgres-server.js";

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
    /** A PostgreSQL server shared by the test files (each test uses its own prefix, or its own table). */
    postgresUrl: string;
    /** A Kafka broker (KRaft) shared by the test files, as "host:port" (each test uses its own topics). */
    kafkaBroker: string;
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
  ensureBinary("java", "openjdk-17-jre-headless");
  ensureBinary("mvn", "maven");
  ensureBinary("rabbitmq-server", "rabbitmq-server");
  ensureBinary("nats-server", "nats-server");
  // Every shared server at once: RabbitMQ and Kafka take seconds to boot (Kafka's jars are fetched once into a cache folder).
  const [redis, memcached, postgres, kafka, rabbitmq, nats] = await Promise.all([RedisServer.start(), MemcachedServer.start(), PostgresServer.start(), KafkaServer.start(), RabbitMQServer.start(), NatsServer.start()]);
  project.provide("redisUrl", redis.url);
  project.provide("memcachedServer", memcached.address);
  project.provide("postgresUrl", postgres.url);
  project.provide("kafkaBroker", kafka.broker);
  project.provide("rabbitmqUrl", rabbitmq.url);
  project.provide("natsUrl", nats.url);
  return async () => {
    await Promise.all([redis.stop(), memcached.stop(), postgres.stop(), kafka.stop(), rabbitmq.stop(), nats.stop()]);
  };
}
