/**
 * What layercache/otel shows during an L2 outage and its recovery: `npx tsx examples/otel-outage.ts`.
 *
 * One cache with a small L1 over a real redis-server (started here on a free loopback port) takes
 * steady traffic for 20 s; Redis is killed at 5 s and started again (empty) at 10 s. The metrics
 * are read from the OpenTelemetry SDK every 250 ms and drawn as docs/images/otel-outage.svg: L2
 * hits stop, failed L2 calls spike until the circuit breaker opens (the red bar), L1 and the loader
 * carry the traffic, and after the restart the breaker's probe closes it and L2 fills again.
 */
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { MeterProvider, MetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { LayerCache } from "../src/index.js";
import { RedisStore } from "../src/backends/redis/index.js";
import { METRICS, instrument } from "../src/integrations/otel/index.js";
import { RedisServer } from "../test/support/servers.js";

const RUN_MS = 20_000;
const DOWN_AT = 5_000;
const UP_AT = 10_000;
const SAMPLE_MS = 250;
const KEYS = 400;

/** The SDK's own pull reader: `collect()` gives the cumulative metrics at that moment. */
class Sampler extends MetricReader {
  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const server = await RedisServer.start();
const sampler = new Sampler();
const meterProvider = new MeterProvider({ readers: [sampler] });
const cache = new LayerCache({ l2: new RedisStore({ url: server.url, timeout: "200ms" }), ttl: "3s", failSafe: "1m", maxEntries: 100 });
const inst = instrument(cache, { meterProvider });

type Totals = Record<string, number>;
async function totals(): Promise<Totals> {
  const { resourceMetrics } = await sampler.collect();
  const t: Totals = { l1: 0, l2: 0, misses: 0, stale: 0, loads: 0, l2errors: 0, circuit: 0 };
  for (const sm of resourceMetrics.scopeMetrics) {
    for (const m of sm.metrics) {
      for (const p of m.dataPoints as DataPoint<number | Histogram>[]) {
        const a = p.attributes;
        const v = typeof p.value === "number" ? p.value : p.value.count;
        if (m.descriptor.name === METRICS.hits) t[a["layercache.layer"] === "l2" ? "l2" : "l1"]! += v;
        else if (m.descriptor.name === METRICS.misses) t.misses! += v;
        else if (m.descriptor.name === METRICS.staleHits) t.stale! += v;
        else if (m.descriptor.name === METRICS.loads) t.loads! += v;
        else if (m.descriptor.name === METRICS.l2Duration && a["layercache.outcome"] === "error") t.l2errors! += v;
        else if (m.descriptor.name === METRICS.l2CircuitOpen) t.circuit = v;
      }
    }
  }
  return t;
}

// Steady traffic: 20 reads every 10 ms over KEYS keys; the loader takes 2 ms.
let stop = false;
let rand = 1;
const random = () => ((rand = (rand * 48271) % 2147483647) / 2147483647);
const traffic = (async () => {
  while (!stop) {
    await Promise.all(
      Array.from({ length: 20 }, () => {
        const k = `item:${Math.floor(random() * KEYS)}`;
        return cache.getOrSet(k, async () => (await sleep(2), { k })).catch(() => undefined);
      }),
    );
    await sleep(10);
  }
})();

const samples: { t: number; rates: Totals }[] = [];
const started = Date.now();
let last = await totals();
let down = false;
let up = false;
while (Date.now() - started < RUN_MS) {
  await sleep(SAMPLE_MS);
  const t = Date.now() - started;
  if (!down && t >= DOWN_AT) {
    down = true;
    await server.kill();
  }
  if (!up && t >= UP_AT) {
    up = true;
    await server.restart();
  }
  const now = await totals();
  const rates: Totals = {};
  for (const k of Object.keys(now)) rates[k] = k === "circuit" ? now[k]! : ((now[k]! - last[k]!) * 1000) / SAMPLE_MS;
  samples.push({ t, rates });
  last = now;
}
stop = true;
await traffic;
inst.disable();
await cache.close();
await meterProvider.shutdown();
await server.stop();

// ---------------------------------------------------------------- the picture
const series = [
  { key: "l1", label: "hits from L1 (layercache.hits, layer=l1)", color: "#2b8a3e" },
  { key: "l2", label: "hits from L2 (layercache.hits, layer=l2)", color: "#1971c2" },
  { key: "loads", label: "loads (layercache.loads)", color: "#e67700" },
  { key: "stale", label: "fail-safe stale hits (layercache.stale_hits)", color: "#9c36b5" },
  { key: "l2errors", label: "failed L2 calls (layercache.l2.duration, outcome=error)", color: "#c92a2a" },
];
const W = 860;
const H = 420;
const left = 60;
const right = 20;
const top = 40;
const bottom = 140;
const plotW = W - left - right;
const plotH = H - top - bottom;
const maxY = Math.max(1, ...samples.flatMap((s) => series.map((x) => s.rates[x.key]!)));
// The smallest of 1, 2 or 5 × 10^k at or above the highest rate.
const decade = Math.pow(10, Math.floor(Math.log10(maxY)));
const yMax = [1, 2, 5, 10].map((m) => m * decade).find((v) => v >= maxY)!;
const x = (t: number) => left + (t / RUN_MS) * plotW;
const y = (v: number) => top + plotH - (Math.min(v, yMax) / yMax) * plotH;
const parts: string[] = [];
parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
parts.push(`<text x="${left}" y="22" font-size="14" font-weight="bold">layercache/otel during an L2 outage: Redis killed at ${DOWN_AT / 1000} s, started again (empty) at ${UP_AT / 1000} s</text>`);
// Redis down, and the breaker open (from the layercache.l2.circuit_open gauge).
parts.push(`<rect x="${x(DOWN_AT)}" y="${top}" width="${x(UP_AT) - x(DOWN_AT)}" height="${plotH}" fill="#f1f3f5"/>`);
parts.push(`<text x="${x(DOWN_AT) + 4}" y="${top + 14}" fill="#495057">Redis down</text>`);
let openFrom: number | undefined;
let prevT = 0;
for (const s of [...samples, { t: RUN_MS, rates: { circuit: 0 } as Totals }]) {
  if (s.rates.circuit === 1 && openFrom === undefined) openFrom = prevT;
  if (s.rates.circuit !== 1 && openFrom !== undefined) {
    parts.push(`<rect x="${x(openFrom)}" y="${top + plotH - 8}" width="${x(s.t) - x(openFrom)}" height="8" fill="#c92a2a" opacity="0.6"/>`);
    openFrom = undefined;
  }
  prevT = s.t;
}
parts.push(`<text x="${left + plotW - 4}" y="${top + 14}" text-anchor="end" fill="#c92a2a">red bar at the bottom: circuit breaker open (layercache.l2.circuit_open = 1)</text>`);
for (let i = 0; i <= 5; i++) {
  const v = (yMax / 5) * i;
  parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#dee2e6"/>`);
  parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`);
}
for (let s = 0; s <= RUN_MS / 1000; s++) parts.push(`<text x="${x(s * 1000)}" y="${top + plotH + 16}" text-anchor="middle">${s} s</text>`);
parts.push(`<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle">per second</text>`);
parts.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}" stroke="#495057"/><line x1="${left}" x2="${left + plotW}" y1="${top + plotH}" y2="${top + plotH}" stroke="#495057"/>`);
for (const s of series) {
  const pts = samples.map((p) => `${x(p.t).toFixed(1)},${y(p.rates[s.key]!).toFixed(1)}`).join(" ");
  parts.push(`<polyline points="${pts}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
}
series.forEach((s, i) => {
  const lx = left + (i % 2) * 400;
  const ly = top + plotH + 40 + Math.floor(i / 2) * 18;
  parts.push(`<line x1="${lx}" x2="${lx + 24}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="3"/><text x="${lx + 30}" y="${ly}">${s.label}</text>`);
});
parts.push(`<text x="${left}" y="${H - 28}" fill="#868e96">Rendered by examples/otel-outage.ts from one run: metrics read from the OpenTelemetry SDK every ${SAMPLE_MS} ms;</text>`);
parts.push(`<text x="${left}" y="${H - 12}" fill="#868e96">20 reads every 10 ms over ${KEYS} keys, L1 of 100 entries, ttl 3 s, failSafe 1 m, L2 timeout 200 ms, breaker: 3 failures, 5 s cooldown.</text>`);
parts.push("</svg>");
// OTEL_OUTAGE_SVG: another file to draw to (the repository's test of the examples draws to a temporary one).
const file = process.env.OTEL_OUTAGE_SVG ?? join(resolve(import.meta.dirname, ".."), "docs/images/otel-outage.svg");
writeFileSync(file, parts.join("\n") + "\n");
console.table(samples.filter((_, i) => i % 2 === 1).map((s) => ({ t: `${(s.t / 1000).toFixed(1)} s`, ...Object.fromEntries(Object.entries(s.rates).map(([k, v]) => [k, Math.round(v)])) })));
console.log(`wrote ${file}`);
