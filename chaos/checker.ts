/**
 * The history checker: given every operation several processes performed (with start and end
 * times on the machine's monotonic clock) and the faults injected, it verifies what layercache
 * promises (docs/guarantees.md). Pure: histories in, violations out — so it can be tested on
 * hand-made histories that must fail.
 */

export type OpKind = "get" | "getOrSet" | "cached" | "set" | "remove" | "clear" | "removeLocal";

export interface OpRecord {
  worker: number;
  op: OpKind;
  /** Scope name ("" for the root). */
  scope: string;
  /** Key within the scope (empty for clear). */
  key: string;
  /** Monotonic milliseconds. */
  start: number;
  end: number;
  ok: boolean;
  error?: string;
  /** set/remove: the source-of-truth version it wrote. Reads: the version returned (undefined: a miss). */
  version?: number;
  /** Reads: when the returned value was produced (loaded from the source, or set), monotonic ms. */
  at?: number;
  /** Reads: "fg" or "bg" (the refresh mode of the scope). */
  policy?: "fg" | "bg";
  /** Reads: the value returned belonged to another key (this one's id). */
  foreign?: string;
}

export interface FaultWindow {
  kind: string;
  start: number;
  end: number;
}

export interface WorkerReport {
  worker: number;
  /** Most loader runs at once for one key in that process (single flight: 1). */
  maxLoadsPerKey: number;
  /** Most background refreshes running at once in that process (counted by the worker, not the cache). */
  maxRefreshing: number;
  unhandledRejections: number;
  peakRssBytes: number;
  peakHeapBytes: number;
  /** [start, end] of each time the process did not run (a timer fired late), in order. */
  stalls: [number, number][];
}

export interface Rules {
  /** How long after an invalidation completes a read may still see the old version (bus propagation). */
  bound: number;
  /** How long after a fault ends its effects may last (reconnect, gap detection, retries). */
  grace: number;
  refreshConcurrency: number;
  /** Fresh window by policy, and how far past it a background read may serve. */
  ttl: { fg: number; bg: number };
  maxStale: number;
  /** How far past `ttl` a value may be served when a load fails (fail-safe). */
  failSafe: number;
  /** Slack for the time between a value being produced and the cache stamping it. */
  slack: number;
  /** Error messages a read may legitimately fail with (loader failures, timeouts). */
  allowedErrors: RegExp;
}

export interface Violation {
  rule: "staleness" | "ownInvalidation" | "staleWindow" | "wrongKey" | "singleFlight" | "refreshPool" | "unexpectedError" | "unhandledRejection" | "finalState";
  detail: string;
}

const READS: ReadonlySet<OpKind> = new Set(["get", "getOrSet", "cached"]);

/**
 * Invalidations of one key, in completion order, with the highest version known by each end time;
 * `perWorker` keeps each process's own invalidations apart.
 */
function floorsByKey(history: OpRecord[], perWorker = false): Map<string, { end: number; version: number }[]> {
  const byKey = new Map<string, { end: number; version: number }[]>();
  for (const r of history) {
    if ((r.op !== "set" && r.op !== "remove") || !r.ok || r.version === undefined) continue;
    const id = perWorker ? `${r.worker}|${r.scope}/${r.key}` : `${r.scope}/${r.key}`;
    let list = byKey.get(id);
    if (!list) byKey.set(id, (list = []));
    list.push({ end: r.end, version: r.version });
  }
  for (const list of byKey.values()) {
    list.sort((a, b) => a.end - b.end);
    let max = -Infinity;
    for (const e of list) e.version = max = Math.max(max, e.version);
  }
  return byKey;
}

/** In `list`, ordered by `end`, the index of the first element that ends after `time` (binary search). */
function firstEndingAfter<T>(list: readonly T[], time: number, end: (e: T) => number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (end(list[mid]!) <= time) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The newest version any invalidation had established by `time` (−∞ when none). */
function floorAt(list: { end: number; version: number }[] | undefined, time: number): number {
  if (!list) return -Infinity;
  const i = firstEndingAfter(list, time, (e) => e.end);
  return i === 0 ? -Infinity : list[i - 1]!.version;
}

/**
 * The propagation bound for a read that `worker` started at `t`: `bound` of the time that process
 * was running. A process that did not run (stalled) cannot have read its bus messages, so each
 * stall inside the window lengthens it — and the longer window may take in earlier stalls.
 */
export function boundFor(stalls: readonly [number, number][], t: number, bound: number): number {
  let window = bound;
  for (;;) {
    const from = t - window;
    // Stalls are in order and do not overlap: skip to the first that ends after `from`.
    let lost = 0;
    for (let i = firstEndingAfter(stalls, from, (x) => x[1]); i < stalls.length && stalls[i]![0] < t; i++) lost += Math.min(stalls[i]![1], t) - Math.max(stalls[i]![0], from);
    if (bound + lost <= window) return window;
    window = bound + lost;
  }
}

/** Faults that keep invalidations from travelling (Redis down, hung, or a connection cut). */
const TRANSPORT_FAULTS: ReadonlySet<string> = new Set(["redis-kill", "redis-pause", "pubsub-kill", "normal-kill"]);

function inFault(faults: FaultWindow[], time: number, grace: number, kinds?: ReadonlySet<string>): boolean {
  return faults.some((f) => (kinds === undefined || kinds.has(f.kind)) && time >= f.start && time <= f.end + grace);
}

export interface CheckResult {
  violations: Violation[];
  reads: number;
  /** Reads the staleness promise was checked on (outside faults). */
  checkedReads: number;
  /** Checked reads that returned a value past its ttl (stale window, fail-safe): evidence the windows were exercised. */
  staleReads: number;
  /** Final reads (processes and L2) that found a value to check. */
  finalValues: number;
}

export function check(history: OpRecord[], faults: FaultWindow[], reports: WorkerReport[], rules: Rules, finalReads: OpRecord[] = []): CheckResult {
  const violations: Violation[] = [];
  const floors = floorsByKey(history);
  const ownFloors = floorsByKey(history, true);
  const stalls = new Map(reports.map((w) => [w.worker, w.stalls]));
  let reads = 0;
  let checkedReads = 0;
  let staleReads = 0;

  for (const r of history) {
    if (!READS.has(r.op)) continue;
    reads++;
    const id = `${r.scope}/${r.key}`;
    if (r.foreign !== undefined) violations.push({ rule: "wrongKey", detail: `${r.op} ${id} by worker ${r.worker} returned the value of ${r.foreign}` });
    if (!r.ok) {
      if (!rules.allowedErrors.test(r.error ?? "")) violations.push({ rule: "unexpectedError", detail: `${r.op} ${id} by worker ${r.worker}: ${r.error}` });
      continue;
    }
    // A process's own invalidations hold for its later reads always, faults or not.
    if (r.version !== undefined) {
      const own = floorAt(ownFloors.get(`${r.worker}|${id}`), r.start);
      if (r.version < own) {
        violations.push({ rule: "ownInvalidation", detail: `${r.op} ${id} by worker ${r.worker} at ${r.start.toFixed(1)} returned v${r.version} after its own invalidation to v${own} had completed` });
      }
    }
    // Faults that keep invalidations from travelling suspend the cross-process promise
    // (docs/guarantees.md); loader faults do not.
    const age = r.at === undefined ? undefined : r.start - r.at;
    if (inFault(faults, r.start, rules.grace, TRANSPORT_FAULTS)) {
      if (age !== undefined && r.policy !== undefined && age > rules.ttl[r.policy] + Math.max(rules.failSafe, r.policy === "bg" ? rules.maxStale : 0) + rules.slack) {
        violations.push({ rule: "staleWindow", detail: `${r.op} ${id} (${r.policy}) by worker ${r.worker} served a value ${age.toFixed(0)} ms old during a fault (beyond ttl + failSafe)` });
      }
      continue;
    }
    checkedReads++;
    if (r.version !== undefined) {
      const bound = boundFor(stalls.get(r.worker) ?? [], r.start, rules.bound);
      const floor = floorAt(floors.get(id), r.start - bound);
      if (r.version < floor) {
        const lengthened = bound > rules.bound ? ` (the bound lengthened to ${bound.toFixed(0)} ms by the process's stalls)` : "";
        violations.push({ rule: "staleness", detail: `${r.op} ${id} by worker ${r.worker} at ${r.start.toFixed(1)} returned v${r.version}, but v${floor} was established by ${(r.start - bound).toFixed(1)}${lengthened}` });
      }
      // Age of the value served: `get` only fresh ones; loads may serve the stale window in
      // background mode; while a loader fails (and shortly after), fail-safe values.
      if (age !== undefined && r.policy !== undefined) {
        const failing = inFault(faults, r.start, rules.grace);
        const window = r.op === "get" ? 0 : failing ? Math.max(rules.failSafe, r.policy === "bg" ? rules.maxStale : 0) : r.policy === "bg" ? rules.maxStale : 0;
        const limit = rules.ttl[r.policy] + window + rules.slack;
        if (age > limit) {
          violations.push({ rule: "staleWindow", detail: `${r.op} ${id} (${r.policy}) by worker ${r.worker} served a value ${age.toFixed(0)} ms old (limit ${limit} ms)` });
        }
        if (age > rules.ttl[r.policy]) staleReads++;
      }
    }
  }

  for (const w of reports) {
    if (w.maxLoadsPerKey > 1) violations.push({ rule: "singleFlight", detail: `worker ${w.worker} ran ${w.maxLoadsPerKey} loads of one key at once` });
    if (w.maxRefreshing > rules.refreshConcurrency) violations.push({ rule: "refreshPool", detail: `worker ${w.worker} ran ${w.maxRefreshing} refreshes at once (bound ${rules.refreshConcurrency})` });
    if (w.unhandledRejections > 0) violations.push({ rule: "unhandledRejection", detail: `worker ${w.worker}: ${w.unhandledRejections}` });
  }

  // After the run (faults over, settled): nobody may still hold a version older than the last invalidation.
  for (const r of finalReads) {
    const id = `${r.scope}/${r.key}`;
    const list = floors.get(id);
    const last = list?.length ? list[list.length - 1]!.version : -Infinity;
    if (r.ok && r.version !== undefined && r.version < last) {
      violations.push({ rule: "finalState", detail: `final ${r.op} ${id} by ${r.worker === -1 ? "L2" : `worker ${r.worker}`} found v${r.version}, last invalidation was v${last}` });
    }
  }
  return { violations, reads, checkedReads, staleReads, finalValues: finalReads.filter((r) => r.ok && r.version !== undefined).length };
}
