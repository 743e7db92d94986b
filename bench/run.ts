/**
 * `npm run bench`: layercache side by side with BentoCache, cache-manager and cacheable, and raw
 * baselines, in one process run on this machine, against a redis-server it starts on a free
 * loopback port. Prints tables of ops/s and ratios; writes docs/benchmarks/results.json and
 * docs/benchmarks/chart.svg. `--quick` runs shorter rounds (for a smoke run, not for the README).
 */
import { execFileSync, fork, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { performance } from "node:perf_hooks";
import { join, resolve } from "node:path";
import { Redis } from "ioredis";
import { LRUCache } from "lru-cache";
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore, RedisStreamsBus } from "../src/backends/redis/index.js";
import { RedisServer, ensureBinary } from "../test/support/servers.js";
import { compare, fmtOps, OPTIONS, percentile, printRatios, QUICK, rng, sleep, zipf } from "./lib.js";
import { bentoPeer, cacheablePeer, cacheManagerPeer, layercachePeer, lruBaseline, rawRedisBaseline, type Peer } from "./peers.js";
import { renderChart } from "./chart.js";
import { forkPeer } from "./peer-protocol.js";

const root = resolve(import.meta.dirname, "..");
const results: Record<string, unknown> = {};
const targets: { scenario: string; target: string; measured: string; met: boolean }[] = [];
const target = (scenario: string, what: string, measured: string, met: boolean) => targets.push({ scenario, target: what, measured, met });

async function closeAll(peers: Peer[]): Promise<void> {
  for (const p of peers) await p.close().catch(() => {});
}

const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };

// ------------------------------------------------------------------ 1. L1 hit getOrSet
async function scenario1(): Promise<void> {
  const peers = [layercachePeer(), bentoPeer(), cacheManagerPeer(), cacheablePeer(), lruBaseline()];
  const keys = Array.from({ length: 1000 }, (_, i) => `key:${i}`);
  const loader = async () => VALUE;
  for (const p of peers) for (const k of keys) await p.getOrSet(k, loader);
  const r = await compare(
    Object.fromEntries(peers.map((p) => [p.name, async () => {
      for (let i = 0; i < 1000; i++) await p.getOrSet(keys[i]!, loader);
    }])),
    1000,
  );
  printRatios("1. L1 hit: getOrSet, sequential awaited calls over 1 000 hot keys", r, "layercache");
  results.s1 = r;
  const vsBento = r.layercache! / r.BentoCache!;
  const vsLru = r.layercache! / r["lru-cache (async)"]!;
  target("1", "≥ 10× BentoCache", `${vsBento.toFixed(1)}×`, vsBento >= 10);
  target("1", "≥ 25% of async lru-cache", `${(vsLru * 100).toFixed(0)}%`, vsLru >= 0.25);
  await closeAll(peers);
  await scenario1Observed(keys, loader);
}

/**
 * Scenario 1 again with observability on: layercache alone, with a subscriber on every
 * diagnostics channel, and with layercache/otel (the OpenTelemetry SDK, metrics only and metrics
 * with spans). Channels are process-wide, so each variant subscribes only around its own task
 * phases (tinybench hooks) and the plain run has no subscriber at all.
 */
async function scenario1Observed(keys: string[], loader: () => Promise<unknown>): Promise<void> {
  const { tracingChannel } = await import("node:diagnostics_channel");
  const { diagnosticChannels } = await import("../src/index.js");
  const { instrument } = await import("../src/integrations/otel/index.js");
  const { MeterProvider, PeriodicExportingMetricReader, InMemoryMetricExporter, AggregationTemporality } = await import("@opentelemetry/sdk-metrics");
  const { BasicTracerProvider, BatchSpanProcessor } = await import("@opentelemetry/sdk-trace-base");
  const caches = Array.from({ length: 4 }, () => layercachePeer());
  for (const p of caches) for (const k of keys) await p.getOrSet(k, loader);
  const run = (p: Peer) => async () => {
    for (let i = 0; i < 1000; i++) await p.getOrSet(keys[i]!, loader);
  };
  // A subscriber that does nothing: the cost of publishing itself.
  const noop = { start() {}, end() {}, asyncStart() {}, asyncEnd() {}, error() {} };
  const channels = Object.values(diagnosticChannels).map((name) => tracingChannel(name));
  // The real SDK, exporting nowhere far: metrics kept in memory (collected once an hour), spans batched to an exporter that drops them.
  const meterProvider = new MeterProvider({ readers: [new PeriodicExportingMetricReader({ exporter: new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE), exportIntervalMillis: 3_600_000 })] });
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor({ export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} })] });
  const otelTask = (p: Peer, readSpans: boolean) => {
    let inst: { disable(): void } | undefined;
    const cache = (p as Peer & { cache: LayerCache }).cache;
    return { fn: run(p), beforeAll: () => void (inst = instrument(cache, { meterProvider, tracerProvider, readSpans })), afterAll: () => inst?.disable() };
  };
  const r = await compare(
    {
      layercache: run(caches[0]!),
      "layercache + channel subscriber": { fn: run(caches[1]!), beforeAll: () => channels.forEach((c) => c.subscribe(noop)), afterAll: () => channels.forEach((c) => c.unsubscribe(noop)) },
      "layercache + OTel metrics": otelTask(caches[2]!, false),
      "layercache + OTel metrics and spans": otelTask(caches[3]!, true),
    },
    1000,
  );
  printRatios("1b. Scenario 1 with observability on (the same L1 hits)", r, "layercache");
  results.s1observed = r;
  await closeAll(caches);
  await meterProvider.shutdown();
  await tracerProvider.shutdown();
}

// ------------------------------------------------------------------ 2. cached function, L1 hit
async function scenario2(): Promise<void> {
  const peers = [layercachePeer(), bentoPeer(), cacheManagerPeer(), cacheablePeer(), lruBaseline()];
  const ids = Array.from({ length: 1000 }, (_, i) => String(i));
  const fns = peers.map((p) => p.cached(async (id: string) => ({ id, name: "user" })));
  for (const f of fns) for (const id of ids) await f(id);
  const r = await compare(
    Object.fromEntries(peers.map((p, j) => [p.name, async () => {
      const f = fns[j]!;
      for (let i = 0; i < 1000; i++) await f(ids[i]!);
    }])),
    1000,
  );
  printRatios("2. Cached function hitting L1 (key building included)", r, "layercache");
  results.s2 = r;
  await closeAll(peers);
}

// ------------------------------------------------------------------ 3. L2 hit, L1 cold, 64 concurrent
async function scenario3(url: string): Promise<void> {
  const clients: Redis[] = [];
  const client = () => {
    const c = new Redis(url);
    clients.push(c);
    return c;
  };
  // L1 bounded to one entry: every read of a random key among 10 000 goes to L2.
  const peers = [
    layercachePeer({ l1Size: 1, redis: client(), prefix: "s3-lc" }),
    bentoPeer({ l1Size: 1, redis: client(), prefix: "s3-bento" }),
    cacheManagerPeer({ l1Size: 1, redisUrl: url, prefix: "s3-cm" }),
    cacheablePeer({ l1Size: 1, redisUrl: url, prefix: "s3-ca" }),
    rawRedisBaseline(client(), "s3-raw"),
  ];
  const N = 10_000;
  for (const p of peers) for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => p.set(`key:${i + j}`, { ...VALUE, id: i + j })));
  const random = rng(3);
  const picks = Array.from({ length: 64 * 1024 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  const r = await compare(
    Object.fromEntries(peers.map((p) => [p.name, async () => {
      const at = (cursor = (cursor + 64) % picks.length);
      const batch = await Promise.all(picks.slice(at, at + 64).map((k) => p.get(k)));
      if (batch[0] === undefined) throw new Error(`${p.name}: expected an L2 hit`);
    }])),
    64,
  );
  printRatios("3. L2 hit with L1 cold: 64 concurrent gets against Redis", r, "layercache");
  results.s3 = r;
  const vsBento = r.layercache! / r.BentoCache!;
  const vsRaw = r.layercache! / r["ioredis GET+JSON.parse"]!;
  target("3", "≥ 2.5× BentoCache", `${vsBento.toFixed(2)}×`, vsBento >= 2.5);
  target("3", "≥ 80% of raw ioredis", `${(vsRaw * 100).toFixed(0)}%`, vsRaw >= 0.8);
  await closeAll(peers);
  for (const c of clients) c.disconnect();
}

// ------------------------------------------------------------------ 4. tiered Zipf workload
async function scenario4(url: string): Promise<void> {
  const KEYS = 100_000;
  const L1 = 10_000;
  const OPS = QUICK ? 30_000 : 150_000;
  const CONCURRENCY = 64;
  const draw = zipf(KEYS, 0.9, rng(4));
  const trace = Int32Array.from({ length: OPS }, () => draw());

  // The LRU baseline's hit ratio on the same trace, same size.
  const lru = new LRUCache<number, true>({ max: L1 });
  let lruHits = 0;
  for (const k of trace) {
    if (lru.get(k)) lruHits++;
    else lru.set(k, true);
  }

  const clients: Redis[] = [];
  const client = () => {
    const c = new Redis(url);
    clients.push(c);
    return c;
  };
  const lc = layercachePeer({ l1Size: L1, redis: client(), prefix: "s4-lc" });
  const peers: Peer[] = [lc, bentoPeer({ l1Size: L1, redis: client(), prefix: "s4-bento" }), cacheManagerPeer({ l1Size: L1, redisUrl: url, prefix: "s4-cm" }), cacheablePeer({ l1Size: L1, redisUrl: url, prefix: "s4-ca" })];
  const loader = async () => {
    await sleep(1);
    return VALUE;
  };
  const out: Record<string, { opsPerSec: number }> = {};
  for (const p of peers) {
    let next = 0;
    const t = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < OPS) {
          const k = trace[next++]!;
          await p.getOrSet(`key:${k}`, loader);
        }
      }),
    );
    out[p.name] = { opsPerSec: OPS / (Number(process.hrtime.bigint() - t) / 1e9) };
  }
  const s = lc.cache.stats();
  const l1Ratio = (s.hits - s.l2Hits) / OPS;
  console.log(`\n4. Tiered workload: Zipf(0.9) over ${KEYS} keys, L1 ${L1} entries, loader 1 ms, ${CONCURRENCY} concurrent, ${OPS} reads`);
  console.table(Object.entries(out).map(([name, v]) => ({ library: name, "ops/s": fmtOps(v.opsPerSec) })));
  console.log(`   layercache L1 hit ratio ${(l1Ratio * 100).toFixed(1)}% (SIEVE) vs LRU of the same size on the same trace ${((lruHits / OPS) * 100).toFixed(1)}%`);
  results.s4 = { throughput: out, l1HitRatio: l1Ratio, lruHitRatio: lruHits / OPS };
  await closeAll(peers);
  for (const c of clients) c.disconnect();
}

// ------------------------------------------------------------------ 5. stampede
async function scenario5(): Promise<void> {
  const peers = [layercachePeer(), bentoPeer(), cacheManagerPeer(), cacheablePeer()];
  const out: Record<string, number> = {};
  for (const p of peers) {
    let calls = 0;
    const loader = async () => {
      calls++;
      await sleep(10);
      return VALUE;
    };
    await Promise.all(Array.from({ length: 1000 }, () => p.getOrSet("stampede", loader)));
    out[p.name] = calls;
  }
  console.log("\n5. Stampede: 1 000 concurrent misses of one key → loader calls");
  console.table(Object.entries(out).map(([name, calls]) => ({ library: name, "loader calls": calls })));
  results.s5 = out;
  target("5", "exactly 1 loader call", String(out.layercache), out.layercache === 1);
  await closeAll(peers);
}

// ------------------------------------------------------------------ 6. invalidation latency
/**
 * One run of scenario 6: layercache on the pub/sub bus ("layercache") or the Streams bus
 * ("streams"), or the raw floor (ioredis SET + PUBLISH, a Map and a SUBSCRIBE).
 */
async function invalidationRun(url: string, mode: "layercache" | "streams" | "raw"): Promise<number[]> {
  const prefix = `s6-${mode}-${process.pid}`;
  const b = await forkPeer(join(root, "bench/invalidation-peer.ts"), [url, prefix, mode]);
  const client = new Redis(url);
  const bus = mode === "streams" ? new RedisStreamsBus({ client }) : new RedisBus({ client });
  const a = mode === "raw" ? undefined : new LayerCache({ prefix, ttl: "1h", l2: new RedisStore({ client }), bus });
  await a?.ready();
  const local = new Map<string, unknown>();
  // The raw floor does what layercache does here too: it hears B's invalidations and drops its copies.
  const sub = mode === "raw" ? new Redis(url) : undefined;
  if (sub) {
    await sub.subscribe(`${prefix}:raw`);
    sub.on("message", (_ch, key: string) => void local.delete(key));
  }
  const ops = {
    set: async (k: string, v: unknown) => {
      if (a) return a.set(k, v);
      local.set(k, v);
      void client.set(`${prefix}:${k}`, JSON.stringify(v));
      await client.publish(`${prefix}:raw`, k);
    },
    remove: async (k: string) => {
      if (a) return a.remove(k);
      local.delete(k);
      void client.set(`${prefix}:${k}`, "-");
      await client.publish(`${prefix}:raw`, k);
    },
    read: async (k: string) => {
      if (a) return a.getOrSet(k, async () => ({ n: 0 }));
      if (local.has(k)) return local.get(k);
      const v = JSON.parse((await client.get(`${prefix}:${k}`)) ?? "{}");
      local.set(k, v);
      return v;
    },
  };
  // 5 000 ops/s of background load, spread out as traffic is: 5 every 2 ms here and 5 in B.
  let n = 0;
  const bg = setInterval(() => {
    for (let i = 0; i < 5; i++) {
      const k = `bg:${n++ % 2000}`;
      void (n % 5 === 0 ? ops.set(k, { n }) : ops.read(k));
    }
  }, 2);
  b.background(5);
  await sleep(300);

  const samples = QUICK ? 100 : 500;
  const parts: [number, number][] = [];
  const { monitorEventLoopDelay } = await import("node:perf_hooks");
  const eld = monitorEventLoopDelay({ resolution: 1 });
  if (process.env.BENCH_DEBUG) eld.enable();
  const latencies = await b.measure(samples, (key) => ops.remove(key), parts);
  clearInterval(bg);
  await b.stop();
  if (process.env.BENCH_DEBUG) {
    eld.disable();
    console.log(mode, "remove() p50/p99", percentile(parts.map((x) => x[0]), 50).toFixed(3), percentile(parts.map((x) => x[0]), 99).toFixed(3), "| then until B dropped p50/p99", percentile(parts.map((x) => x[1]), 50).toFixed(3), percentile(parts.map((x) => x[1]), 99).toFixed(3), "| A event-loop delay p99/max ms", (eld.percentile(99) / 1e6).toFixed(2), (eld.max / 1e6).toFixed(2));
  }
  await a?.close();
  sub?.disconnect();
  client.disconnect();
  return latencies;
}

async function scenario6(url: string): Promise<void> {
  const rows: Record<string, number | string>[] = [];
  const out: Record<string, { p50: number; p99: number; max: number }> = {};
  const names = { layercache: "layercache (RedisBus, pub/sub)", streams: "layercache (RedisStreamsBus)", raw: "raw floor (ioredis SET+PUBLISH, Map)" };
  for (const mode of ["layercache", "streams", "raw"] as const) {
    const l = await invalidationRun(url, mode);
    out[mode] = { p50: percentile(l, 50), p99: percentile(l, 99), max: Math.max(...l) };
    rows.push({ run: names[mode], p50: `${out[mode]!.p50.toFixed(3)} ms`, p99: `${out[mode]!.p99.toFixed(3)} ms`, max: `${out[mode]!.max.toFixed(3)} ms` });
  }
  console.log(`\n6. Invalidation latency: remove in process A until process B dropped its copy (${QUICK ? 100 : 500} samples, 5 000 ops/s of background load)`);
  console.table(rows);
  results.s6 = out;
  target("6", "p99 ≤ 2 ms on loopback", `${out.layercache!.p99.toFixed(2)} ms (Streams ${out.streams!.p99.toFixed(2)} ms; raw floor ${out.raw!.p99.toFixed(2)} ms)`, out.layercache!.p99 <= 2);
}

// ------------------------------------------------------------------ 7. memory per entry
async function scenario7(): Promise<void> {
  const N = QUICK ? 200_000 : 1_000_000;
  const measure = (lib: string) =>
    new Promise<number>((resolvePromise, reject) => {
      const child = spawn(process.execPath, ["--expose-gc", "--import", "tsx", join(root, "bench/memory-child.ts"), lib, String(N)], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      child.on("exit", (code) => (code === 0 ? resolvePromise(JSON.parse(out).bytesPerEntry) : reject(new Error(`${lib}: exit ${code}`))));
    });
  const r: Record<string, number> = {};
  for (const lib of ["layercache", "lru-cache", "lru-cache+ttl"]) r[lib] = await measure(lib);
  console.log(`\n7. Memory: heap bytes per L1 entry, ${N.toLocaleString("en")} entries (key "key:<i>", value { id: i })`);
  console.table(Object.entries(r).map(([lib, b]) => ({ library: lib, "bytes/entry": b.toFixed(1), "layercache ÷ it": lib === "layercache" ? "—" : `${(r.layercache! / b).toFixed(2)}×` })));
  results.s7 = r;
  const ratio = r.layercache! / r["lru-cache"]!;
  target("7", "≤ 1.3× lru-cache bytes per entry", `${ratio.toFixed(2)}×`, ratio <= 1.3);
}

// ------------------------------------------------------------------ 8. refresh storm
async function scenario8(): Promise<void> {
  const KEYS = 10_000;
  const READS = QUICK ? 50_000 : 200_000;
  const cache = new LayerCache({ ttl: "1s", maxStale: "1h", refresh: "background", maxEntries: 20_000 });
  const keys = Array.from({ length: KEYS }, (_, i) => `storm:${i}`);
  let running = 0;
  let maxRunning = 0;
  let loads = 0;
  const loader = async () => {
    loads++;
    running++;
    maxRunning = Math.max(maxRunning, running);
    await sleep(5);
    running--;
    return { ...VALUE, refreshed: true };
  };
  // Reads arrive as requests do, each in an event-loop turn of its own (timers and I/O — here the
  // refreshes — run between them); fresh and storm reads are timed the same way.
  const timeReads = async (n: number, ks: string[], l: () => Promise<unknown>) => {
    const lat = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      await new Promise((r) => setImmediate(r));
      // performance.now() allocates nothing (hrtime.bigint() would, and its garbage would show in the tail).
      const t = performance.now();
      await cache.getOrSet(ks[i % ks.length]!, l);
      lat[i] = (performance.now() - t) * 1e3;
    }
    return lat;
  };
  for (const k of keys) await cache.getOrSet(k, async () => VALUE);
  const fresh = await timeReads(READS, keys, loader); // fresh L1 hits: the scenario-1 path, timed per read
  loads = 0;
  await sleep(1100); // every key expires at once
  const storm = await timeReads(READS, keys, loader);
  const freshP99 = percentile(fresh, 99);
  const stormP99 = percentile(storm, 99);
  await sleep(50);
  const s = cache.stats();
  await cache.close();
  console.log(`\n8. Refresh storm: ${KEYS} background-refresh keys expire together; ${READS} reads go on (loader 5 ms, refreshConcurrency 8)`);
  console.table([
    { reads: "fresh L1 hits (before)", p50: `${percentile(fresh, 50).toFixed(2)} µs`, p99: `${freshP99.toFixed(2)} µs` },
    { reads: "during the storm", p50: `${percentile(storm, 50).toFixed(2)} µs`, p99: `${stormP99.toFixed(2)} µs` },
  ]);
  console.log(`   loader calls ${loads}, most at once ${maxRunning} (bound 8), refreshes skipped (pool full) ${s.refreshSkips}`);
  results.s8 = { freshP50: percentile(fresh, 50), freshP99, stormP50: percentile(storm, 50), stormP99, maxConcurrentLoads: maxRunning, loads, skipped: s.refreshSkips };
  target("8", "read p99 within 2× of L1-hit p99", `${(stormP99 / freshP99).toFixed(2)}×`, stormP99 <= 2 * freshP99);
  target("8", "loader concurrency ≤ refreshConcurrency (8)", String(maxRunning), maxRunning <= 8);
}

// ------------------------------------------------------------------ 9. bulk read, L1 cold, L2 warm
async function scenario9(url: string): Promise<void> {
  const clients: Redis[] = [];
  const client = () => {
    const c = new Redis(url);
    clients.push(c);
    return c;
  };
  // L1 bounded to one entry: every read of a random key among 10 000 goes to L2.
  const lc = layercachePeer({ l1Size: 1, redis: client(), prefix: "s9-lc" });
  const bento = bentoPeer({ l1Size: 1, redis: client(), prefix: "s9-bento" });
  const cm = cacheManagerPeer({ l1Size: 1, redisUrl: url, prefix: "s9-cm" });
  const ca = cacheablePeer({ l1Size: 1, redisUrl: url, prefix: "s9-ca" });
  const N = 10_000;
  for (const p of [lc, bento, cm, ca]) for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => p.set(`key:${i + j}`, { ...VALUE, id: i + j })));
  const random = rng(9);
  const picks = Array.from({ length: 100 * 512 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  const next = (): string[] => picks.slice((cursor = (cursor + 100) % picks.length), cursor + 100);
  const loader = async () => VALUE;
  const loadMany = async (keys: string[]) => keys.map(() => VALUE);
  const check = (values: unknown[], who: string) => {
    if (values.length !== 100 || values[0] === undefined) throw new Error(`${who}: expected 100 L2 hits`);
  };
  const r = await compare(
    {
      "layercache getOrSetMany": async () => check(await lc.cache.getOrSetMany(next(), loadMany), "getOrSetMany"),
      "layercache 100 × getOrSet": async () => check(await Promise.all(next().map((k) => lc.cache.getOrSet(k, loader))), "getOrSet"),
      "layercache getMany": async () => check(await lc.cache.getMany(next()), "getMany"),
      "BentoCache 100 × getOrSet (no bulk call)": async () => check(await Promise.all(next().map((k) => bento.getOrSet(k, loader))), "bento"),
      "cache-manager mget": async () => check(await (cm as unknown as { cache: { mget(keys: string[]): Promise<unknown[]> } }).cache.mget(next()), "mget"),
      "cacheable getMany": async () => check(await (ca as unknown as { cache: { getMany(keys: string[]): Promise<unknown[]> } }).cache.getMany(next()), "cacheable"),
    },
    100,
  );
  printRatios("9. Bulk read of 100 keys, L1 cold, L2 warm (Redis): keys per second", r, "layercache getOrSetMany");
  results.s9 = r;
  const vsParallel = r["layercache getOrSetMany"]! / r["layercache 100 × getOrSet"]!;
  target("9", "getOrSetMany ≥ 5× 100 parallel getOrSet", `${vsParallel.toFixed(2)}× (parallel getOrSet already shares one MGET)`, vsParallel >= 5);
  await closeAll([lc, bento, cm, ca]);
  for (const c of clients) c.disconnect();
}

// ------------------------------------------------------------------ 10. stampede over 3 processes
async function scenario10(url: string): Promise<void> {
  const r: Record<string, number> = {};
  for (const mode of ["lock", "nolock"] as const) {
    const prefix = `s10-${mode}-${Date.now()}`;
    const peers = Array.from({ length: 3 }, () => fork(join(root, "bench/stampede-peer.ts"), [url, prefix, mode], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    await Promise.all(peers.map((p) => new Promise((res) => p.once("message", res))));
    const answers = await Promise.all(
      peers.map((p, i) => {
        const answer = new Promise<{ calls: number }>((res) => p.once("message", (m) => res(m as { calls: number })));
        p.send({ key: "hot", n: i === 0 ? 334 : 333, ms: 100 });
        return answer;
      }),
    );
    r[mode === "lock" ? "with distributedLock" : "without"] = answers.reduce((a, m) => a + m.calls, 0);
  }
  console.log("\n10. Stampede: 1 000 concurrent misses of one key spread over 3 processes (loader 100 ms): loader calls in total");
  console.table(Object.entries(r).map(([k, v]) => ({ setup: k, "loader calls": v })));
  results.s10 = r;
  target("10", "1 loader call with distributedLock (3 without)", `${r["with distributedLock"]} / ${r.without}`, r["with distributedLock"] === 1);
}

// ------------------------------------------------------------------ 11. tags
async function scenario11(): Promise<void> {
  const cache = new LayerCache({ ttl: "1h", maxEntries: 30_000 });
  const N = 10_000;
  const untagged = Array.from({ length: 1000 }, (_, i) => `plain:${i}`);
  const tagged = Array.from({ length: 1000 }, (_, i) => `tagged:${i}`);
  for (const k of untagged) await cache.set(k, VALUE);
  for (const k of tagged) await cache.set(k, VALUE, { tags: ["hot", `t:${k}`] });
  const loader = async () => VALUE;
  const r = await compare(
    {
      "untagged L1 hits": async () => {
        for (let i = 0; i < 1000; i++) await cache.getOrSet(untagged[i]!, loader);
      },
      "tagged L1 hits": async () => {
        for (let i = 0; i < 1000; i++) await cache.getOrSet(tagged[i]!, loader);
      },
    },
    1000,
  );
  printRatios("11a. L1 hits (getOrSet): tagged vs untagged entries", r, "tagged L1 hits");
  // removeByTag of one tag carried by 10 000 entries (no L2: the L1 index and the fences).
  const times: number[] = [];
  for (let round = 0; round < (QUICK ? 3 : 7); round++) {
    const scope = cache.scope(`bulk${round}`);
    await Promise.all(Array.from({ length: N }, (_, i) => scope.set(`k${i}`, i, { tags: ["big"] })));
    const t = performance.now();
    await scope.removeByTag("big");
    times.push(performance.now() - t);
    if ((await scope.get("k0")) !== undefined) throw new Error("removeByTag left an entry");
  }
  const ms = percentile(times, 50);
  console.log(`\n11b. removeByTag of a tag on ${N.toLocaleString("en")} L1 entries: median ${ms.toFixed(2)} ms (${((ms * 1000) / N).toFixed(2)} µs per entry)`);
  await cache.close();
  results.s11 = { ...r, removeByTag10kMs: ms };
  const ratio = r["tagged L1 hits"]! / r["untagged L1 hits"]!;
  target("11", "tagged L1 hits ≥ 90% of untagged", `${(ratio * 100).toFixed(0)}%`, ratio >= 0.9);
}

// ------------------------------------------------------------------ main
const SCENARIOS: Record<string, (url: string) => Promise<void>> = {
  "1": () => scenario1(),
  "2": () => scenario2(),
  "3": (url) => scenario3(url),
  "4": (url) => scenario4(url),
  "5": () => scenario5(),
  "6": (url) => scenario6(url),
  "7": () => scenario7(),
  "8": () => scenario8(),
  "9": (url) => scenario9(url),
  "10": (url) => scenario10(url),
  "11": () => scenario11(),
};

/**
 * Each scenario runs in a process of its own (all its libraries side by side in it), so that one
 * scenario's heap and JIT state do not tilt the next one's numbers.
 */
function runScenarioProcess(n: string, url: string): Promise<{ results: Record<string, unknown>; targets: typeof targets }> {
  return new Promise((resolvePromise, reject) => {
    const execArgv = ["--import", "tsx", ...(process.env.BENCH_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_PROF}`] : [])];
    const child = fork(join(root, "bench/run.ts"), [`--scenario=${n}`, url, ...(QUICK ? ["--quick"] : [])], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] });
    let got: { results: Record<string, unknown>; targets: typeof targets } | undefined;
    child.on("message", (m: typeof got) => (got = m));
    child.on("exit", (code) => (code === 0 && got ? resolvePromise(got) : reject(new Error(`scenario ${n} exited with ${code}`))));
  });
}

async function main(): Promise<void> {
  const single = process.argv.find((a) => a.startsWith("--scenario="))?.slice(11);
  if (single) {
    await SCENARIOS[single]!(process.argv[3]!);
    process.send!({ results, targets });
    return;
  }
  const redisBin = ensureBinary("redis-server", "redis-server");
  const server = await RedisServer.start();
  const machine = {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    redis: execFileSync(redisBin, ["--version"]).toString().match(/v=([\d.]+)/)?.[1] ?? "?",
    date: new Date().toISOString().slice(0, 10),
    quick: QUICK,
    rounds: OPTIONS.rounds,
    timePerRoundMs: OPTIONS.time,
  };
  console.log(`layercache benchmarks — ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, redis-server ${machine.redis}${QUICK ? " (quick)" : ""}`);
  console.log(`Each number: median of ${OPTIONS.rounds} rounds of ${OPTIONS.time} ms per library, libraries in rotating order, all in this one run.`);
  try {
    const only = process.argv.find((a) => a.startsWith("--only="))?.slice(7).split(",");
    for (const n of Object.keys(SCENARIOS)) {
      if (only && !only.includes(n)) continue;
      const r = await runScenarioProcess(n, server.url);
      Object.assign(results, r.results);
      targets.push(...r.targets);
    }
  } finally {
    await server.stop();
  }
  console.log("\nTargets");
  console.table(targets.map((t) => ({ scenario: t.scenario, target: t.target, measured: t.measured, met: t.met ? "yes" : "NO" })));
  const dir = join(root, "docs/benchmarks");
  mkdirSync(dir, { recursive: true });
  const file = QUICK ? "results-quick.json" : "results.json";
  writeFileSync(join(dir, file), JSON.stringify({ machine, results, targets }, null, 2) + "\n");
  if (!QUICK) writeFileSync(join(dir, "chart.svg"), renderChart(results, machine));
  console.log(`\nWrote docs/benchmarks/${file}${QUICK ? "" : " and docs/benchmarks/chart.svg"}`);
}

await main();
