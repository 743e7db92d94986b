/**
 * Measuring helpers for the side-by-side benchmarks: batched tasks timed with tinybench, several
 * rounds in rotating order (these 2-core machines are noisy, so medians of ratios from one run are
 * what we report), percentiles, and a seeded Zipf generator.
 */
import { Bench } from "tinybench";

export interface Options {
  /** Time per task per round (ms). */
  time: number;
  rounds: number;
}

export const QUICK = process.argv.includes("--quick");
export const OPTIONS: Options = QUICK ? { time: 250, rounds: 2 } : { time: 1000, rounds: 5 };

/**
 * Runs each task (one call = `opsPerCall` operations) for `time` ms per round, `rounds` rounds in
 * rotating order, and returns the median operations per second of each.
 */
/** A task with hooks run around each of its phases (warm-up and run), e.g. to subscribe and unsubscribe. */
export interface HookedTask {
  fn: () => Promise<unknown>;
  beforeAll?: () => void;
  afterAll?: () => void;
}

export async function compare(tasks: Record<string, (() => Promise<unknown>) | HookedTask>, opsPerCall: number, o: Options = OPTIONS): Promise<Record<string, number>> {
  const names = Object.keys(tasks);
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < o.rounds; round++) {
    const order = names.map((_, i) => names[(i + round) % names.length]!);
    const bench = new Bench({ time: o.time, warmupTime: Math.min(200, o.time / 2), throws: true });
    for (const n of order) {
      const t = tasks[n]!;
      if (typeof t === "function") bench.add(n, t);
      else bench.add(n, t.fn, { beforeAll: t.beforeAll, afterAll: t.afterAll });
    }
    await bench.run();
    for (const task of bench.tasks) {
      const r = task.result as { period?: number } | undefined;
      if (!r?.period) throw new Error(`benchmark task ${task.name} produced no result`);
      samples[task.name]!.push((opsPerCall * 1000) / r.period);
    }
  }
  return Object.fromEntries(names.map((n) => [n, median(samples[n]!)]));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[] | Float64Array, p: number): number {
  const s = Float64Array.from(xs).sort();
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export { rng } from "./rng.js";

/** Zipf(s) over ranks 0..n-1: returns a sampler drawing ranks (0 most popular). */
export function zipf(n: number, s: number, random: () => number): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) cdf[i] = sum += 1 / Math.pow(i + 1, s);
  for (let i = 0; i < n; i++) cdf[i]! /= sum;
  return () => {
    const u = random();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function fmtOps(n: number): string {
  if (!Number.isFinite(n)) return "-";
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k/s`;
  return `${n.toFixed(0)} /s`;
}

/** Prints a table: one row per task, ops/s, and the ratio of `subject` to each. */
export function printRatios(title: string, results: Record<string, number>, subject: string): void {
  console.log(`\n${title}`);
  const mine = results[subject]!;
  const rows = Object.entries(results).map(([name, ops]) => ({
    library: name,
    "ops/s": fmtOps(ops),
    [`${subject} ÷ it`]: name === subject ? "—" : `${(mine / ops).toFixed(2)}×`,
  }));
  console.table(rows);
}
