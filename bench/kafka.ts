/**
 * `npm run bench:kafka`: scenario 6 (invalidation latency) on Kafka. Starts its own broker (the test
 * suite's KafkaServer: Apache Kafka in KRaft mode on a free loopback port) and measures, in this one
 * run, the time from `remove` in process A until process B dropped its copy:
 * - layercache with `KafkaBus` on both sides (no L2: the bus alone);
 * - the raw floor: @platformatic/kafka as its documentation shows it — `Producer.send` (acks=all,
 *   as KafkaBus) and a `Consumer` stream of the topic, a Map as L1 — the same client library's own
 *   publish→receive time on this machine.
 * No other Node cache offers a Kafka bus, so there is no named peer to run beside. A discarded
 * warm-up run of each comes first (a fresh broker is slow for its first seconds); then runs
 * alternate (layercache, raw, raw, layercache …) so that the machine's noise falls on both.
 * `BENCH_DEBUG=1` prints event-loop delay, background publish times and bus errors. Prints the table
 * and the targets; writes docs/benchmarks/kafka.json. `--quick`: fewer samples.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { Admin } from "@platformatic/kafka";
import { LayerCache } from "../src/index.js";
import { KafkaBus } from "../src/backends/kafka/index.js";
import { KAFKA_VERSION, KafkaServer } from "../test/support/kafka-server.js";
import { percentile, QUICK, sleep } from "./lib.js";
import { rawClient } from "./kafka-raw.js";
import { forkPeer } from "./peer-protocol.js";

const root = resolve(import.meta.dirname, "..");
type Mode = "layercache" | "raw";

/** One run: `samples` invalidations from A to B under 2 500 ops/s of background load in each process. */
async function run(broker: string, mode: Mode, samples: number, round: number): Promise<number[]> {
  const prefix = `bench-${mode}-${process.pid}-${round < 0 ? "warm" : round}`;
  if (mode === "raw") {
    const admin = new Admin({ clientId: "bench", bootstrapBrokers: [broker] });
    await admin.createTopics({ topics: [`${prefix}-raw`], partitions: 1, replicas: 1 });
    await admin.close();
  }
  const b = await forkPeer(join(root, "bench/kafka-peer.ts"), [broker, prefix, mode]);
  const local = new Map<string, unknown>();
  const a = mode === "layercache" ? new LayerCache({ prefix, ttl: "1h", bus: new KafkaBus({ brokers: [broker] }) }) : undefined;
  if (process.env.BENCH_DEBUG) {
    let shown = 0;
    a?.on("busError", (e) => void (shown++ < 5 && console.error("A busError", e.operation, (e.error as Error)?.message)));
  }
  await a?.ready();
  // The raw floor hears B's invalidations and drops its copies too, as layercache does.
  const raw = mode === "raw" ? await rawClient(broker, `${prefix}-raw`, (key) => void local.delete(key)) : undefined;
  const ops = {
    set: async (k: string, v: unknown) => {
      if (a) return a.set(k, v);
      local.set(k, v);
      await raw!.publish(k);
    },
    remove: async (k: string) => {
      if (a) return a.remove(k);
      local.delete(k);
      await raw!.publish(k);
    },
    read: async (k: string) => (a ? a.getOrSet(k, async () => ({ n: 0 })) : (local.get(k) ?? local.set(k, { n: 0 }))),
  };
  let n = 0;
  const setTimes: number[] = [];
  const bg = setInterval(() => {
    for (let i = 0; i < 5; i++) {
      const k = `bg:${n++ % 2000}`;
      if (n % 5 === 0) {
        const t = performance.now();
        void ops.set(k, { n }).then(() => setTimes.push(performance.now() - t), () => {});
      } else void ops.read(k).catch(() => {});
    }
  }, 2);
  b.background(5);
  // Let both processes settle under the load before measuring.
  await sleep(2000);
  const { monitorEventLoopDelay } = await import("node:perf_hooks");
  const eld = monitorEventLoopDelay({ resolution: 1 });
  if (process.env.BENCH_DEBUG) eld.enable();
  const latencies = await b.measure(samples, (key) => ops.remove(key));
  clearInterval(bg);
  if (process.env.BENCH_DEBUG) console.error(mode, "A background set p50/p99/max ms", percentile(setTimes, 50).toFixed(1), percentile(setTimes, 99).toFixed(1), Math.max(...setTimes).toFixed(1), setTimes.length);
  if (process.env.BENCH_DEBUG) console.error(mode, "A event-loop delay p99/max ms", (eld.percentile(99) / 1e6).toFixed(1), (eld.max / 1e6).toFixed(1));
  if (process.env.BENCH_DEBUG && a) console.error("A stats", JSON.stringify({ busErrors: a.stats().busErrors, peerInvalidations: a.stats().peerInvalidations }));
  await b.stop();
  await a?.close();
  await raw?.close();
  return latencies;
}

async function main(): Promise<void> {
  const started = Date.now();
  const server = await KafkaServer.start();
  const startMs = Date.now() - started;
  const machine = { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, kafka: KAFKA_VERSION, date: new Date().toISOString().slice(0, 10), quick: QUICK };
  console.log(`layercache Kafka benchmark — ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, Apache Kafka ${KAFKA_VERSION} (KRaft, started in ${(startMs / 1000).toFixed(1)} s)${QUICK ? " (quick)" : ""}`);
  const rounds = QUICK ? 1 : 3;
  const perRound = QUICK ? 100 : 200;
  const all: Record<Mode, number[]> = { layercache: [], raw: [] };
  try {
    // A broker that just started is slow for its first seconds (its JVM compiles the hot paths):
    // one discarded run of each kind first, so that neither side is measured on a cold broker.
    for (const mode of ["layercache", "raw"] as Mode[]) await run(server.broker, mode, 50, -1);
    for (let round = 0; round < rounds; round++) {
      for (const mode of (round % 2 === 0 ? ["layercache", "raw"] : ["raw", "layercache"]) as Mode[]) all[mode].push(...(await run(server.broker, mode, perRound, round)));
    }
  } finally {
    await server.stop();
  }
  const stats = (l: number[]) => ({ p50: percentile(l, 50), p99: percentile(l, 99), max: Math.max(...l), samples: l.length });
  const out = { layercache: stats(all.layercache), raw: stats(all.raw) };
  const names: Record<Mode, string> = { layercache: "layercache (KafkaBus)", raw: "raw floor (@platformatic/kafka Producer.send + Consumer stream, Map)" };
  console.log(`\n6. Invalidation latency on Kafka: remove in process A until process B dropped its copy (${rounds} × ${perRound} samples per run, 5 000 ops/s of background load)`);
  console.table((Object.keys(out) as Mode[]).map((m) => ({ run: names[m], p50: `${out[m].p50.toFixed(3)} ms`, p99: `${out[m].p99.toFixed(3)} ms`, max: `${out[m].max.toFixed(3)} ms`, "÷ raw p99": m === "raw" ? "—" : `${(out[m].p99 / out.raw.p99).toFixed(2)}×` })));
  const ratio = out.layercache.p99 / out.raw.p99;
  const targets = [{ scenario: "6 (kafka)", target: "invalidation p99 ≤ 1.5 × the raw client's p99, same run", measured: `${out.layercache.p99.toFixed(2)} ms vs ${out.raw.p99.toFixed(2)} ms (${ratio.toFixed(2)}×)`, met: ratio <= 1.5 }];
  console.log("\nTargets");
  console.table(targets.map((t) => ({ ...t, met: t.met ? "yes" : "NO" })));
  const dir = join(root, "docs/benchmarks");
  mkdirSync(dir, { recursive: true });
  const file = QUICK ? "kafka-quick.json" : "kafka.json";
  writeFileSync(join(dir, file), JSON.stringify({ machine, results: { s6: out }, targets }, null, 2) + "\n");
  console.log(`\nWrote docs/benchmarks/${file}`);
}

await main();
