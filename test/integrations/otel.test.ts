import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader, type ResourceMetrics } from "@opentelemetry/sdk-metrics";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { afterEach, describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus } from "../../src/index.js";
import { METRICS, instrument, type Instrumentation } from "../../src/integrations/otel/index.js";
import { flush } from "../support/helpers.js";
import { MapStore } from "../support/map-store.js";

/** The real SDK with its in-memory exporters: what a user's setup exports, without a collector. */
function sdk() {
  const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 3_600_000 });
  const meterProvider = new MeterProvider({ readers: [reader] });
  const spanExporter = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spanExporter)] });
  /** Sum of a counter's (or a histogram's count of) data points whose attributes include `where`. */
  const read = async () => {
    await reader.forceFlush();
    const all: ResourceMetrics[] = metricExporter.getMetrics();
    const last = all[all.length - 1]!;
    const points = new Map<string, { attributes: Record<string, unknown>; value: any }[]>();
    for (const sm of last.scopeMetrics) for (const m of sm.metrics) points.set(m.descriptor.name, m.dataPoints as never);
    return {
      sum(name: string, where: Record<string, unknown> = {}): number {
        let total = 0;
        for (const p of points.get(name) ?? []) {
          if (!Object.entries(where).every(([k, v]) => p.attributes[k] === v)) continue;
          total += typeof p.value === "number" ? p.value : p.value.count;
        }
        return total;
      },
      gauge(name: string): number | undefined {
        const p = points.get(name);
        return p?.[p.length - 1]?.value as number | undefined;
      },
    };
  };
  const spans = (): ReadableSpan[] => spanExporter.getFinishedSpans();
  return { meterProvider, tracerProvider, read, spans, shutdown: () => Promise.all([meterProvider.shutdown(), tracerProvider.shutdown()]) };
}

let cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe("layercache/otel with the OpenTelemetry SDK's in-memory exporters", () => {
  test("hits by layer, misses, loads and their durations, per scope; spans for the read, its load and the L2 calls", async () => {
    const o = sdk();
    const clock = new FakeClock(0);
    const l2 = new MapStore(() => clock.now());
    const cache = new LayerCache({ clock, l2 });
    const peer = new LayerCache({ clock, l2 });
    const inst = instrument(cache, { meterProvider: o.meterProvider, tracerProvider: o.tracerProvider, recordKeys: true });
    cleanup.push(async () => inst.disable(), () => cache.close(), () => peer.close(), o.shutdown);
    const users = cache.scope("users");
    await users.getOrSet("u1", async () => "Ada"); // miss, load
    await users.getOrSet("u1", async () => "x"); // L1 hit
    await peer.scope("users").set("u2", "Bob");
    await users.get("u2"); // L2 hit
    await users.get("none"); // miss
    await expect(cache.getOrSet("bad", async () => Promise.reject(new Error("db down")))).rejects.toThrow("db down");
    await peer.getOrSet("other", async () => 1); // another cache: not counted here

    const m = await o.read();
    expect(m.sum(METRICS.hits, { "layercache.scope": "users", "layercache.layer": "l1" })).toBe(1);
    expect(m.sum(METRICS.hits, { "layercache.scope": "users", "layercache.layer": "l2" })).toBe(1);
    expect(m.sum(METRICS.misses, { "layercache.scope": "users" })).toBe(2);
    expect(m.sum(METRICS.misses, { "layercache.scope": "" })).toBe(1);
    expect(m.sum(METRICS.loads, { "layercache.outcome": "success", "layercache.load.kind": "load" })).toBe(1);
    expect(m.sum(METRICS.loads, { "layercache.outcome": "error" })).toBe(1);
    expect(m.sum(METRICS.loadDuration)).toBe(2);
    expect(m.sum(METRICS.l2Duration, { "layercache.operation": "get", "layercache.outcome": "success" })).toBe(4);
    expect(m.sum(METRICS.l2Duration, { "layercache.operation": "set" })).toBe(1);
    expect(m.gauge(METRICS.entries)).toBe(2);

    const spans = o.spans();
    const load = spans.find((s) => s.name === "layercache load" && s.attributes["layercache.key"] === "u1")!;
    const read = spans.find((s) => s.name === "layercache getOrSet" && s.attributes["layercache.key"] === "u1" && s.spanContext().spanId === load.parentSpanContext?.spanId);
    expect(read).toBeDefined();
    expect(load.attributes).toMatchObject({ "layercache.scope": "users", "layercache.load.kind": "load", "layercache.cache": cache.instanceId });
    const write = spans.find((s) => s.name === "layercache l2 set")!;
    expect(write.kind).toBe(SpanKind.CLIENT);
    expect(write.parentSpanContext?.spanId).toBe(read!.spanContext().spanId);
    const failed = spans.find((s) => s.name === "layercache load" && s.attributes["layercache.key"] === "bad")!;
    expect(failed.status).toEqual({ code: SpanStatusCode.ERROR, message: "db down" });
    expect(failed.events.map((e) => e.name)).toEqual(["exception"]);
    // Nothing of the other cache.
    expect(spans.every((s) => s.attributes["layercache.cache"] === cache.instanceId)).toBe(true);
  });

  test("an L2 outage and its recovery: L2 errors, the breaker gauge, fail-safe stale hits, then L2 hits again", async () => {
    const o = sdk();
    const clock = new FakeClock(0);
    const l2 = new MapStore(() => clock.now());
    const cache = new LayerCache({ clock, l2, ttl: "1s" });
    const inst = instrument(cache, { meterProvider: o.meterProvider, tracerProvider: o.tracerProvider, readSpans: false });
    cleanup.push(async () => inst.disable(), () => cache.close(), o.shutdown);
    await cache.getOrSet("k", async () => "v1");
    clock.advance(2_000);
    l2.failing = true;
    for (let i = 0; i < 5; i++) await cache.getOrSet(`n${i}`, async () => i);
    // The value of "k" is stale and the loader fails: fail-safe serves it.
    expect(await cache.getOrSet("k", async () => Promise.reject(new Error("db down")))).toBe("v1");
    let m = await o.read();
    expect(m.sum(METRICS.l2Duration, { "layercache.outcome": "error" })).toBe(3);
    expect(m.gauge(METRICS.l2CircuitOpen)).toBe(1);
    expect(m.sum(METRICS.staleHits, { "layercache.reason": "failSafe" })).toBe(1);
    l2.failing = false;
    clock.advance(10_000);
    await cache.get("probe");
    await flush();
    clock.advance(10_000);
    expect(await cache.getOrSet("n0", async () => "again")).toBe("again");
    m = await o.read();
    expect(m.gauge(METRICS.l2CircuitOpen)).toBe(0);
    expect(m.sum(METRICS.l2Duration, { "layercache.operation": "set", "layercache.outcome": "success" })).toBeGreaterThanOrEqual(2);
    // readSpans: false — loads and L2 calls only.
    expect(new Set(o.spans().map((s) => s.name.split(" ")[1]))).toEqual(new Set(["load", "l2"]));
  });

  test("refreshes and bus messages", async () => {
    const o = sdk();
    const clock = new FakeClock(0);
    const bus = new MemoryBus();
    const cache = new LayerCache({ clock, bus, ttl: "1s", refresh: "background" });
    const peer = new LayerCache({ clock, bus });
    await peer.ready();
    const inst = instrument(cache, { meterProvider: o.meterProvider, tracerProvider: o.tracerProvider });
    const instPeer = instrument(peer, { meterProvider: o.meterProvider, tracerProvider: o.tracerProvider });
    cleanup.push(async () => inst.disable(), async () => instPeer.disable(), () => cache.close(), () => peer.close(), o.shutdown);
    await cache.getOrSet("k", async () => 1);
    clock.advance(1_500);
    expect(await cache.getOrSet("k", async () => 2)).toBe(1);
    await flush();
    await cache.remove("k");
    await flush();
    const m = await o.read();
    expect(m.sum(METRICS.refreshes, { "layercache.outcome": "success" })).toBe(1);
    expect(m.sum(METRICS.staleHits, { "layercache.reason": "background" })).toBe(1);
    expect(m.sum(METRICS.loads, { "layercache.load.kind": "refresh" })).toBe(1);
    expect(m.sum(METRICS.busMessages, { "layercache.bus.direction": "sent", "layercache.bus.op": "remove" })).toBe(1);
    expect(m.sum(METRICS.busMessages, { "layercache.bus.direction": "received", "layercache.bus.op": "remove" })).toBe(1);
    const names = o.spans().map((s) => s.name);
    expect(names).toContain("layercache refresh");
    expect(names).toContain("layercache bus publish");
    expect(names).toContain("layercache bus receive");
  });

  test("disable() stops recording; bad arguments are TypeErrors", async () => {
    const o = sdk();
    const cache = new LayerCache();
    cleanup.push(() => cache.close(), o.shutdown);
    const inst = instrument(cache, { meterProvider: o.meterProvider, tracerProvider: o.tracerProvider });
    await cache.getOrSet("a", async () => 1);
    expect((await o.read()).sum(METRICS.misses)).toBe(1);
    inst.disable();
    inst.disable();
    await cache.getOrSet("b", async () => 1);
    // Nothing recorded after disable() (the observable counters are no longer reported at all).
    expect((await o.read()).sum(METRICS.misses)).toBeLessThan(2);
    expect(o.spans().filter((s) => s.name === "layercache getOrSet")).toHaveLength(1);
    expect(() => instrument({} as never)).toThrow(TypeError);
    expect(() => instrument(cache, { meter: 1 } as never)).toThrow(/unknown option "meter"/);
  });
});
