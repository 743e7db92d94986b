import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { defineConfig } from "tsup";

/**
 * An entry whose code all lives in shared chunks (`backend` only re-exports) gets a source map that
 * names no sources and has no `sourcesContent`: give it the empty one, so that every shipped map
 * carries the text of its sources (none here), as the package test checks.
 */
function completeEmptySourceMaps(): void {
  for (const file of readdirSync("dist").filter((f) => f.endsWith(".map"))) {
    const map = JSON.parse(readFileSync(`dist/${file}`, "utf8")) as { sources: string[]; sourcesContent?: string[] };
    if (map.sources.length > 0 || map.sourcesContent !== undefined) continue;
    writeFileSync(`dist/${file}`, JSON.stringify({ ...map, sourcesContent: [] }));
  }
}

// One entry per public subpath; backend entries are added next to `index`.
export default defineConfig({
  entry: { index: "src/index.ts", backend: "src/backend.ts", testing: "src/testing.ts", redis: "src/backends/redis/index.ts", memcached: "src/backends/memcached/index.ts", postgres: "src/backends/postgres/index.ts", kafka: "src/backends/kafka/index.ts", rabbitmq: "src/backends/rabbitmq/index.ts", nats: "src/backends/nats/index.ts", otel: "src/integrations/otel/index.ts", fastify: "src/integrations/fastify/index.ts", nestjs: "src/integrations/nestjs/index.ts" },
  format: ["esm", "cjs"],
  dts: true,
  sourcemap: true,
  clean: true,
  target: "node20",
  platform: "node",
  splitting: true,
  treeshake: true,
  // Client libraries are optional peers, loaded at run time only when `{ url }` needs one: never bundled.
  external: ["ioredis", "redis", "pg", "@platformatic/kafka", "rabbitmq-client", "@nats-io/transport-node", "@nats-io/jetstream", "@opentelemetry/api", "fastify", "@nestjs/common", "@nestjs/core"],
  onSuccess: async () => completeEmptySourceMaps(),
});
