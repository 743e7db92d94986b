import { tracingChannel } from "node:diagnostics_channel";
import { SpanKind, SpanStatusCode, context as otelContext, metrics, trace, type Attributes, type Counter, type Histogram, type MeterProvider, type Span, type Tracer, type TracerProvider } from "@opentelemetry/api";
import { diagnosticChannels, type BusTraceContext, type CacheEvents, type L2Context, type LayerCache, type LoadContext } from "../../index.js";

/** The instrumentation scope name reported with every metric and span. */
export const INSTRUMENTATION_NAME = "layercache";

/**
 * Metric names (OpenTelemetry semantic style: dotted, unit in `unit`, durations in seconds).
 * Attributes: `layercache.scope` (scope path joined with "/", "" for the cache itself) on the
 * per-entry metrics, `layercache.layer` ("l1" | "l2") on hits, and the ones listed per metric.
 */
export const METRICS = {
  /** Counter: fresh values returned without a load. Attributes: scope, layer. */
  hits: "layercache.hits",
  /** Counter: reads that found no fresh value. Attributes: scope. */
  misses: "layercache.misses",
  /** Counter: values past their ttl returned. Attributes: scope, `layercache.reason` ("background" | "failSafe" | "softTimeout"). */
  staleHits: "layercache.stale_hits",
  /** Counter: loader calls finished. Attributes: scope, `layercache.load.kind` ("load" | "refresh"), `layercache.outcome` ("success" | "error"). */
  loads: "layercache.loads",
  /** Histogram (s): loader call durations. Attributes: as `layercache.loads`. */
  loadDuration: "layercache.load.duration",
  /** Counter: background refreshes. Attributes: scope, `layercache.outcome` ("success" | "failure" | "skipped"). */
  refreshes: "layercache.refreshes",
  /** Histogram (s): L2 store calls. Attributes: `layercache.layer` ("l2"), `layercache.operation` ("get", "set", "remove", …), `layercache.outcome` ("success" | "error"). */
  l2Duration: "layercache.l2.duration",
  /** Gauge: 1 while the L2 circuit breaker is open (L2 skipped), 0 otherwise. */
  l2CircuitOpen: "layercache.l2.circuit_open",
  /** Counter: bus messages. Attributes: `layercache.bus.direction` ("sent" | "received" | "dropped"), `layercache.bus.op` ("remove" | "clear" | "update"), scope. */
  busMessages: "layercache.bus.messages",
  /** Gauge: entries in L1 now. */
  entries: "layercache.entries",
} as const;

/** Attribute names. */
export const ATTRIBUTES = {
  cache: "layercache.cache",
  scope: "layercache.scope",
  layer: "layercache.layer",
  key: "layercache.key",
  reason: "layercache.reason",
  kind: "layercache.load.kind",
  outcome: "layercache.outcome",
  operation: "layercache.operation",
  direction: "layercache.bus.direction",
  op: "layercache.bus.op",
} as const;

export interface OtelOptions {
  /** Where metrics go. Default: the global meter provider (`metrics.getMeterProvider()`). */
  meterProvider?: MeterProvider;
  /** Where spans go. Default: the global tracer provider (`trace.getTracerProvider()`). */
  tracerProvider?: TracerProvider;
  /** Spans for `get` and `getOrSet` (every read, hits included). Loads, refreshes, L2 calls and bus messages always get spans. Default true. */
  readSpans?: boolean;
  /** Put the cache key on spans as `layercache.key` (keys may hold personal data). Default false. Never on metrics. */
  recordKeys?: boolean;
}

/** What `instrument(cache)` returns. */
export interface Instrumentation {
  /** Stops recording: unsubscribes from the cache's events and the diagnostics channels. Idempotent. */
  disable(): void;
}

const PHASES = ["start", "end", "asyncStart", "asyncEnd", "error"] as const;
type Phase = (typeof PHASES)[number];
type AnyContext = { cache: string; scope?: string; key?: string; error?: unknown } & Record<string, unknown>;

/** A traced operation under way: its span and when it started. */
interface Open {
  span: Span | undefined;
  started: number;
}

function outcome(ctx: AnyContext): "success" | "error" {
  return ctx.error === undefined ? "success" : "error";
}

/**
 * Records a cache's metrics and spans through `@opentelemetry/api` (an optional peer: install it
 * and an SDK). Counts come from the cache's events; durations and spans from its
 * `node:diagnostics_channel` tracing channels, so nothing here touches the read path, and a cache
 * that is not instrumented pays nothing.
 */
export function instrument(cache: LayerCache, options: OtelOptions = {}): Instrumentation {
  if (cache === null || typeof cache !== "object" || typeof (cache as { on?: unknown }).on !== "function" || typeof cache.instanceId !== "string") {
    throw new TypeError("layercache/otel: instrument(cache) needs a LayerCache");
  }
  const unknownOption = Object.keys(options).find((k) => !["meterProvider", "tracerProvider", "readSpans", "recordKeys"].includes(k));
  if (unknownOption !== undefined) throw new TypeError(`layercache/otel: unknown option "${unknownOption}"`);
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter(INSTRUMENTATION_NAME);
  const tracer: Tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer(INSTRUMENTATION_NAME);
  const readSpans = options.readSpans ?? true;
  const recordKeys = options.recordKeys ?? false;
  const id = cache.instanceId;

  // Hits, misses and stale hits happen on every read: they are counted here in plain numbers and
  // handed to the SDK when it collects (observable counters), not through a counter call per read.
  const hits = meter.createObservableCounter(METRICS.hits, { description: "Fresh values returned without a load" });
  const misses = meter.createObservableCounter(METRICS.misses, { description: "Reads that found no fresh value" });
  const staleHits = meter.createObservableCounter(METRICS.staleHits, { description: "Values past their ttl returned (background, fail-safe, soft timeout)" });
  const loads = meter.createCounter(METRICS.loads, { description: "Loader calls finished" });
  // Seconds, so the SDK's default buckets (made for milliseconds) would put nearly every call in the first one.
  const advice = { explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] };
  const loadDuration: Histogram = meter.createHistogram(METRICS.loadDuration, { description: "Loader call duration", unit: "s", advice });
  const refreshes = meter.createCounter(METRICS.refreshes, { description: "Background refreshes by outcome" });
  const l2Duration: Histogram = meter.createHistogram(METRICS.l2Duration, { description: "L2 store call duration", unit: "s", advice });
  const busMessages: Counter = meter.createCounter(METRICS.busMessages, { description: "Bus messages sent, received and dropped" });
  let circuitOpen = 0;
  const circuit = meter.createObservableGauge(METRICS.l2CircuitOpen, { description: "1 while the L2 circuit breaker is open" });
  const entries = meter.createObservableGauge(METRICS.entries, { description: "Entries in L1" });
  const observeCircuit = (r: { observe(v: number): void }) => r.observe(circuitOpen);
  const observeEntries = (r: { observe(v: number): void }) => r.observe(cache.stats().entries);
  circuit.addCallback(observeCircuit);
  entries.addCallback(observeEntries);

  /** Running totals by attribute set: a read adds 1 to a number (the set is made once per scope). */
  type Tally = Map<string, { attributes: Attributes; n: number }>;
  const tally = (t: Tally, memoKey: string, make: () => Attributes): void => {
    const c = t.get(memoKey);
    if (c !== undefined) c.n++;
    else t.set(memoKey, { attributes: make(), n: 1 });
  };
  const hitTally: Tally = new Map();
  const missTally: Tally = new Map();
  const staleTally: Tally = new Map();
  const observeTally = (t: Tally) => (r: { observe(v: number, a: Attributes): void }) => {
    for (const c of t.values()) r.observe(c.n, c.attributes);
  };
  const tallies = [
    [hits, observeTally(hitTally)],
    [misses, observeTally(missTally)],
    [staleHits, observeTally(staleTally)],
  ] as const;
  for (const [instrument, callback] of tallies) instrument.addCallback(callback);

  const listeners: { [E in keyof CacheEvents]?: (p: CacheEvents[E]) => void } = {
    hit: (p) => tally(hitTally, p.layer === "l1" ? `1${p.scope}` : `2${p.scope}`, () => ({ [ATTRIBUTES.scope]: p.scope, [ATTRIBUTES.layer]: p.layer })),
    miss: (p) => tally(missTally, p.scope, () => ({ [ATTRIBUTES.scope]: p.scope })),
    staleHit: (p) => tally(staleTally, `${p.reason}\u0000${p.scope}`, () => ({ [ATTRIBUTES.scope]: p.scope, [ATTRIBUTES.reason]: p.reason })),
    refreshSuccess: (p) => refreshes.add(1, { [ATTRIBUTES.scope]: p.scope, [ATTRIBUTES.outcome]: "success" }),
    refreshFailure: (p) => refreshes.add(1, { [ATTRIBUTES.scope]: p.scope, [ATTRIBUTES.outcome]: "failure" }),
    refreshSkipped: (p) => refreshes.add(1, { [ATTRIBUTES.scope]: p.scope, [ATTRIBUTES.outcome]: "skipped", [ATTRIBUTES.reason]: p.reason }),
    l2CircuitOpen: () => (circuitOpen = 1),
    l2CircuitClose: () => (circuitOpen = 0),
  };
  for (const [event, listener] of Object.entries(listeners)) cache.on(event as keyof CacheEvents, listener as never);

  const open = new WeakMap<object, Open>();
  /**
   * Spans under way by scope and key, so that a load is the child of the read that started it and
   * an L2 write the child of its load (no context manager needed: the channels carry scope and key).
   */
  const parents = new Map<string, Span>();
  const parentKey = (ctx: AnyContext) => `${ctx.scope ?? ""}\u0000${ctx.key ?? ""}`;
  const under = (ctx: AnyContext) => {
    const parent = ctx.key === undefined ? undefined : parents.get(parentKey(ctx));
    return parent === undefined ? otelContext.active() : trace.setSpan(otelContext.active(), parent);
  };

  const spanAttributes = (ctx: AnyContext): Attributes => {
    const a: Attributes = { [ATTRIBUTES.cache]: id };
    if (ctx.scope !== undefined) a[ATTRIBUTES.scope] = ctx.scope;
    if (recordKeys && ctx.key !== undefined) a[ATTRIBUTES.key] = ctx.key;
    return a;
  };

  /** The span for an operation that starts, or undefined when this operation gets none. */
  const startSpan = (channel: string, ctx: AnyContext): Span | undefined => {
    switch (channel) {
      case diagnosticChannels.get:
      case diagnosticChannels.getOrSet:
        if (!readSpans) return undefined;
        return tracer.startSpan(`layercache ${channel === diagnosticChannels.get ? "get" : "getOrSet"}`, { kind: SpanKind.INTERNAL, attributes: spanAttributes(ctx) }, otelContext.active());
      case diagnosticChannels.load:
        return tracer.startSpan("layercache load", { kind: SpanKind.INTERNAL, attributes: { ...spanAttributes(ctx), [ATTRIBUTES.kind]: (ctx as unknown as LoadContext).kind } }, under(ctx));
      case diagnosticChannels.refresh:
        return tracer.startSpan("layercache refresh", { kind: SpanKind.INTERNAL, attributes: spanAttributes(ctx) }, under(ctx));
      case diagnosticChannels.l2: {
        const op = (ctx as unknown as L2Context).operation;
        return tracer.startSpan(`layercache l2 ${op}`, { kind: SpanKind.CLIENT, attributes: { ...spanAttributes(ctx), [ATTRIBUTES.layer]: "l2", [ATTRIBUTES.operation]: op } }, under(ctx));
      }
      default: {
        const bus = ctx as unknown as BusTraceContext;
        return tracer.startSpan(`layercache bus ${bus.operation}`, { kind: bus.operation === "publish" ? SpanKind.PRODUCER : SpanKind.CONSUMER, attributes: spanAttributes(ctx) });
      }
    }
  };

  /** An operation ended: its metrics, and its span closed. */
  const finish = (channel: string, ctx: AnyContext, o: Open): void => {
    const seconds = (performance.now() - o.started) / 1000;
    const result = outcome(ctx);
    if (channel === diagnosticChannels.load) {
      const a = { [ATTRIBUTES.scope]: ctx.scope ?? "", [ATTRIBUTES.kind]: (ctx as unknown as LoadContext).kind, [ATTRIBUTES.outcome]: result };
      loads.add(1, a);
      loadDuration.record(seconds, a);
    } else if (channel === diagnosticChannels.l2) {
      l2Duration.record(seconds, { [ATTRIBUTES.layer]: "l2", [ATTRIBUTES.operation]: (ctx as unknown as L2Context).operation, [ATTRIBUTES.outcome]: result });
    } else if (channel === diagnosticChannels.bus) {
      const bus = ctx as unknown as BusTraceContext;
      const direction = bus.operation === "publish" ? "sent" : bus.dropped !== undefined ? "dropped" : "received";
      if (bus.dropped !== "own") {
        const a: Attributes = { [ATTRIBUTES.direction]: direction, [ATTRIBUTES.scope]: bus.scope ?? "" };
        if (bus.op !== undefined) a[ATTRIBUTES.op] = bus.op;
        busMessages.add(1, a);
      }
      if (o.span !== undefined) {
        if (bus.op !== undefined) o.span.setAttribute(ATTRIBUTES.op, bus.op);
        if (bus.dropped !== undefined) o.span.setAttribute("layercache.bus.dropped", bus.dropped);
      }
    }
    const span = o.span;
    if (span === undefined) return;
    if (ctx.key !== undefined && parents.get(parentKey(ctx)) === span) parents.delete(parentKey(ctx));
    if (channel === diagnosticChannels.get || channel === diagnosticChannels.getOrSet) span.setAttribute("layercache.found", (ctx as { result?: unknown }).result !== undefined);
    if (ctx.error !== undefined) {
      span.recordException(ctx.error instanceof Error ? ctx.error : String(ctx.error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: ctx.error instanceof Error ? ctx.error.message : String(ctx.error) });
    }
    span.end();
  };

  const subscriptions: (() => void)[] = [];
  for (const channel of Object.values(diagnosticChannels)) {
    // Reads feed no metric through the channels (their counts come from events): without read
    // spans, the read channels are left alone and reads stay untraced.
    if (!readSpans && (channel === diagnosticChannels.get || channel === diagnosticChannels.getOrSet)) continue;
    const tc = tracingChannel(channel);
    // A received bus message is traced synchronously (it ends at `end`); every other operation is a promise (`asyncEnd`).
    const handlers: Record<Phase, (message: unknown) => void> = {
      start: (m) => {
        const ctx = m as AnyContext;
        if (ctx.cache !== id) return;
        const span = startSpan(channel, ctx);
        open.set(ctx, { span, started: performance.now() });
        // The outermost read, load or refresh under way for a key is the parent of what runs for it meanwhile.
        if (span !== undefined && ctx.key !== undefined && channel !== diagnosticChannels.l2 && channel !== diagnosticChannels.bus && !parents.has(parentKey(ctx))) parents.set(parentKey(ctx), span);
      },
      end: (m) => {
        const ctx = m as AnyContext;
        if (ctx.cache !== id || !(channel === diagnosticChannels.bus && ctx.operation === "receive")) return;
        const o = open.get(ctx);
        if (o === undefined) return;
        open.delete(ctx);
        finish(channel, ctx, o);
      },
      asyncStart: () => {},
      asyncEnd: (m) => {
        const ctx = m as AnyContext;
        if (ctx.cache !== id) return;
        const o = open.get(ctx);
        if (o === undefined) return;
        open.delete(ctx);
        finish(channel, ctx, o);
      },
      error: () => {},
    };
    tc.subscribe(handlers as never);
    subscriptions.push(() => tc.unsubscribe(handlers as never));
  }

  let enabled = true;
  return {
    disable() {
      if (!enabled) return;
      enabled = false;
      for (const [event, listener] of Object.entries(listeners)) cache.off(event as keyof CacheEvents, listener as never);
      for (const stop of subscriptions) stop();
      circuit.removeCallback(observeCircuit);
      for (const [instrument, callback] of tallies) instrument.removeCallback(callback);
      entries.removeCallback(observeEntries);
    },
  };
}
