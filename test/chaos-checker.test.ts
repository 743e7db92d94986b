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
    expect(check(late, [{ kind: "server-kill", start: 3000, end: 4000 }], [report()], RULES).violations).toEqual([]);
    expect(check(late, [{ kind: "server-kill", start: 1000, end: 2000 }], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
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

  test("a removeByTag binds its own process's later reads at once, and the others' after the bound", () => {
    const tag = op({ op: "removeByTag", start: 3000, end: 3005, version: 8, worker: 2 });
    const fault = [{ kind: "server-pause", start: 2000, end: 6000 }];
    const read = (worker: number, start: number) => op({ op: "getOrSetMany", start, version: 7, at: start - 10, policy: "fg", worker });
    expect(check([tag, read(2, 3006)], fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["tagInvalidation"]);
    expect(check([tag, read(1, 3006)], [], [report()], RULES).violations).toEqual([]);
    expect(check([tag, read(1, 3005 + RULES.bound + 1)], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["tagInvalidation"]);
    // After the run, a version older than a removeByTag's is a finalState violation too.
    expect(check([tag], [], [report()], RULES, [op({ op: "get", start: 9000, version: 7, worker: -1 })]).violations.map((v) => v.rule)).toEqual(["finalState"]);
  });

  test("distributedFlight (lock on, no faults): a second load of a value another process loaded is flagged, unless an invalidation or an L1 drop came between", () => {
    const rules = { ...RULES, distributedLock: true };
    const first = op({ op: "load", start: 1000, end: 1010, worker: 0 });
    const second = op({ op: "load", start: 1100, end: 1110, worker: 1, called: 1090 });
    expect(check([first, second], [], [report()], rules).violations.map((v) => v.rule)).toEqual(["distributedFlight"]);
    expect(check([first, second], [], [report()], RULES).violations).toEqual([]); // lock off
    expect(check([first, second], [{ kind: "server-kill", start: 0, end: 1 }], [report()], rules).violations).toEqual([]); // faults
    const later = op({ op: "load", start: 1010 + RULES.ttl.fg, end: 1010 + RULES.ttl.fg + 5, worker: 1 });
    expect(check([first, later], [], [report()], rules).violations).toEqual([]); // the first value had expired
    expect(check([first, op({ op: "remove", start: 1050, end: 1060, worker: 2 }), second], [], [report()], rules).violations).toEqual([]);
    expect(check([first, op({ op: "removeLocal", start: 1095, end: 1095, worker: 1 }), second], [], [report()], rules).violations).toEqual([]);
  });

  test("a process's own invalidation binds its later reads at once, even inside a fault window", () => {
    const own = op({ op: "set", start: 3000, end: 3005, version: 8, worker: 2 });
    const fault = [{ kind: "server-pause", start: 2000, end: 6000 }];
    const h = [own, op({ op: "get", start: 3006, version: 7, worker: 2 }), op({ op: "get", start: 3006, version: 7, worker: 1 })];
    expect(check(h, fault, [report()], RULES).violations.map((v) => v.rule)).toEqual(["ownInvalidation"]);
    expect(check([own, op({ op: "get", start: 3004, version: 7, worker: 2 })], fault, [report()], RULES).violations).toEqual([]);
  });

  test("a value older than its window is a stale-window violation (background mode allows maxStale more)", () => {
    const fg = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.fg - RULES.slack - 1, policy: "fg" });
    const bg = op({ op: "getOrSet", start: 10_000, version: 1, at: 10_000 - RULES.ttl.bg - RULES.maxStale + 10, policy: "bg" });
    expect(check([fg, bg], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
  });

  test("fail-safe values (up to ttl + failSafe) only to reads a failed load of their key, in their process, can explain", () => {
    const age = (ms: number) => 10_000 - ms;
    const read = (o: Partial<OpRecord> = {}) => op({ op: "getOrSet", start: 10_000, end: 10_050, version: 1, at: age(RULES.ttl.fg + RULES.failSafe - 10), policy: "fg", ...o });
    const failed = (o: Partial<OpRecord>) => op({ op: "loadError", start: 10_020, end: 10_020, ok: false, refresh: false, ...o });
    // The load it waited for failed: allowed, counted as a fail-safe read.
    const waited = check([read(), failed({})], [], [report()], RULES);
    expect(waited.violations).toEqual([]);
    expect(waited.situations.failSafe).toBe(1);
    expect(waited.staleReads).toBe(1);
    // A foreground load failed shortly before: the throttle serves the fail-safe value.
    expect(check([read(), failed({ start: 9700, end: 9700 })], [], [report()], RULES).violations).toEqual([]);
    // ... but not after a failed background refresh (no throttle), not long before, not in another process or key.
    for (const other of [failed({ start: 9700, end: 9700, refresh: true }), failed({ start: 9000, end: 9000 }), failed({ worker: 1 }), failed({ key: "j" })]) {
      expect(check([read(), other], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    }
    // A loader fault going on somewhere is no excuse by itself; nor is a failure for a value older than ttl + failSafe.
    expect(check([read()], [{ kind: "loader-fail", start: 9000, end: 11_000 }], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    expect(check([read({ at: age(RULES.ttl.fg + RULES.failSafe + RULES.slack + 1) }), failed({})], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    // Nothing excuses a plain `get` returning an expired value, nor an old version.
    const expiredGet = op({ op: "get", start: 10_000, version: 1, at: age(RULES.ttl.fg + RULES.slack + 1), policy: "fg" });
    expect(check([expiredGet, failed({})], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    expect(check([write, op({ op: "get", start: 10_000, version: 4 })], [{ kind: "loader-fail", start: 9000, end: 11_000 }], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleness"]);
  });

  test("a soft timeout excuses a value past ttl only where the scope has one and a load of the key ran that long", () => {
    const soft = RULES.softTimeout.fg;
    expect(soft).toBeGreaterThan(0);
    expect(RULES.softTimeout.bg).toBe(0);
    const old = RULES.ttl.fg + Math.max(RULES.maxStale, RULES.failSafe) - 10;
    // The read waited while a load ran past softTimeout (the held value answered), or joined it after that answer.
    const load = op({ op: "load", start: 10_000, end: 10_000 + soft + 400 });
    const waiting = op({ op: "getOrSet", start: 10_010, end: 10_000 + soft + 1, version: 1, at: 10_010 - old, policy: "fg" });
    const joining = op({ op: "getOrSet", start: 10_000 + soft + 100, end: 10_000 + soft + 101, version: 1, at: 10_000 + soft + 100 - old, policy: "fg" });
    const result = check([load, waiting, joining], [], [report()], RULES);
    expect(result.violations).toEqual([]);
    expect(result.situations.softTimeout).toBe(2);
    // Answered before the load had run softTimeout, or after it had ended and written its value
    // back (it leaves the flight then): no soft answer could have reached it.
    const early = op({ op: "getOrSet", start: 10_010, end: 10_000 + soft - 20, version: 1, at: 10_010 - old, policy: "fg" });
    const late = load.end + RULES.writeBack + 5;
    const after = op({ op: "getOrSet", start: late, end: late + 1, version: 1, at: late - old, policy: "fg" });
    expect(check([load, early, after], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow", "staleWindow"]);
    // The background scope has no soft timeout: a long load there excuses nothing beyond ttl + maxStale.
    const bgLoad = op({ op: "load", scope: "bg", start: 10_000, end: 12_000 });
    const bgRead = op({ op: "getOrSet", scope: "bg", start: 10_500, end: 11_500, version: 1, at: 10_500 - (RULES.ttl.bg + RULES.maxStale + RULES.slack + 1), policy: "bg" });
    expect(check([bgLoad, bgRead], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
  });

  test("issue [5.1]: a stale value served past ttl + maxStale is flagged, one inside the window is not, and a fault changes neither", () => {
    const windowEnd = RULES.ttl.bg + RULES.maxStale;
    const bg = (age: number, o: Partial<OpRecord> = {}) => op({ op: "getOrSet", scope: "bg", start: 20_000, version: 1, at: 20_000 - age, policy: "bg", ...o });
    const inside = bg(windowEnd - 10);
    const past = bg(windowEnd + RULES.slack + 1);
    const clean = check([inside], [], [report()], RULES);
    expect(clean.violations).toEqual([]);
    expect(clean.situations.stale).toBe(1);
    expect(check([past], [], [report()], RULES).violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    // During a Redis fault (and its grace) staleness is suspended, the window is not: an L1 copy
    // served while Redis is down is still bounded by its window, a fail-safe value by ttl + failSafe.
    for (const kind of ["server-kill", "server-pause", "listener-kill", "client-kill"]) {
      const fault = [{ kind, start: 19_000, end: 19_500 }];
      const during = check([inside, past], fault, [report()], RULES);
      expect(during.violations.map((v) => v.detail)).toEqual([expect.stringContaining("during a server fault")]);
      expect(during.situations.duringFaults).toBe(2);
      expect(during.checkedReads).toBe(0);
      const failSafe = bg(RULES.ttl.bg + RULES.failSafe - 10, { end: 20_030 });
      expect(check([failSafe, op({ op: "loadError", scope: "bg", start: 20_010, end: 20_010, ok: false })], fault, [report()], RULES).violations).toEqual([]);
    }
  });

  test("reads that join a refresh started from L2 after the value's window closed are counted, and flagged when served that value", () => {
    const staleAt = 10_000;
    const windowEnd = staleAt + RULES.ttl.bg + RULES.maxStale;
    // The refresh started at 11_800 (the value 1 800 ms old, served from L2) and ran 300 ms past the window.
    const refresh = op({ op: "load", scope: "bg", start: 11_800, end: windowEnd + 300, staleAt, fromL2: true });
    const join = (start: number, at: number, version = 1) => op({ op: "getOrSet", scope: "bg", start, version, at, policy: "bg" });
    const h = [refresh, join(12_000, staleAt), join(windowEnd + 150, staleAt), join(windowEnd + 200, windowEnd + 190, 2)];
    const result = check(h, [], [report()], RULES);
    expect(result.situations).toMatchObject({ l2Refreshes: 1, l2RefreshesPastWindow: 1, duringL2Refresh: 3, pastWindowDuringL2Refresh: 2 });
    expect(result.violations.map((v) => v.rule)).toEqual(["staleWindow"]);
    expect(result.violations[0]!.detail).toContain("joined a refresh started from L2");
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
