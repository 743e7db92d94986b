/**
 * Scenario 6 for the message-broker buses: `remove` in process A until process B dropped its copy,
 * for layercache on the bus and for the raw floor (the client library alone: publish → receive →
 * delete from a Map), in one run, alternating rounds (this 2-vCPU machine is noisy: the ratio of
 * numbers from one run is what counts). Used by bench/rabbitmq.ts and bench/nats.ts.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { LayerCache } from "../src/index.js";
import { layercacheBus, rawPublisher, rawSubscriber, type BusKind } from "./bus-kinds.js";
import { percentile, QUICK, sleep } from "./lib.js";
import { forkPeer } from "./peer-protocol.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The target of the issue: layercache's invalidation p99 within 1.5× of the raw floor's, same run. */
const TARGET_RATIO = 1.5;

type Mode = "layercache" | "raw";

/** One run of `samples` invalidations of `mode` on `kind`, with a background load of one publish every 2 ms. */
async function run(kind: BusKind, url: string, mode: Mode, samples: number): Promise<number[]> {
  const prefix = `bench-${kind}-${mode}-${process.pid}-${Date.now()}`;
  const b = await forkPeer(join(root, "bench/bus-peer.ts"), [kind, url, prefix, mode]);

  const a = mode === "layercache" ? new LayerCache({ prefix, ttl: "1h", bus: layercacheBus(kind, url) }) : undefined;
  await a?.ready();
  const raw = mode === "raw" ? await rawPublisher(kind, url, `${prefix}:raw`) : undefined;
  // The raw floor does what the bus does here too: A listens on the channel as well (and hears its own messages).
  const rawListener = mode === "raw" ? await rawSubscriber(kind, url, `${prefix}:raw`, () => {}, raw!.nc) : undefined;
  const remove = (key: string): Promise<void> => (a ? a.remove(key) : raw!.publish(key));
  let n = 0;
  const bg = setInterval(() => void remove(`bg:${n++ % 2000}`).catch(() => {}), 2);
  await sleep(300);

  const latencies = await b.measure(samples, remove);
  clearInterval(bg);
  await b.stop();
  await a?.close();
  await rawListener?.close();
  await raw?.close();
  return latencies;
}

export interface BusBenchResult {
  kind: BusKind;
  layercache: { p50: number; p99: number; max: number };
  raw: { p50: number; p99: number; max: number };
  ratioP99: number;
}

/** Runs every kind against the server at its URL, prints the table and the targets, writes `outFile` (docs/benchmarks/...). */
export async function busBench(title: string, kinds: { kind: BusKind; url: string; name: string; floor: string }[], outFile: string): Promise<BusBenchResult[]> {
  const rounds = 2;
  const perRound = QUICK ? 60 : 250;
  const results: BusBenchResult[] = [];
  const rows: Record<string, string>[] = [];
  // `--kinds=nats-jetstream,...`: only those.
  const only = process.argv.find((a) => a.startsWith("--kinds="))?.slice("--kinds=".length).split(",");
  for (const { kind, url, name, floor } of kinds.filter((k) => only === undefined || only.includes(k.kind))) {
    const got: Record<Mode, number[]> = { layercache: [], raw: [] };
    for (let round = 0; round < rounds; round++) {
      for (const mode of (round % 2 === 0 ? ["layercache", "raw"] : ["raw", "layercache"]) as Mode[]) got[mode].push(...(await run(kind, url, mode, perRound)));
    }
    const stat = (l: number[]) => ({ p50: percentile(l, 50), p99: percentile(l, 99), max: Math.max(...l) });
    const r: BusBenchResult = { kind, layercache: stat(got.layercache), raw: stat(got.raw), ratioP99: 0 };
    r.ratioP99 = r.layercache.p99 / r.raw.p99;
    results.push(r);
    rows.push({ run: `layercache (${name})`, p50: `${r.layercache.p50.toFixed(3)} ms`, p99: `${r.layercache.p99.toFixed(3)} ms`, max: `${r.layercache.max.toFixed(3)} ms`, "p99 ÷ floor": `${r.ratioP99.toFixed(2)}×` });
    rows.push({ run: `raw floor (${floor})`, p50: `${r.raw.p50.toFixed(3)} ms`, p99: `${r.raw.p99.toFixed(3)} ms`, max: `${r.raw.max.toFixed(3)} ms`, "p99 ÷ floor": "—" });
  }
  console.log(`\n${title}: remove in process A until process B dropped its copy (${rounds * perRound} samples each, alternating rounds, a background publish every 2 ms; in both runs A and B listen on the channel)`);
  console.table(rows);
  console.log("\nTargets");
  console.table(results.map((r) => ({ target: `${r.kind}: invalidation p99 ≤ ${TARGET_RATIO}× the raw floor's p99`, measured: `${r.layercache.p99.toFixed(2)} ms vs ${r.raw.p99.toFixed(2)} ms (${r.ratioP99.toFixed(2)}×)`, met: r.ratioP99 <= TARGET_RATIO ? "yes" : "NO" })));
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify({ date: new Date().toISOString(), quick: QUICK, node: process.version, targetRatio: TARGET_RATIO, results }, null, 2) + "\n");
  console.log(`\nwritten: ${outFile}`);
  return results;
}

export const benchOut = (name: string): string => join(root, "docs", "benchmarks", QUICK ? `${name}-quick.json` : `${name}.json`);
