import { describe, expect, test } from "vitest";
import { boundFor, check, type OpRecord, type WorkerReport } from "../chaos/checker.js";
import { RULES } from "../chaos/config.js";

/** The checker on hand-made histories: it must flag each broken promise, and only those. */
const report = (o: Partial<WorkerReport> = {}): WorkerReport => ({ worker: 0, maxLoadsPerKey: 1, maxRefreshing: 1, unhandledRejections: 0, peakRssBytes: 0, peakHeapBytes: 0, stalls: [], ...o });
const op = (o: Partial<OpRecord> & Pick<OpRecord, "op" | "start">): OpRecord => ({ worker: 0, scope: "fg", key: "k", end: o.start + 1, ok: true, ...o });

describe("history checker", () => {
  const write = op({ op: "remove", start: 1000, end: 1010, version: 5, worker: 1 });

  test("a clean history passes", () => {
    const h = [write, op({ op: "getOrSet", start: 2000, version: 5, at: 1990, policy: "fg" }), op({ op: "get", start: 2100 })];
    expect(check(h, [], [report()], RULES).violations).toEqual([]);
  });

  test("a read after the bound that returns an older version is a staleness violation", () => {
    const h = [write, op({ op: "get", start: 1010 + RULES.bound + 1, version: 4, at: 1500, policy: "fg" })];
    expect(check(h, [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
  });

  test("within the propagation bound, or inside a fault window, an older version is allowed", () => {
    const early = [write, op({ op: "get", start: 1010 + RULES.bound - 1, version: 4, at: 1500, policy: "fg" })];
    expect(check(early, [], [report()], RULES).violations).toEqual([]);
    const late = [write, op({ op: "get", start: 5000, version: 4, at: 4000, policy: "fg" })];
    expect(check(late, [{ kind: "redis-kill", start: 3000, end: 4000 }], [report()], RULES).violations).toEqual([]);
    expect(check(late, [{ kind: "redis-kill", start: 1000, end: 2000 }], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
  });

  test("time the reading process did not run lengthens the bound for its reads, and only for its reads", () => {
    // Worker 0 stalled 300 ms shortly after the invalidation: its read 700 ms after it is excused,
    // the same read by worker 2 (no stall) is not; a stall long before the invalidation changes nothing.
    const read = (worker: number) => op({ op: "get", start: 1010 + RULES.bound + 200, version: 4, at: 1500, policy: "fg", worker });
    const stalled = report({ worker: 0, stalls: [[1100, 1400]] });
    expect(check([write, read(0), read(2)], [], [stalled, report({ worker: 2 })], RULES).violations.map((v) => v.detail)).toEqual([expect.stringContaining("by worker 2")]);
    expect(check([write, read(0)], [], [report({ worker: 0, stalls: [[100, 400]] })], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
    // The lengthened window takes in an earlier stall too; stalls count only up to the read's start.
    expect(boundFor([[150, 250], [400, 700]], 1000, 500)).toBe(900); // 500 ms of running time in [100, 1000]
    expect(boundFor([[900, 2000]], 1000, 500)).toBe(600);
    expect(boundFor([], 1000, 500)).toBe(500);
  });

  test("a process's own invalidation binds its later reads at once, even inside a fault window", () => {
    const own = op({ op: "set", start: 3000, end: 3005, version: 8, worker: 2 });
    const fault = [{ kind: "redis-pause", start: 2000, end: 6000 }];
    const h = [own, op({ op: "get", start: 3006, version: 7, worker: 2 }), op({ op: "get", start: 3006, version: 7, worker: 1 })];
    expect(check(h, fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["ownInvalidation"]);
    expect(check([own, op({ op: "get", start: 3004, version: 7, worker: 2 })], fault, [report()], RULES).violations).toEqual([]);
  });

  test("a value older than its window is a stale-window violation (background mode allows maxStale more)", () => {
    const fg = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.fg - RULES.slack - 1, policy: "fg" });
    const bg = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.bg - RULES.maxStale + 10, policy: "bg" });
    expect(check([fg, bg], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
  });

  test("while a loader fails, fail-safe values up to ttl + failSafe are allowed, and no older", () => {
    const fault = [{ kind: "loader-fail", start: 9000, end: 11_000 }];
    const ok = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.fg - RULES.failSafe + 10, policy: "fg" });
    const old = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.fg - RULES.failSafe - RULES.slack - 1, policy: "fg" });
    const result = check([ok], fault, [report()], RULES);
    expect(result.violations).toEqual([]);
    expect(result.staleReads).toBe(1);
    expect(check([old], fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    // A loader fault does not excuse a plain `get` returning an expired value, nor an old version.
    const expiredGet = op({ op: "get", start: 10_000, version: 1, at: 10_000 - RULES.ttl.fg - RULES.slack - 1, policy: "fg" });
    expect(check([expiredGet], fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    expect(check([write, op({ op: "get", start: 10_000, version: 4 })], fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
    // Transport faults suspend staleness, but not the age limit.
    const ancient = op({ op: "getOrSet", start: 10_000, version: 1, at: 1000, policy: "bg" });
    expect(check([ancient], [{ kind: "redis-pause", start: 9000, end: 11_000 }], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
  });

  test("a read that returns another key's value is flagged", () => {
    const h = [op({ op: "get", start: 2000, version: 3, key: "a", foreign: "fg/b" })];
    expect(check(h, [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["wrongKey"]);
  });

  test("loader bounds, unexpected errors, unhandled rejections and the final state are checked", () => {
    const h = [write, op({ op: "getOrSet", start: 3000, ok: false, error: "TypeError: boom" }), op({ op: "getOrSet", start: 3100, ok: false, error: "Error: chaos: the source is down" })];
    const finals = [op({ op: "get", start: 9000, version: 4, worker: 2 }), op({ op: "get", start: 9000, version: 5, worker: 0 })];
    const rules = check(h, [], [report({ maxLoadsPerKey: 2, maxRefreshing: RULES.refreshConcurrency + 1, unhandledRejections: 1 })], RULES, finals).violations.map((v) => v.rule);
    expect(rules.sort()).toEqual(["finalState", "refreshPool", "singleFlight", "unexpectedError", "unhandledRejection"]);
  });

  test("floors only grow: a later invalidation with a smaller version does not lower them", () => {
    const h = [
      op({ op: "set", start: 1000, end: 1001, version: 7 }),
      op({ op: "remove", start: 1002, end: 1003, version: 6 }),
      op({ op: "get", start: 3000, version: 6, worker: 3 }),
    ];
    expect(check(h, [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
  });
});
