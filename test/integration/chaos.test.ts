import { describe, expect, test } from "vitest";
import { runChaos, summarize } from "../../chaos/run.js";

/**
 * The short version of `npm run chaos`: three processes on their own redis-server, every fault
 * kind at least once, then the history checker. And the proof that the checker can fail: runs with
 * the invalidation bus switched off, or with an oversized refresh pool, must be caught.
 *
 * Each run draws its own seed; the failure message ends with the command that replays the run
 * (same seed, options, fault schedule and operation mix).
 */
const seed = (): number => Math.floor(Math.random() * 1e9);

describe("chaos (multi-process history check)", () => {
  test("30 s with Redis killed, paused and cut, and loaders slow and failing: no violation", async () => {
    const result = await runChaos({ durationMs: 30_000, seed: seed(), workers: 3, concurrency: 4, faultGapMs: [1500, 3000] });
    const summary = summarize(result);
    console.log(summary);
    expect(new Set(result.faults.map((f) => f.kind)).size, summary).toBe(6);
    // The run must have exercised what it checks: many checked reads, values served past their
    // ttl (stale window, fail-safe), copies left to inspect at the end, a saturated refresh pool.
    expect(result.checkedReads, summary).toBeGreaterThan(1000);
    expect(result.staleReads, summary).toBeGreaterThan(0);
    expect(result.finalValues, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("sabotaged (no invalidation bus): the checker finds stale reads", async () => {
    const result = await runChaos({ durationMs: 8_000, seed: seed(), workers: 3, concurrency: 4, faults: false, sabotage: "no-bus" });
    const summary = summarize(result);
    expect(result.violations.some((v) => v.rule === "staleness"), summary).toBe(true);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("sabotaged (a refresh pool four times too big) under slow loaders: the checker counts too many refreshes", async () => {
    // Every background key cold: each one past its ttl is a refresh waiting to start, so the pool
    // is always full. (With the default 5 cold keys there are too few refreshable keys at once for
    // the oversized pool to show reliably: a CI run once peaked at exactly the bound, 4.) The same
    // workload without the sabotage peaks at 4; with it, at 8-16 per process.
    const result = await runChaos({ durationMs: 10_000, seed: seed(), workers: 3, concurrency: 4, sabotage: "big-pool", faultKinds: ["loader-slow"], faultGapMs: [300, 600], coldKeys: 20 });
    const summary = summarize(result);
    expect(result.violations.some((v) => v.rule === "refreshPool"), summary).toBe(true);
  }, 120_000);
});
