/**
 * `npm run bench:postgres` — layercache on PostgreSQL alone, beside its peers, in one run on a
 * PostgreSQL server this script starts (initdb in a temporary folder, a free loopback port):
 *
 * 1. L2 hit with L1 cold, 64 concurrent gets: layercache (PostgresStore) vs BentoCache's SQL driver
 *    (bentocache/drivers/knex on knex + pg) vs a raw pg SELECT of the same rows + JSON.parse.
 * 2. Invalidation latency: `remove` in process A until process B dropped its copy, over
 *    NOTIFY/LISTEN (PostgresBus), beside the raw pg floor measured in the same run: a row write and
 *    a `pg_notify` from A, a LISTEN session and a Map in B (the same work, by hand), and NOTIFY alone.
 *
 * Prints tables, the ratios and the targets; writes docs/benchmarks/postgres.json. `--quick` for a
 * short run.
 */
import { execFileSync, fork } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import pg from "pg";
import knex from "knex";
import { BentoCache, bentostore } from "bentocache";
import { memoryDriver } from "bentocache/drivers/memory";
import { knexDriver } from "bentocache/drivers/knex";
import { LayerCache } from "../src/index.js";
import { PostgresBus, PostgresStore } from "../src/backends/postgres/index.js";
import { PostgresServer, postgresBinaries } from "../test/support/postgres-server.js";
import { compare, OPTIONS, percentile, printRatios, QUICK, rng, sleep } from "./lib.js";

const root = resolve(import.meta.dirname, "..");
const results: Record<string, unknown> = {};
const targets: { scenario: string; target: string; measured: string; met: boolean }[] = [];
const target = (scenario: string, what: string, measured: string, met: boolean) => targets.push({ scenario, target: what, measured, met });
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const HOUR = 3_600_000;
/** Connections each library gets: the same pool size for all. */
const POOL = 10;

function pool(url: string): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: POOL });
  p.on("error", () => {});
  return p;
}

/** The payload of a layercache record: the text after its sixth "|" (see src/l2/envelope.ts). */
function payloadOf(record: string): string {
  let at = -1;
  for (let i = 0; i < 6; i++) at = record.indexOf("|", at + 1);
  return record.slice(at + 1);
}

// ------------------------------------------------------------------ 1. L2 hit, L1 cold, 64 concurrent
async function l2Hit(url: string): Promise<void> {
  const lcPool = pool(url);
  const rawPool = pool(url);
  // L1 bounded to one entry: every read of a random key among 10 000 goes to L2.
  const lc = new LayerCache({ prefix: "b1-lc", ttl: "1h", maxEntries: 1, l2: new PostgresStore({ pool: lcPool }) });
  const db = knex({ client: "pg", connection: url, pool: { min: 0, max: POOL } });
  const bento = new BentoCache({
    default: "c",
    stores: { c: bentostore().useL1Layer(memoryDriver({ maxItems: 1 })).useL2Layer(knexDriver({ connection: db, tableName: "bentocache_bench" })) },
  });
  const N = 10_000;
  for (let i = 0; i < N; i += 500) {
    await Promise.all(Array.from({ length: 500 }, (_, j) => lc.set(`key:${i + j}`, { ...VALUE, id: i + j })));
    await Promise.all(Array.from({ length: 500 }, (_, j) => bento.set({ key: `key:${i + j}`, value: { ...VALUE, id: i + j }, ttl: HOUR })));
  }
  // The raw floor reads layercache's rows: one prepared SELECT per key, then JSON.parse of the payload.
  const raw = async (key: string): Promise<unknown> => {
    const r = await rawPool.query({ name: "raw-get", text: "SELECT record FROM layercache WHERE key = $1", values: [`b1-lc::${key}`] });
    const record = r.rows[0]?.record as string | undefined;
    return record === undefined ? undefined : JSON.parse(payloadOf(record));
  };
  const random = rng(3);
  const picks = Array.from({ length: 64 * 1024 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  const peers: Record<string, (key: string) => Promise<unknown>> = {
    layercache: (k) => lc.get(k),
    BentoCache: (k) => bento.get({ key: k }),
    "raw pg SELECT+JSON.parse": raw,
  };
  for (const [name, get] of Object.entries(peers)) {
    const v = (await get("key:7")) as { id?: number } | undefined;
    if (v?.id !== 7) throw new Error(`${name}: expected the value of key:7, got ${JSON.stringify(v)}`);
  }
  const r = await compare(
    Object.fromEntries(
      Object.entries(peers).map(([name, get]) => [
        name,
        async () => {
          const at = (cursor = (cursor + 64) % picks.length);
          const batch = await Promise.all(picks.slice(at, at + 64).map((k) => get(k)));
          if (batch[0] === undefined) throw new Error(`${name}: expected an L2 hit`);
        },
      ]),
    ),
    64,
  );
  printRatios("1. L2 hit with L1 cold: 64 concurrent gets against PostgreSQL (pools of 10 connections)", r, "layercache");
  results.l2Hit = r;
  const vsBento = r.layercache! / r.BentoCache!;
  const vsRaw = r.layercache! / r["raw pg SELECT+JSON.parse"]!;
  target("1", "L2 hit ≥ 2× BentoCache (knex driver)", `${vsBento.toFixed(2)}×`, vsBento >= 2);
  target("1", "L2 hit ≥ 80% of raw pg", `${(vsRaw * 100).toFixed(0)}%`, vsRaw >= 0.8);
  console.log(`(layercache gathers the reads of one tick into one SELECT … = ANY($1); the raw floor sends one SELECT per key)`);
  await lc.close();
  await bento.disconnectAll();
  await Promise.all([lcPool.end(), rawPool.end()]);
}

// ------------------------------------------------------------------ 2. invalidation latency
type Mode = "layercache" | "raw" | "notify";

/**
 * One run: process B (bench/postgres-invalidation-peer.ts) holds keys; process A (here) removes
 * them one at a time and measures until B reports the drop. "raw": the same work by hand (a row
 * write, then pg_notify; B listens with a Map); "notify": pg_notify alone (the bare NOTIFY→LISTEN
 * delivery, B as in "raw").
 */
async function invalidationRun(url: string, mode: Mode): Promise<number[]> {
  const prefix = `b2-${mode}-${process.pid}`;
  const b = fork(join(root, "bench/postgres-invalidation-peer.ts"), [url, prefix, mode === "layercache" ? "layercache" : "raw"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const waiting = new Map<string, (m: Record<string, string>) => void>();
  b.on("message", (m: Record<string, string>) => {
    const id = m.dropped !== undefined ? `dropped:${m.dropped}` : m.primed !== undefined ? `primed:${m.primed}` : m.ready ? "ready" : m.warmed ? "warmed" : "stopped";
    waiting.get(id)?.(m);
  });
  const expect = (id: string) => new Promise<Record<string, string>>((r) => waiting.set(id, r));
  await expect("ready");

  const p = pool(url);
  const store = mode === "layercache" ? new PostgresStore({ pool: p }) : undefined;
  // The bus paired with the store, as docs/postgres.md recommends: a remove's tombstone and its NOTIFY in one statement.
  const a = store ? new LayerCache({ prefix, ttl: "1h", l2: store, bus: new PostgresBus({ store }) }) : undefined;
  await a?.ready();
  const local = new Map<string, unknown>();
  const write = (k: string, record: string) => p.query({ name: "raw-set", text: "INSERT INTO bench_raw (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record", values: [`${prefix}:${k}`, record] });
  // Through the pool, as an application would (one session would queue the statements of concurrent callers).
  const notify = (k: string) => p.query({ name: "raw-notify", text: "SELECT pg_notify($1, $2)", values: [`${prefix}:raw`, k] });
  const ops = {
    set: async (k: string, v: unknown) => {
      if (a) return a.set(k, v);
      local.set(k, v);
      await write(k, JSON.stringify(v));
      await notify(k);
    },
    remove: async (k: string) => {
      if (a) return a.remove(k);
      local.delete(k);
      if (mode === "raw") await write(k, "-");
      await notify(k);
    },
    read: async (k: string) => {
      if (a) return a.getOrSet(k, async () => ({ n: 0 }));
      if (local.has(k)) return local.get(k);
      const r = await p.query({ name: "raw-get", text: "SELECT record FROM bench_raw WHERE key = $1", values: [`${prefix}:${k}`] });
      const v = r.rows.length === 0 || r.rows[0].record === "-" ? { n: 0 } : JSON.parse(r.rows[0].record);
      local.set(k, v);
      return v;
    },
  };
  // Both sides hold the background keys first (so the background is steady: reads hit L1, a fifth
  // of the operations are writes, each invalidating the other side's copy).
  for (let i = 0; i < 2000; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => ops.read(`bg:${i + j}`)));
  const warmed = expect("warmed");
  b.send({ op: "warm" });
  await warmed;
  // Background load, spread out as traffic is: 2 operations every 2 ms here and 2 in B (2 000 ops/s, a fifth of them writes).
  let n = 0;
  const bg = setInterval(() => {
    for (let i = 0; i < 2; i++) {
      const k = `bg:${n++ % 2000}`;
      void (n % 5 === 0 ? ops.set(k, { n }) : ops.read(k)).catch(() => {});
    }
  }, 2);
  b.send({ op: "background", perTick: 2 });
  await sleep(300);

  const samples = QUICK ? 100 : 500;
  const latencies: number[] = [];
  const parts: [number, number][] = [];
  for (let i = 0; i < samples; i++) {
    const key = `inv:${i}`;
    const primed = expect(`primed:${key}`);
    b.send({ op: "prime", key });
    await primed;
    // What the prime still does once B answered settles first (in layercache, a load's message to
    // its peers goes out after the load returns): the window below measures the invalidation alone.
    await sleep(5);
    const dropped = expect(`dropped:${key}`);
    const t0 = process.hrtime.bigint();
    await ops.remove(key);
    const t1 = process.hrtime.bigint();
    const m = await dropped;
    latencies.push(Number(BigInt(m.t!) - t0) / 1e6);
    parts.push([Number(t1 - t0) / 1e6, Number(BigInt(m.t!) - t1) / 1e6]);
  }
  clearInterval(bg);
  if (process.env.BENCH_DEBUG) {
    const at = (i: 0 | 1, q: number) => percentile(parts.map((x) => x[i]), q).toFixed(3);
    console.log(mode, "remove() p50/p99", at(0, 50), at(0, 99), "| then until B dropped p50/p99", at(1, 50), at(1, 99));
  }
  const stopped = expect("stopped");
  b.send({ op: "stop" });
  await stopped;
  await a?.close();
  await p.end();
  return latencies;
}

async function invalidation(url: string): Promise<void> {
  const setup = pool(url);
  await setup.query("CREATE UNLOGGED TABLE IF NOT EXISTS bench_raw (key text COLLATE \"C\" PRIMARY KEY, record text NOT NULL)");
  await setup.end();
  const names: Record<Mode, string> = {
    layercache: "layercache (PostgresStore + PostgresBus)",
    raw: "raw floor: row write + pg_notify, LISTEN + Map",
    notify: "raw floor: pg_notify alone, LISTEN + Map",
  };
  const out: Record<string, { p50: number; p99: number; max: number }> = {};
  // Rounds in rotating order, samples pooled per mode: the machine's noise falls on all of them.
  const all: Record<Mode, number[]> = { layercache: [], raw: [], notify: [] };
  const modes: Mode[] = ["layercache", "raw", "notify"];
  const rounds = QUICK ? 1 : 2;
  for (let round = 0; round < rounds; round++) {
    for (const mode of modes.map((_, i) => modes[(i + round) % modes.length]!)) all[mode].push(...(await invalidationRun(url, mode)));
  }
  const rows = modes.map((mode) => {
    const l = all[mode];
    out[mode] = { p50: percentile(l, 50), p99: percentile(l, 99), max: Math.max(...l) };
    return { run: names[mode], samples: l.length, p50: `${out[mode]!.p50.toFixed(3)} ms`, p99: `${out[mode]!.p99.toFixed(3)} ms`, max: `${out[mode]!.max.toFixed(3)} ms` };
  });
  console.log(`\n2. Invalidation latency over NOTIFY: remove in process A until process B dropped its copy (2 000 ops/s of background load)`);
  console.table(rows);
  results.invalidation = out;
  const vsRaw = out.layercache!.p99 / out.raw!.p99;
  const vsNotify = out.layercache!.p99 / out.notify!.p99;
  target("2", "invalidation p99 ≤ 1.5× the raw floor (same work: row write + NOTIFY)", `${vsRaw.toFixed(2)}× (${out.layercache!.p99.toFixed(2)} ms vs ${out.raw!.p99.toFixed(2)} ms)`, vsRaw <= 1.5);
  target("2", "invalidation p99 ≤ 1.5× bare NOTIFY→LISTEN", `${vsNotify.toFixed(2)}× (${out.layercache!.p99.toFixed(2)} ms vs ${out.notify!.p99.toFixed(2)} ms)`, vsNotify <= 1.5);
}

async function main(): Promise<void> {
  const bins = postgresBinaries();
  const server = await PostgresServer.start();
  const machine = {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    postgres: execFileSync(bins.postgres, ["--version"]).toString().trim(),
    date: new Date().toISOString().slice(0, 10),
    quick: QUICK,
    rounds: OPTIONS.rounds,
    timePerRoundMs: OPTIONS.time,
  };
  console.log(`layercache on PostgreSQL — ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ${machine.postgres}${QUICK ? " (quick)" : ""}`);
  console.log(`Throughput: median of ${OPTIONS.rounds} rounds of ${OPTIONS.time} ms per library, libraries in rotating order, all in this one run.`);
  try {
    const only = process.argv.find((a) => a.startsWith("--only="))?.slice(7).split(",");
    if (!only || only.includes("1")) await l2Hit(server.url);
    if (!only || only.includes("2")) await invalidation(server.url);
  } finally {
    await server.stop();
  }
  console.log("\nTargets");
  console.table(targets.map((t) => ({ scenario: t.scenario, target: t.target, measured: t.measured, met: t.met ? "yes" : "NO" })));
  const dir = join(root, "docs/benchmarks");
  mkdirSync(dir, { recursive: true });
  const file = QUICK ? "postgres-quick.json" : "postgres.json";
  writeFileSync(join(dir, file), JSON.stringify({ machine, results, targets }, null, 2) + "\n");
  console.log(`\nWrote docs/benchmarks/${file}`);
}

await main();
