import { tracingChannel } from "node:diagnostics_channel";
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { SpanStatusCode } from "@opentelemetry/api";
import { Redis } from "ioredis";
import { afterEach, describe, expect, test } from "vitest";
import { LayerCache, diagnosticChannels } from "../../src/index.js";
import { RedisStore } from "../../src/backends/redis/index.js";
import { METRICS, instrument } from "../../src/integrations/otel/index.js";
import { RedisServer } from "../support/servers.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * The channels and layercache/otel (the real SDK, in-memory exporters) during an outage of a
 * real redis-server of the test's own — killed, then started again — as an operator would watch
 * them. Waits are bounded polls; nothing asserts on speed.
 */
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

describe("an L2 outage seen through the diagnostics channels and layercache/otel (real Redis)", () => {
  test("failed L2 calls, the breaker opening and closing, and L2 hits again after the restart", async () => {
    const server = await RedisServer.start();
    cleanup.push(() => server.stop());
    const client = new Redis(server.url, { maxRetriesPerRequest: 1 });
    client.on("error", () => {});
    cleanup.push(async () => client.disconnect());
    const cache = new LayerCache({ prefix: uniquePrefix(), ttl: "1h", maxEntries: 1, l2: new RedisStore({ client, timeout: "200ms", circuitBreaker: { threshold: 2, cooldown: "300ms" } }) });
    cleanup.push(() => cache.close());

    const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 3_600_000 });
    const meterProvider = new MeterProvider({ readers: [reader] });
    const spanExporter = new InMemorySpanExporter();
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spanExporter)] });
    const inst = instrument(cache, { meterProvider, tracerProvider, readSpans: false });
    cleanup.push(() => Promise.all([meterProvider.shutdown(), tracerProvider.shutdown()]), async () => inst.disable());
    const l2Errors: unknown[] = [];
    const onError = (m: unknown) => {
      const ctx = m as { cache: string; error: unknown };
      if (ctx.cache === cache.instanceId) l2Errors.push(ctx.error);
    };
    tracingChannel(diagnosticChannels.l2).error.subscribe(onError);
    cleanup.push(async () => tracingChannel(diagnosticChannels.l2).error.unsubscribe(onError));

    const metric = async (name: string, where: Record<string, unknown> = {}) => {
      await reader.forceFlush();
      let total = 0;
      for (const sm of metricExporter.getMetrics().at(-1)!.scopeMetrics) {
        for (const m of sm.metrics) {
          if (m.descriptor.name !== name) continue;
          for (const p of m.dataPoints as DataPoint<number | Histogram>[]) {
            if (Object.entries(where).every(([k, v]) => p.attributes[k] === v)) total = m.descriptor.name === METRICS.l2CircuitOpen ? (p.value as number) : total + (typeof p.value === "number" ? p.value : p.value.count);
          }
        }
      }
      return total;
    };

    // Two keys, an L1 of one entry: reading them in turn goes to L2 every time.
    await cache.getOrSet("a", async () => "A");
    await cache.getOrSet("b", async () => "B");
    expect(await cache.getOrSet("a", async () => "x")).toBe("A");
    expect(await metric(METRICS.hits, { "layercache.layer": "l2" })).toBe(1);

    await server.kill();
    // Reads go on: the loader answers while L2 fails, then the breaker stops calling it.
    for (let i = 0; i < 6; i++) expect(await cache.getOrSet(i % 2 ? "a" : "b", async () => "fallback")).toMatch(/fallback|A|B/);
    expect(l2Errors.length).toBeGreaterThanOrEqual(2);
    expect(await metric(METRICS.l2Duration, { "layercache.outcome": "error" })).toBeGreaterThanOrEqual(2);
    expect(await metric(METRICS.l2CircuitOpen)).toBe(1);
    expect(spanExporter.getFinishedSpans().some((s) => s.name.startsWith("layercache l2") && s.status.code === SpanStatusCode.ERROR)).toBe(true);

    await server.restart();
    await eventually(async () => {
      await cache.getOrSet("c", async () => "C");
      await cache.get("a");
      return (await metric(METRICS.l2CircuitOpen)) === 0;
    }, 15_000);
    await cache.set("d", "D");
    await cache.getOrSet("e", async () => "E");
    expect(await cache.getOrSet("d", async () => "x")).toBe("D");
    expect(await metric(METRICS.hits, { "layercache.layer": "l2" })).toBeGreaterThanOrEqual(2);
  }, 60_000);
});
