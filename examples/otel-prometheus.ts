/**
 * layercache/otel exporting to Prometheus: `npx tsx examples/otel-prometheus.ts`.
 *
 * The OpenTelemetry SDK's Prometheus exporter serves the cache's metrics at
 * http://127.0.0.1:9464/metrics (the port Prometheus scrapes by convention for OpenTelemetry);
 * this script makes some traffic, fetches that page once as Prometheus would, prints the
 * layercache lines, and stops.
 */
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { LayerCache } from "../src/index.js";
import { instrument } from "../src/integrations/otel/index.js";

const port = Number(process.env.PORT ?? 9464);
const exporter = new PrometheusExporter({ host: "127.0.0.1", port });
const meterProvider = new MeterProvider({ readers: [exporter] });

const cache = new LayerCache({ ttl: "1m" });
const instrumentation = instrument(cache, { meterProvider });
const users = cache.scope("users");
for (let i = 0; i < 100; i++) {
  // 10 users, read 10 times each: 10 misses (and loads), 90 L1 hits.
  await users.getOrSet(String(i % 10), async () => ({ id: i % 10 }));
}
await cache.getOrSet("flaky", async () => Promise.reject(new Error("db down"))).catch(() => {});

const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
console.log(text.split("\n").filter((line) => /^(# (HELP|TYPE) )?layercache_/.test(line) && !line.includes("_bucket{")).join("\n"));

instrumentation.disable();
await cache.close();
await meterProvider.shutdown();
