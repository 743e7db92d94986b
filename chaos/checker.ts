/**
 * The history checker: given every operation several processes performed (with start and end
 * times on the machine's monotonic clock) and the faults injected, it verifies what layercache
 * promises (docs/guarantees.md). Pure: histories in, violations out — so it can be tested on
 * hand-made histories that must fail.
 */

/**
 * What a worker records. The first eight are operations of its actors; "load" is one run of its
 * loader (start and end, `ok`), "loadError" a `loadError` event of its cache (at `start`, with
 * `refresh` when the cache reported the failure as a background refresh's).
 */
export type OpKind = "get" | "getOrSet" | "cached" | "getOrSetMany" | "set" | "remove" | "removeByTag" | "clear" | "removeLocal" | "clearMemory" | "load" | "loadError";

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
  /** Loads: when the value it replaces (the `stale` the cache handed the loader) was produced. */
  staleAt?: number;
  /** Loads: a background refresh the cache started right after serving a stale value it found in L2. */
  fromL2?: boolean;
  /** loadError: the cache reported it as a failed background refresh (no fail-safe throttle follows). */
  refresh?: boolean;
  /** Loads: when the operation whose flight runs this load was called (the flight started then; its loader may run much later, e.g. in a getOrSetMany batch). */
  called?: number;
}

export interface FaultWindow {
  kind: string;
  start: number;
  end: number;
}

export interface WorkerReport {
  worker: number;
  /** Most loader runs at once for one key in that process with no invalidation between their flights (single flight: 1; see `epoch` in chaos/worker.ts). */
  maxLoadsPerKey: number;
  /** The first times a key had a second loader run: what each run was (how it was called, when, whether its signal was aborted). */
  overlaps?: string[];
  /** Most background refreshes running at once in that process (counted by the worker, not the cache). */
  maxRefreshing: number;
  unhandledRejections: number;
  peakRssBytes: number;
  peakHeapBytes: number;
  /** [start, end] of each time the process did not run (a timer fired late), in order. */
  stalls: [number, number][];
  /** What the cache reported by its events (staleHit by reason, refreshes started from L1 or L2, ...) and its evictions. */
  events?: Record<string, number>;
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
  /** How long a failed foreground load's fail-safe value is served without a new load (the throttle). */
  refreshCooldown: number;
  /** Soft timeout by policy (0: none). */
  softTimeout: { fg: number; bg: number };
  /**
   * How long after its loader returned a load may still be joined: it leaves the key's flight
   * only once its L2 write-back is done (bounded by the store's timeout).
   */
  writeBack: number;
  /** Slack for the time between a value being produced and the cache stamping it. */
  slack: number;
  /** Error messages a read may legitimately fail with (loader failures, timeouts). */
  allowedErrors: RegExp;
  /** The caches ran with `distributedLock` and no fault was injected: the "distributedFlight" rule applies. */
  distributedLock?: boolean;
}

export interface Violation {
  rule: "staleness" | "ownInvalidation" | "tagInvalidation" | "staleWindow" | "wrongKey" | "singleFlight" | "distributedFlight" | "refreshPool" | "unexpectedError" | "unhandledRejection" | "finalState";
  detail: string;
}

const READS: ReadonlySet<OpKind> = new Set(["get", "getOrSet", "cached", "getOrSetMany"]);

/**
 * Invalidations of one key, in completion order, with the highest version known by each end time;
 * `perWorker` keeps each process's own invalidations apart.
 */
function floorsByKey(history: OpRecord[], perWorker = false, ops: readonly OpKind[] = ["set", "remove"]): Map<string, { end: number; version: number }[]> {
  const byKey = new Map<string, { end: number; version: number }[]>();
  for (const r of history) {
    if (!ops.includes(r.op) || !r.ok || r.version === undefined) continue;
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

/** Faults that keep invalidations from travelling (a server down, hung, or a connection cut). */
const TRANSPORT_FAULTS: ReadonlySet<string> = new Set(["server-kill", "server-pause", "listener-kill", "client-kill"]);

function inFault(faults: FaultWindow[], time: number, grace: number, kinds?: ReadonlySet<string>): boolean {
  return faults.some((f) => (kinds === undefined || kinds.has(f.kind)) && time >= f.start && time <= f.end + grace);
}

/**
 * How often the situations each rule is about came up in the run: a rule whose situation never
 * occurred was not exercised, whatever the violation count says.
 */
export interface Situations {
  /** Reads whose value's age was checked against its window (every read that returned a value). */
  windowChecked: number;
  /** ... of them during a server fault or the grace after it (the staleness bound is suspended there, the windows are not). */
  duringFaults: number;
  /** Reads served a value past its ttl inside the background stale window. */
  stale: number;
  /** Reads served a value past its normal window, allowed because a load of the key had failed (fail-safe). */
  failSafe: number;
  /** Reads served a value past its ttl, allowed because a load of the key had run past softTimeout (soft timeout). */
  softTimeout: number;
  /** Background refreshes the cache started right after serving a stale value it found in L2. */
  l2Refreshes: number;
  /** ... of them still running when the value they replaced left its stale window. */
  l2RefreshesPastWindow: number;
  /** Reads that started, in the same process, while such a refresh of their key ran. */
  duringL2Refresh: number;
  /** ... of them after the replaced value's stale window had closed: nobody may be served it any more (issue [5.1]). */
  pastWindowDuringL2Refresh: number;
}

export interface CheckResult {
  violations: Violation[];
  reads: number;
  /** Reads the staleness promise was checked on (outside server faults and their grace). */
  checkedReads: number;
  /** Window-checked reads that returned a value past its ttl (stale window, fail-safe, soft timeout): evidence the windows were exercised. */
  staleReads: number;
  /** Final reads (processes and L2) that found a value to check. */
  finalValues: number;
  situations: Situations;
}

/** Records of one process and one key, ordered by `start`. */
function byProcessAndKey(history: OpRecord[], op: OpKind): Map<string, OpRecord[]> {
  const map = new Map<string, OpRecord[]>();
  for (const r of history) {
    if (r.op !== op) continue;
    const id = `${r.worker}|${r.scope}/${r.key}`;
    let list = map.get(id);
    if (!list) map.set(id, (list = []));
    list.push(r);
  }
  for (const list of map.values()) list.sort((a, b) => a.start - b.start);
  return map;
}

/** No load runs longer than this (hardTimeout aborts the loaders; cached ones give up on their own): how far back to look. */
const LONGEST_LOAD = 10_000;

/** The records of `list` (ordered by start) that started in [from, to], newest first. */
function* startedBetween(list: OpRecord[] | undefined, from: number, to: number): Generator<OpRecord> {
  if (!list) return;
  for (let i = firstEndingAfter(list, to, (r) => r.start) - 1; i >= 0 && list[i]!.start >= from; i--) yield list[i]!;
}

export function check(history: OpRecord[], faults: FaultWindow[], reports: WorkerReport[], rules: Rules, finalReads: OpRecord[] = []): CheckResult {
  const violations: Violation[] = [];
  const floors = floorsByKey(history);
  const ownFloors = floorsByKey(history, true);
  // A removeByTag is recorded once per key of the tag, with the version it established for that key.
  const tagFloors = floorsByKey(history, false, ["removeByTag"]);
  const ownTagFloors = floorsByKey(history, true, ["removeByTag"]);
  const finalFloors = floorsByKey(history, false, ["set", "remove", "removeByTag"]);
  const loads = byProcessAndKey(history, "load");
  const loadErrors = byProcessAndKey(history, "loadError");
  const stalls = new Map(reports.map((w) => [w.worker, w.stalls]));
  const s: Situations = { windowChecked: 0, duringFaults: 0, stale: 0, failSafe: 0, softTimeout: 0, l2Refreshes: 0, l2RefreshesPastWindow: 0, duringL2Refresh: 0, pastWindowDuringL2Refresh: 0 };
  let reads = 0;
  let checkedReads = 0;
  const staleEnd = (at: number): number => at + rules.ttl.bg + rules.maxStale;

  for (const list of loads.values()) {
    for (const l of list) {
      if (!l.fromL2 || l.staleAt === undefined) continue;
      s.l2Refreshes++;
      if (l.end > staleEnd(l.staleAt) + rules.slack) s.l2RefreshesPastWindow++;
    }
  }

  for (const r of history) {
    if (!READS.has(r.op)) continue;
    reads++;
    const id = `${r.scope}/${r.key}`;
    const pid = `${r.worker}|${id}`;
    if (r.foreign !== undefined) violations.push({ rule: "wrongKey", detail: `${r.op} ${id} by worker ${r.worker} returned the value of ${r.foreign}` });
    // Reads of a background key while a refresh the cache started from an L2 value runs in this
    // process: the situation of issue [5.1] (after the value's window, nobody may be served it).
    let l2Refresh: OpRecord | undefined;
    if (r.policy === "bg" && r.op !== "get") {
      for (const l of startedBetween(loads.get(pid), r.start - LONGEST_LOAD, r.start)) {
        if (l.fromL2 && l.staleAt !== undefined && l.end >= r.start) {
          l2Refresh = l;
          break;
        }
      }
      if (l2Refresh) {
        s.duringL2Refresh++;
        if (r.start > staleEnd(l2Refresh.staleAt!) + rules.slack) s.pastWindowDuringL2Refresh++;
      }
    }
    if (!r.ok) {
      if (!rules.allowedErrors.test(r.error ?? "")) violations.push({ rule: "unexpectedError", detail: `${r.op} ${id} by worker ${r.worker}: ${r.error}` });
      continue;
    }
    // A process's own invalidations hold for its later reads always, faults or not.
    if (r.version !== undefined) {
      const own = floorAt(ownFloors.get(pid), r.start);
      if (r.version < own) {
        violations.push({ rule: "ownInvalidation", detail: `${r.op} ${id} by worker ${r.worker} at ${r.start.toFixed(1)} returned v${r.version} after its own invalidation to v${own} had completed` });
      }
    }
    // Tag invalidations: in the process that made it, at once and during faults too; elsewhere after
    // the propagation bound (like staleness), outside transport faults.
    if (r.version !== undefined && tagFloors.has(id)) {
      const own = floorAt(ownTagFloors.get(pid), r.start);
      const bound = boundFor(stalls.get(r.worker) ?? [], r.start, rules.bound);
      const peer = inFault(faults, r.start, rules.grace, TRANSPORT_FAULTS) ? -Infinity : floorAt(tagFloors.get(id), r.start - bound);
      if (r.version < Math.max(own, peer)) {
        violations.push({ rule: "tagInvalidation", detail: `${r.op} ${id} by worker ${r.worker} at ${r.start.toFixed(1)} returned v${r.version} after a removeByTag of its tag had established v${Math.max(own, peer)}${own >= peer ? " in that same process" : ""}` });
      }
    }
    // Faults that keep invalidations from travelling suspend the cross-process promise
    // (docs/guarantees.md); loader faults do not. The windows below do not depend on the bus:
    // they are checked during every fault.
    const transport = inFault(faults, r.start, rules.grace, TRANSPORT_FAULTS);
    if (!transport) {
      checkedReads++;
      if (r.version !== undefined) {
        const bound = boundFor(stalls.get(r.worker) ?? [], r.start, rules.bound);
        const floor = floorAt(floors.get(id), r.start - bound);
        if (r.version < floor) {
          const lengthened = bound > rules.bound ? ` (the bound lengthened to ${bound.toFixed(0)} ms by the process's stalls)` : "";
          violations.push({ rule: "staleness", detail: `${r.op} ${id} by worker ${r.worker} at ${r.start.toFixed(1)} returned v${r.version}, but v${floor} was established by ${(r.start - bound).toFixed(1)}${lengthened}` });
        }
      }
    }
    if (r.version === undefined || r.at === undefined || r.policy === undefined) continue;
    // The age of the value served, when the read started (since it was produced).
    const age = r.start - r.at;
    const ttl = rules.ttl[r.policy];
    s.windowChecked++;
    if (transport) s.duringFaults++;
    // `get`: fresh values only. Loads: fresh, or inside the background stale window.
    const normal = r.op === "get" ? ttl : ttl + (r.policy === "bg" ? rules.maxStale : 0);
    if (age <= normal + rules.slack) {
      if (age > ttl + rules.slack) s.stale++;
      continue;
    }
    const why = r.op === "get" ? undefined : excuse(r, age, loads.get(pid), loadErrors.get(pid), rules);
    if (why !== undefined) {
      s[why]++;
      continue;
    }
    const limit = r.op === "get" ? normal + rules.slack : Math.max(normal, ttl + rules.failSafe) + rules.slack;
    const context = [
      transport ? "during a server fault" : "",
      l2Refresh && r.at === l2Refresh.staleAt ? `joined a refresh started from L2 at ${l2Refresh.start.toFixed(1)} after the value's stale window closed at ${staleEnd(l2Refresh.staleAt!).toFixed(1)}` : "",
    ].filter((x) => x !== "");
    violations.push({
      rule: "staleWindow",
      detail: `${r.op} ${id} (${r.policy}) by worker ${r.worker} at ${r.start.toFixed(1)} served a value ${age.toFixed(0)} ms old (window ${normal} ms + ${rules.slack} ms slack${r.op === "get" ? "" : `; up to ${limit} ms only after a failed load or a soft timeout, and neither happened`})${context.length ? ` — ${context.join("; ")}` : ""}`,
    });
  }

  for (const w of reports) {
    if (w.maxLoadsPerKey > 1) violations.push({ rule: "singleFlight", detail: `worker ${w.worker} ran ${w.maxLoadsPerKey} loads of one key at once${w.overlaps?.length ? `: ${w.overlaps.join("; ")}` : ""}` });
    if (w.maxRefreshing > rules.refreshConcurrency) violations.push({ rule: "refreshPool", detail: `worker ${w.worker} ran ${w.maxRefreshing} refreshes at once (bound ${rules.refreshConcurrency})` });
    if (w.unhandledRejections > 0) violations.push({ rule: "unhandledRejection", detail: `worker ${w.worker}: ${w.unhandledRejections}` });
  }

  if (rules.distributedLock && faults.length === 0) violations.push(...distributedFlight(history, rules));

  // After the run (faults over, settled): nobody may still hold a version older than the last invalidation.
  for (const r of finalReads) {
    const id = `${r.scope}/${r.key}`;
    const list = finalFloors.get(id);
    const last = list?.length ? list[list.length - 1]!.version : -Infinity;
    if (r.ok && r.version !== undefined && r.version < last) {
      violations.push({ rule: "finalState", detail: `final ${r.op} ${id} by ${r.worker === -1 ? "L2" : `worker ${r.worker}`} found v${r.version}, last invalidation was v${last}` });
    }
  }
  return { violations, reads, checkedReads, staleReads: s.stale + s.failSafe + s.softTimeout, finalValues: finalReads.filter((r) => r.ok && r.version !== undefined).length, situations: s };
}

/**
 * Distributed single flight, with no faults: at most one loader call per key per value across all
 * processes. Two successful loads of a key (any processes) break it when the second started
 * after the first had begun and before the first one's value could have expired in L2 — within
 * `ttl` (less the slack) of the first load's end — with no invalidation of the key (set, remove,
 * removeByTag, in any process) in between: the second process should have found that value in
 * L2, or waited for the lease holder's. L1-only drops are no excuse for the second load (L2 still
 * holds the value), only for the first: one that came while it ran fenced it (no write-back).
 */
function distributedFlight(history: OpRecord[], rules: Rules): Violation[] {
  const out: Violation[] = [];
  const loads = new Map<string, OpRecord[]>();
  const invalidations = new Map<string, OpRecord[]>();
  for (const r of history) {
    const id = `${r.scope}/${r.key}`;
    const into = r.op === "load" && r.ok ? loads : (r.op === "set" || r.op === "remove" || r.op === "removeByTag") && r.ok ? invalidations : undefined;
    if (into === undefined) continue;
    let list = into.get(id);
    if (!list) into.set(id, (list = []));
    list.push(r);
  }
  // L1-only drops fence the loads in flight of their process (clear: of every process): such a load
  // writes nothing back (so the next one is expected), and one fenced before its L2 read answered
  // loads for its waiting callers without using what L2 held.
  const drops: OpRecord[] = history.filter((r) => r.op === "removeLocal" || r.op === "clearMemory" || r.op === "clear");
  const fencedByDrop = (l: OpRecord): boolean =>
    drops.some(
      (d) =>
        d.scope === l.scope &&
        (d.op === "clear" || d.worker === l.worker) &&
        (d.op !== "removeLocal" || d.key === l.key) &&
        d.end > (l.called ?? l.start) - rules.slack &&
        d.start < l.end + rules.writeBack,
    );
  for (const [id, list] of loads) {
    list.sort((a, b) => a.start - b.start);
    const inv = invalidations.get(id) ?? [];
    const ttl = rules.ttl[id.startsWith("bg/") ? "bg" : "fg"];
    for (let i = 1; i < list.length; i++) {
      const a = list[i - 1]!;
      const b = list[i]!;
      if (b.start >= a.end + ttl - rules.slack) continue;
      // An invalidation after the first load began, or after the second load's flight was made (a
      // flight made before an invalidation still loads, for the callers who were waiting for it).
      const since = Math.min(a.start, b.called ?? b.start) - rules.slack;
      if (inv.some((x) => x.end > since && x.start < b.start) || fencedByDrop(a) || fencedByDrop(b)) continue;
      out.push({ rule: "distributedFlight", detail: `loads of ${id} by workers ${a.worker} (${a.start.toFixed(1)}–${a.end.toFixed(1)}) and ${b.worker} (from ${b.start.toFixed(1)}) with no invalidation between: the second should have found the first's value or waited for its lease` });
    }
  }
  return out;
}

/**
 * Why a load (getOrSet, cached) may have been served a value older than its normal window, from
 * what its own process saw — or undefined: no reason, a violation.
 * - "softTimeout": the scope has a soft timeout, and a load of the key in this process had run
 *   that long while the read waited (or the read joined that load after it answered, until the
 *   load has written its value back): the held value, inside its longest window
 *   (ttl + max(maxStale, failSafe)).
 * - "failSafe": a load of the key in this process failed while the read waited, or a foreground
 *   load failed at most refreshCooldown before the read (the throttle serves the fail-safe value
 *   without loading): a value inside ttl + failSafe.
 * Nothing else excuses an old value — no fault window, no other process's failure: a read that
 * joins a refresh which answered early gets no pass (issue [5.1]).
 */
function excuse(r: OpRecord, age: number, loads: OpRecord[] | undefined, errors: OpRecord[] | undefined, rules: Rules): "softTimeout" | "failSafe" | undefined {
  const ttl = rules.ttl[r.policy!];
  const soft = rules.softTimeout[r.policy!];
  const safe = age <= ttl + rules.failSafe + rules.slack;
  // A load failed while the read waited (a failure answers everybody waiting, with a fail-safe value if one is held).
  if (safe) for (const _ of startedBetween(errors, r.start - 1, r.end + 1)) return "failSafe";
  if (soft > 0 && age <= ttl + Math.max(rules.maxStale, rules.failSafe) + rules.slack) {
    for (const l of startedBetween(loads, r.start - LONGEST_LOAD, r.end + 1 - soft)) if (l.end + rules.writeBack >= r.start) return "softTimeout";
  }
  // A foreground load failed shortly before: its fail-safe value is served from the throttle.
  if (safe) for (const e of startedBetween(errors, r.start - rules.refreshCooldown - rules.slack, r.start)) if (!e.refresh) return "failSafe";
  return undefined;
}
