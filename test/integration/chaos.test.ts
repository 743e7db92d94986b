import { describe, expect, test } from "vitest";
import { FAULT_KINDS, runChaos, summarize } from "../../chaos/run.js";

/**
 * The short version of `npm run chaos`: three processes on their own redis-server, every fault
 * kind at least once, then the history checker. And the proof that the checker can fail: runs with
 * the invalidation bus switched off, with an oversized refresh pool, or with the engine's fix of
 * issue [5.1] switched off, must be caught.
 *
 * Each run draws its own seed; the failure message ends with the command that replays the run
 * (same seed, options, fault schedule and operation mix).
 */
const seed = (): number => Math.floor(Math.random() * 1e9);

describe("chaos (multi-process history check)", () => {
  test("30 s with Redis killed, paused and cut, and loaders slow, failing and outlasting: no violation", async () => {
    // Gaps of 1–2 s: even with every fault at its longest, the seven kinds fit in the 27 s before the quiet tail.
    const result = await runChaos({ durationMs: 30_000, seed: seed(), workers: 3, concurrency: 4, faultGapMs: [1000, 2000] });
    const summary = summarize(result);
    console.log(summary);
    expect(new Set(result.faults.map((f) => f.kind)).size, summary).toBe(FAULT_KINDS.length);
    // The run must have exercised what it checks: many checked reads, values served past their
    // ttl (stale window, fail-safe, soft timeout), windows checked during Redis faults, copies left
    // to inspect at the end. (Refreshes from L2 that outlive their value's window come with the
    // "loader-outlast" fault, which may be dealt late here; the runs below exercise them for sure.)
    expect(result.checkedReads, summary).toBeGreaterThan(1000);
    expect(result.staleReads, summary).toBeGreaterThan(0);
    const s = result.situations;
    for (const [name, n] of Object.entries({ duringFaults: s.duringFaults, stale: s.stale, failSafe: s.failSafe, softTimeout: s.softTimeout })) {
      expect(n, `${name}\n${summary}`).toBeGreaterThan(0);
    }
    expect(result.finalValues, summary).toBeGreaterThan(0);
    // Tags and bulk reads raced everything else (tagInvalidation is checked on every read of a tagged key).
    expect(result.opsByKind.removeByTag ?? 0, summary).toBeGreaterThan(0);
    expect(result.opsByKind.getOrSetMany ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("10 s with distributedLock and no faults: at most one loader call per key per value across the processes; without the lock the checker catches extra loads", async () => {
    const result = await runChaos({ durationMs: 10_000, seed: seed(), workers: 3, concurrency: 4, faults: false, lock: true });
    const summary = summarize(result);
    console.log(summary);
    expect(result.opsByKind.removeByTag ?? 0, summary).toBeGreaterThan(0);
    expect(result.opsByKind.getOrSetMany ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
    const sabotaged = await runChaos({ durationMs: 8_000, seed: seed(), workers: 3, concurrency: 4, faults: false, lock: true, sabotage: "no-lock" });
    expect(sabotaged.violations.some((v) => v.rule === "distributedFlight"), summarize(sabotaged)).toBe(true);
  }, 120_000);

  test("15 s on the Streams bus with Redis killed, paused and cut (readers and all connections): no violation; the bus catches up", async () => {
    const redisFaults = FAULT_KINDS.filter((k) => !k.startsWith("loader-"));
    const result = await runChaos({ durationMs: 15_000, seed: seed(), workers: 3, concurrency: 4, bus: "streams", faultKinds: redisFaults, faultGapMs: [500, 1500] });
    const summary = summarize(result);
    console.log(summary);
    expect(result.faults.length, summary).toBeGreaterThanOrEqual(redisFaults.length);
    expect(result.checkedReads, summary).toBeGreaterThan(500);
    // Cut readers and a paused server: the readers went on from their position, without repair.
    expect(result.events.busCaughtUp ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  // The message-broker buses: faults on the servers only (the broker's or Redis's, drawn at random).
  const serverFaults = FAULT_KINDS.filter((k) => !k.startsWith("loader-"));

  test("12 s on RabbitMQBus with the broker killed, paused and its connections closed from the server (and Redis faults): no violation", async () => {
    // Longer gaps: a broker restart takes seconds, and so does rabbitmqctl on a busy machine; reads
    // during a fault and 2 s after it are not checked for staleness.
    const result = await runChaos({ durationMs: 12_000, seed: seed(), workers: 3, concurrency: 4, bus: "rabbitmq", faultKinds: serverFaults, faultGapMs: [1500, 3000] });
    const summary = summarize(result);
    console.log(summary);
    expect(result.faults.length, summary).toBeGreaterThan(0);
    expect(result.checkedReads, summary).toBeGreaterThan(100);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 180_000);

  test.each(["nats", "nats-jetstream"] as const)("10 s on NatsBus (--bus %s) with nats-server killed and paused (and Redis faults): no violation", async (bus) => {
    const result = await runChaos({ durationMs: 10_000, seed: seed(), workers: 3, concurrency: 4, bus, faultKinds: serverFaults, faultGapMs: [500, 1200] });
    const summary = summarize(result);
    console.log(summary);
    expect(result.faults.length, summary).toBeGreaterThan(0);
    // A restart can cover most of a 10 s run on a busy machine: few reads fall outside the faults
    // (and the 2 s after each), where the cross-process bound is checked; the windows are checked throughout.
    expect(result.checkedReads, summary).toBeGreaterThan(50);
    expect(result.situations.windowChecked, summary).toBeGreaterThan(500);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("12 s with Memcached as L2 (Redis pub/sub as the bus), memcached and Redis killed and paused: no violation", async () => {
    // Server faults only (the loader faults are the 30 s run's): each is memcached's or Redis's.
    const result = await runChaos({ durationMs: 12_000, seed: seed(), workers: 3, concurrency: 4, l2: "memcached", faultKinds: serverFaults, faultGapMs: [700, 1400] });
    const summary = summarize(result);
    console.log(summary);
    // Nine seconds before the quiet tail: a restart on a busy machine can take seconds.
    expect(result.faults.length, summary).toBeGreaterThanOrEqual(2);
    expect(result.checkedReads, summary).toBeGreaterThan(500);
    expect(result.events["hit l2"] ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("15 s on PostgreSQL alone (PostgresStore + PostgresBus) with the server killed, paused and its sessions terminated: no violation", async () => {
    const serverFaults = FAULT_KINDS.filter((k) => !k.startsWith("loader-"));
    const result = await runChaos({ durationMs: 15_000, seed: seed(), workers: 3, concurrency: 4, l2: "postgres", bus: "postgres", faultKinds: serverFaults, faultGapMs: [1500, 2500] });
    const summary = summarize(result);
    console.log(summary);
    expect(result.faults.length, summary).toBeGreaterThanOrEqual(serverFaults.length);
    // A restart of PostgreSQL takes longer than one of Redis: fewer reads fall outside the faults (and the 2 s after each).
    expect(result.checkedReads, summary).toBeGreaterThan(100);
    // Listeners terminated, a restart: the bus saw each gap and repaired L1.
    expect(result.events.busReconnect ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("10 s on PostgreSQL alone with distributedLock, tags and bulk reads, no faults: one loader call per key per value across the processes, no violation", async () => {
    const result = await runChaos({ durationMs: 10_000, seed: seed(), workers: 3, concurrency: 4, l2: "postgres", bus: "postgres", faults: false, lock: true });
    const summary = summarize(result);
    console.log(summary);
    expect(result.opsByKind.removeByTag ?? 0, summary).toBeGreaterThan(0);
    expect(result.opsByKind.getOrSetMany ?? 0, summary).toBeGreaterThan(0);
    expect(result.events["hit l2"] ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("12 s on the Kafka bus with the broker killed, paused and its connections cut: no violation; the bus catches up", async () => {
    const serverFaults = ["server-kill", "server-pause", "listener-kill"] as const;
    const result = await runChaos({ durationMs: 12_000, seed: seed(), workers: 3, concurrency: 4, bus: "kafka", faultKinds: [...serverFaults], faultGapMs: [500, 1500] });
    const summary = summarize(result);
    console.log(summary);
    // One broker restart (5–20 s on a busy machine) may take the whole run.
    expect(result.faults.length, summary).toBeGreaterThanOrEqual(1);
    // A broker restart takes 5–15 s here: a run that draws one spends most of its time inside that
    // fault, where the cross-process promise is suspended; the windows are checked throughout.
    expect(result.checkedReads, summary).toBeGreaterThan(30);
    expect(result.situations.duringFaults, summary).toBeGreaterThan(300);
    // Cut connections, a paused or restarted broker (with its log): the readers went on from their offsets.
    expect(result.events.busCaughtUp ?? 0, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 150_000);

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

  test("outlasting loaders only: refreshes from L2 outlive their value's window, reads arrive after it, and none is served a value past its window", async () => {
    // The workload of the sabotage run below, without the sabotage: it must pass.
    const result = await runChaos({ durationMs: 20_000, seed: seed(), workers: 3, concurrency: 4, faultKinds: ["loader-outlast"], faultGapMs: [100, 300] });
    const summary = summarize(result);
    expect(result.situations.l2RefreshesPastWindow, summary).toBeGreaterThan(0);
    expect(result.situations.pastWindowDuringL2Refresh, summary).toBeGreaterThan(0);
    expect(result.violations, summary).toEqual([]);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);

  test("sabotaged (issue [5.1] unfixed: callers joining a refresh that answered early from L2 get its stale value) under outlasting loaders: the checker finds values past their window", async () => {
    // Only "loader-outlast" faults, back to back: in every process, background values age in L2
    // (refreshes from L1 fail), are dropped from L1 late in their stale window, and the refresh
    // the next read starts from L2 outlives the window; reads after it closed join that refresh.
    // The same workload with the fix serves them a newer value (the 30 s run above has this fault
    // too, and counts such reads, with no violation).
    const result = await runChaos({ durationMs: 20_000, seed: seed(), workers: 3, concurrency: 4, sabotage: "stale-join", faultKinds: ["loader-outlast"], faultGapMs: [100, 300] });
    const summary = summarize(result);
    expect(result.situations.pastWindowDuringL2Refresh, summary).toBeGreaterThan(0);
    expect(result.violations.some((v) => v.rule === "staleWindow"), summary).toBe(true);
    expect(result.violations.every((v) => v.rule === "staleWindow"), summary).toBe(true);
    expect(result.unhandledRejections, summary).toBe(0);
  }, 120_000);
});
