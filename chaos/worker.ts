/**
 * One process of the chaos run: a LayerCache on the run's shared L2 and bus (Redis unless the run
 * says otherwise, see chaos/families.ts) doing random
 * operations over a small key space, recording each one with start and end times — and each run of
 * its loader and each load error its cache reports, which the checker needs to tell a fail-safe or
 * soft-timeout answer from a value served past its window. The source of truth is the coordinator
 * (over IPC): versions only grow. Argv: one JSON object (WorkerConfig).
 */
import { createWriteStream, writeFileSync } from "node:fs";
import { LayerCache, type CacheScope } from "../src/index.js";
import { sabotage } from "../src/core/sabotage.js";
import { rng } from "../bench/rng.js";
import type { OpKind, OpRecord, WorkerReport } from "./checker.js";
import { CHAOS_POLICY, COLD_KEYS, KEYS_PER_SCOPE, STALL, TAG_GROUPS, tagOf, type LoaderMode, type WorkerConfig } from "./config.js";
import { BUS_KINDS, FAMILIES, careless } from "./families.js";

const config = JSON.parse(process.argv[2]!) as WorkerConfig;
// Sabotage "stale-join": the engine's fix of issue [5.1] switched off (src/engine/sabotage.ts).
if (config.sabotage === "stale-join") sabotage.staleJoin = true;
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const send = (m: unknown): void => void process.send!(m);

// ---------------------------------------------------------------- source of truth (the coordinator)
let nextReq = 0;
const replies = new Map<number, (v: number) => void>();
function ask(type: string, id: string, signal?: AbortSignal): Promise<number> {
  const req = ++nextReq;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    replies.set(req, resolve);
    // A loader aborted by its hard timeout stops waiting (the reply, when it comes, is dropped).
    signal?.addEventListener("abort", () => {
      replies.delete(req);
      reject(signal.reason);
    });
    send({ type, req, id });
  });
}

// ---------------------------------------------------------------- the cache under test
const l2Family = config.l2 ?? "redis";
const busKind = config.bus ?? "pubsub";
const families = [...new Set([l2Family, BUS_KINDS[busKind]])];
const loaded = Object.fromEntries(await Promise.all(families.map(async (f) => [f, await FAMILIES[f]!()] as const)));
const store = await loaded[l2Family]!.store!(config.urls[l2Family]!, { timeoutMs: CHAOS_POLICY.storeTimeout, circuitBreaker: { threshold: 3, cooldown: "500ms" } });
const bus = config.sabotage === "no-bus" ? undefined : await loaded[BUS_KINDS[busKind]]!.buses![busKind]!(config.urls[BUS_KINDS[busKind]]!, { heartbeat: "250ms" });
const cache = new LayerCache({
  prefix: config.prefix,
  // Sabotage "no-cas": the store's write-backs ignore the generation check.
  l2: config.sabotage === "no-cas" ? careless(store) : store,
  ...(bus ? { bus } : {}),
  // Sabotage "big-pool": the cache may run more refreshes than the checker's bound.
  refreshConcurrency: CHAOS_POLICY.refreshConcurrency * (config.sabotage === "big-pool" ? 4 : 1),
  refreshCooldown: CHAOS_POLICY.refreshCooldown,
  hardTimeout: CHAOS_POLICY.hardTimeout.fg,
  failSafe: CHAOS_POLICY.failSafe,
  // L1 pressure in some processes (l1Bound in chaos/config.ts): entries are evicted, stale ones too.
  ...(config.maxEntries !== undefined ? { maxEntries: config.maxEntries } : {}),
  // Sabotage "no-lock": the run checks distributed single flight, but the caches do not do it.
  ...(config.lock && config.sabotage !== "no-lock" ? { distributedLock: true } : {}),
});
/** Foreground values carry their key's group tag (chaos/config.ts tagOf); background ones none. */
const tagged = (scope: "fg" | "bg", key: string): { tags: string[] } | undefined => (scope === "fg" ? { tags: [tagOf(key)] } : undefined);
const groupKeys = (tag: string): string[] => Array.from({ length: KEYS_PER_SCOPE.fg }, (_, i) => `k${i}`).filter((k) => tagOf(k) === tag);
const scopes: Record<"fg" | "bg", CacheScope> = {
  fg: cache.scope("fg", { ttl: CHAOS_POLICY.ttl.fg, softTimeout: CHAOS_POLICY.softTimeout.fg }),
  bg: cache.scope("bg", { ttl: CHAOS_POLICY.ttl.bg, refresh: "background", maxStale: CHAOS_POLICY.maxStale, hardTimeout: CHAOS_POLICY.hardTimeout.bg }),
};

// ---------------------------------------------------------------- loader, with its own bookkeeping
let loaderMode: LoaderMode = "normal";
const inflight = new Map<string, number>();
/** The loader runs under way per flight id: how each was called, when, and its signal (for the report of an overlap). */
const runs = new Map<string, { via: string; start: number; signal: AbortSignal }[]>();
/**
 * Invalidations of each key seen by this process. Single flight holds between two of them: a load
 * that started before an invalidation is detached (its callers still get it, later callers start a
 * new one), so two loads of one key may overlap only across an invalidation.
 */
const epochs = new Map<string, number>();
const bump = (id: string): void => void epochs.set(id, (epochs.get(id) ?? 0) + 1);
const bumpScope = (scope: string): void => {
  for (let i = 0; i < KEYS_PER_SCOPE[scope as "fg" | "bg"]; i++) bump(`${scope}/k${i}`);
};
// Only invalidations fence loads in flight; a peer's "update" (it loaded a newer value) does not.
cache.on("peerInvalidation", (e) => {
  if (e.op === "clear") bumpScope(e.scope);
  else if (e.op === "remove") for (const key of e.keys) bump(`${e.scope}/${key}`);
  else if (e.op === "tag") for (const tag of e.keys) for (const key of groupKeys(tag)) bump(`${e.scope}/${key}`);
});
cache.on("busReconnect", () => {
  count("busReconnect");
  bumpScope("fg");
  bumpScope("bg");
});
cache.on("busDisconnect", () => count("busDisconnect"));
cache.on("busCaughtUp", () => count("busCaughtUp"));
const report: WorkerReport = { worker: config.id, maxLoadsPerKey: 0, maxRefreshing: 0, unhandledRejections: 0, peakRssBytes: 0, peakHeapBytes: 0, stalls: [], events: {} };
const count = (name: string): void => void (report.events![name] = (report.events![name] ?? 0) + 1);

/** The history goes to disk as it is made (one JSON line per record), not into this heap. */
const historyFile = `${config.dir}/worker-${config.id}.ndjson`;
const history = createWriteStream(historyFile);
// (A refresh may still end after the history is closed, at the very end: not recorded.)
const record = (r: OpRecord): void => void (history.writableEnded || history.write(JSON.stringify(r) + "\n"));

// ---------------------------------------------------------------- what the cache says it did
/**
 * True during the synchronous part of a call an actor makes into the cache. An event emitted then
 * belongs to that call (an L1 hit, a stale hit from L1, a refresh started from L1); one emitted
 * outside comes from a load or refresh in flight.
 */
let inCall = false;
/** The key of a stale hit just emitted outside any call: a load serving a stale value it found in L2. */
let staleFromL2: string | undefined;
/** The key whose refresh the cache started right after that: the next loader call for it is that refresh. */
let refreshFromL2: string | undefined;
const keyId = (e: { scope: string; key: string }): string => `${e.scope}/${e.key}`;
cache.on("staleHit", (e) => {
  count(`staleHit ${e.reason}`);
  if (inCall || e.reason !== "background") return;
  staleFromL2 = keyId(e);
  queueMicrotask(() => void (staleFromL2 = undefined));
});
cache.on("refreshStart", (e) => {
  if (!inCall && staleFromL2 === keyId(e)) {
    count("refreshStart from L2");
    refreshFromL2 = keyId(e);
    queueMicrotask(() => void (refreshFromL2 = undefined));
  } else count("refreshStart from L1");
});
cache.on("refreshSkipped", (e) => count(`refreshSkipped ${e.reason}`));
cache.on("hit", (e) => count(`hit ${e.layer}`));
/**
 * Failed loads, as the cache reports them: the checker allows fail-safe values to the reads that
 * waited for one, and (for foreground loads, not refreshes) to reads shortly after. `refreshFailure`
 * follows `loadError` at once for a refresh, so the record is written a microtask later.
 */
const failing = new Map<string, OpRecord>();
cache.on("loadError", (e) => {
  count("loadError");
  const t = now();
  const rec: OpRecord = { worker: config.id, op: "loadError", scope: e.scope, key: e.key, start: t, end: t, ok: false, refresh: false };
  // A loader call that never reached `load` (a getOrSetMany key given up while it waited for loadMany).
  if (ran(keyId(e))) {
    const since = loaderCalled.get(keyId(e)) ?? t;
    record({ worker: config.id, op: "load", scope: e.scope, key: e.key, start: since, end: t, ok: false, error: "given up before loadMany ran", called: since });
  }
  failing.set(keyId(e), rec);
  queueMicrotask(() => {
    if (failing.get(keyId(e)) === rec) failing.delete(keyId(e));
    record(rec);
  });
});
cache.on("refreshFailure", (e) => {
  count("refreshFailure");
  const rec = failing.get(keyId(e));
  if (rec) rec.refresh = true;
});

/**
 * Times this process did not run (its event loop blocked, or the machine gave it no CPU): a timer
 * every STALL.tick ms that fires more than STALL.min ms late records the gap. A process that is not
 * running cannot read its bus messages; the checker adds these gaps to the propagation bound for
 * this process's reads (docs/guarantees.md).
 */
let lastTick = now();
const stallWatch = setInterval(() => {
  const t = now();
  // The timer was due at lastTick + tick; from then until now the process was late.
  if (t - lastTick > STALL.tick + STALL.min) report.stalls.push([lastTick + STALL.tick, t]);
  lastTick = t;
}, STALL.tick);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}

/** What is cached: the version, when the value was produced (≈ the entry's write time), and whose it is. */
interface Value {
  v: number;
  at: number;
  id: string;
}

/**
 * Background refreshes, counted without asking the cache: loads of the background scope running
 * now, minus the actors waiting on a read there (each foreground load has at least one waiting
 * caller of its own), is a lower bound of the refreshes running.
 */
let bgLoads = 0;
let bgWaiting = 0;

/** A deadline of the loader's own at the hard timeout (for loaders the cache gives no signal). */
function ownDeadline(scope: "fg" | "bg"): { signal: AbortSignal; cancel: () => void } {
  const c = new AbortController();
  const timer = setTimeout(() => c.abort(new Error("chaos: the source timed out")), CHAOS_POLICY.hardTimeout[scope]);
  return { signal: c.signal, cancel: () => clearTimeout(timer) };
}

/**
 * When the cache last called each key's loader (its "load" event). A getOrSetMany's `loadMany` runs
 * only once every key of the call has called its loader or ended — with distributedLock, after the
 * others waited for leases — but the cache's soft and hard timeouts of a key count from its own
 * call: its load record starts there.
 */
const loaderCalled = new Map<string, number>();
/**
 * Loader calls of the cache that have not reached `load` yet, per key: a getOrSetMany key waits
 * there for the call's other keys, and one given up meanwhile (its hardTimeout) is left out of
 * loadMany. Its load lasted from the call to that failure: recorded then (see "loadError"), so that
 * a soft timeout or a fail-safe answer while it waited is seen for what it is.
 */
const notRun = new Map<string, number>();
/** The key's invalidation count when the cache last called its loader. */
const loaderEpoch = new Map<string, number>();
let ambiguous = 0;
cache.on("load", (e) => {
  const id = keyId(e);
  loaderCalled.set(id, now());
  loaderEpoch.set(id, epochs.get(id) ?? 0);
  notRun.set(id, (notRun.get(id) ?? 0) + 1);
});
/** One loader call of `id` reached `load` (or was given up before it did): true if one was waiting. */
function ran(id: string): boolean {
  const n = notRun.get(id);
  if (n === undefined) return false;
  if (n === 1) notRun.delete(id);
  else notRun.set(id, n - 1);
  return true;
}

/**
 * `epoch`: the key's invalidation count when the operation that started this load was called —
 * that is when its flight was made. (A flight fenced while it read L2 still calls its loader for
 * the callers waiting on it, so the count at the loader's own start would be the wrong one.)
 * Two loads of one key with the same epoch running at once break single flight: no invalidation
 * came between their flights, so the second should have joined the first.
 *
 * A getOrSetMany key is the exception: its flight may be made after the call (a key missing from
 * L1 gets it after the multi-key read of L2 — and after an invalidation that fenced that read), so
 * its epoch is only known to lie between the count at the call and the count when its loader was
 * called (`loaderEpoch`). Such a load is checked only when the two are equal (the others are
 * counted as "loads not checked for single flight").
 */
async function load(scope: "fg" | "bg", key: string, epoch: number, called: number, cacheSignal?: AbortSignal, stale?: Value, startedAt?: number, via = cacheSignal === undefined ? "cached" : "getOrSet", sink?: OpRecord[]): Promise<Value> {
  // A cached function's loader gets no signal from the cache, and one the cache gave up on would
  // run on beside the next load of its key. So it gives up on its own at the hard timeout: its
  // timer starts before the cache's, so the load fails (an allowed loader error) rather than being
  // abandoned, and it ends its flight itself.
  const own = cacheSignal ? undefined : ownDeadline(scope);
  const signal = cacheSignal ?? own!.signal;
  const id = `${scope}/${key}`;
  ran(id);
  const rec: OpRecord = { worker: config.id, op: "load", scope, key, start: startedAt ?? now(), end: 0, ok: false, staleAt: stale?.at, called };
  if (refreshFromL2 === id) {
    rec.fromL2 = true;
    refreshFromL2 = undefined;
    if (scope === "bg") l2Refreshing.add(key);
  }
  // A getOrSetMany key's flight whose epoch is not known for sure is never counted with another.
  const upTo = via === "loadMany" ? (loaderEpoch.get(id) ?? epoch) : epoch;
  const flight = upTo === epoch ? `${id}#${epoch}` : `${id}#${epoch}..${upTo}#${++ambiguous}`;
  if (upTo !== epoch) count("loads not checked for single flight");
  const n = (inflight.get(flight) ?? 0) + 1;
  inflight.set(flight, n);
  report.maxLoadsPerKey = Math.max(report.maxLoadsPerKey, n);
  const mine = { via: `${via}${stale === undefined ? "" : " (stale held)"}`, start: now(), signal };
  const list = runs.get(flight) ?? [];
  list.push(mine);
  runs.set(flight, list);
  if (n > 1 && (report.overlaps ??= []).length < 5) {
    const t = now();
    report.overlaps.push(`${flight} at ${t.toFixed(1)}: ${list.map((r) => `${r.via} since ${(t - r.start).toFixed(1)} ms${r.signal.aborted ? " (aborted)" : ""}`).join(", ")}`);
  }
  if (scope === "bg") {
    bgLoads++;
    report.maxRefreshing = Math.max(report.maxRefreshing, bgLoads - bgWaiting);
  }
  try {
    if (loaderMode === "fail") throw new Error("chaos: the source is down");
    const v = await ask("read", id, signal);
    // Read first, then take time: an invalidation in between is the race the cache must survive.
    // Slow phases slow only loaders the cache can abort: they exercise the cache's hard timeout.
    const plan = loaderMode === "outlast" ? outlast(scope, stale, rec.fromL2 === true, cacheSignal === undefined) : undefined;
    if (plan === "fail") throw new Error("chaos: the source is down");
    if (plan !== undefined) {
      await sleep(plan, signal);
      if (Math.random() < 1 / 3) throw new Error("chaos: the source is down");
    } else await sleep(loaderMode === "slow" && cacheSignal ? 100 + Math.random() * (CHAOS_POLICY.hardTimeout[scope] + 200) : Math.random() * 3, signal);
    rec.ok = true;
    // Produced now: the cache stamps the entry right after the loader returns.
    return { v, at: now(), id };
  } finally {
    rec.end = now();
    // A loadMany's loads are recorded by it, when the call ends (see there).
    if (sink !== undefined) sink.push(rec);
    else record(rec);
    if (rec.fromL2 && scope === "bg") l2Refreshing.delete(key);
    own?.cancel();
    if (scope === "bg") bgLoads--;
    list.splice(list.indexOf(mine), 1);
    if (list.length === 0) runs.delete(flight);
    const left = inflight.get(flight)! - 1;
    if (left === 0) inflight.delete(flight);
    else inflight.set(flight, left);
  }
}

/**
 * Loader mode "outlast" (the fault "loader-outlast"): what a loader replacing `stale` does — run
 * this many ms (then fail one time in three), fail at once ("fail"), or behave (undefined).
 * - Background scope, a refresh the cache started right after serving a stale value from L2: run
 *   until that value's stale window has closed, plus 150–550 ms (a cached function, which is not
 *   handed the value, runs maxStale + 150–550 ms: at least as long). Later callers must not be
 *   served that value any more while the refresh goes on (issue [5.1]).
 * - Background scope, `stale` still inside its window otherwise (a refresh started from L1), or a
 *   cached function (which cannot tell): fail at once. The refresh pool stays free, the value
 *   keeps ageing in L2, and the key cools down — until an L1 drop (removeLocal, clearMemory,
 *   eviction) sends the next read to L2.
 * - Foreground scope, a load with a value held past its ttl: run past the soft timeout.
 * - Anything else (no value held, or one past its stale window: a foreground load): behave, so
 *   values start afresh.
 */
function outlast(scope: "fg" | "bg", stale: Value | undefined, fromL2: boolean, cached: boolean): number | "fail" | undefined {
  const extra = 150 + Math.random() * 400;
  if (scope === "fg") return stale === undefined ? undefined : CHAOS_POLICY.softTimeout.fg + extra;
  if (fromL2) return (stale === undefined ? CHAOS_POLICY.maxStale : Math.max(0, stale.at + CHAOS_POLICY.ttl.bg + CHAOS_POLICY.maxStale - now())) + extra;
  if (cached) return "fail";
  if (stale === undefined) return undefined;
  return stale.at + CHAOS_POLICY.ttl.bg + CHAOS_POLICY.maxStale > now() ? "fail" : undefined;
}

// The key is the key alone; `epoch` only rides along for the bookkeeping above.
const cachedFns = {
  fg: scopes.fg.cached((key: string, epoch: number, called: number) => load("fg", key, epoch, called), { key: (key) => key, tags: (key) => [tagOf(key)] }),
  bg: scopes.bg.cached((key: string, epoch: number, called: number) => load("bg", key, epoch, called), { key: (key) => key }),
};

// ---------------------------------------------------------------- operations

async function run(op: OpKind, scopeName: "fg" | "bg", key: string): Promise<OpRecord> {
  const scope = scopes[scopeName];
  const id = `${scopeName}/${key}`;
  const rec: OpRecord = { worker: config.id, op, scope: scopeName, key, start: now(), end: 0, ok: true };
  try {
    if (op === "removeByTag") {
      // Every key of the group gets a new version under its write lock (in key order: no deadlock
      // with writers of one key), then the tag is invalidated: one record per key, with its version.
      const tag = tagOf(key);
      const keys = groupKeys(tag).sort();
      for (const k of keys) await ask("lock", `${scopeName}/${k}`);
      try {
        const versions: number[] = [];
        for (const k of keys) versions.push(await ask("bump", `${scopeName}/${k}`));
        rec.start = now();
        const done = scope.removeByTag(tag);
        for (const k of keys) bump(`${scopeName}/${k}`);
        await done;
        const end = now();
        keys.forEach((k, i) => {
          if (k !== key) record({ ...rec, key: k, version: versions[i], end });
        });
        rec.version = versions[keys.indexOf(key)];
      } finally {
        for (const k of keys) send({ type: "unlock", id: `${scopeName}/${k}` });
      }
    } else if (op === "getOrSetMany") {
      // The key and the next ones of its group (one call, one tag), each a read record of its own.
      const group = groupKeys(tagOf(key));
      const at = group.indexOf(key);
      const keys = [group[at]!, group[(at + 1) % group.length]!, group[(at + 2) % group.length]!];
      const epochsAt = keys.map((k) => epochs.get(`${scopeName}/${k}`) ?? 0);
      inCall = true;
      let pending: Promise<unknown[]>;
      try {
        pending = scope.getOrSetMany(
          keys,
          // The cache gets (and stamps) every value of a loadMany when the slowest key's load is done:
          // that is when they are produced, not when each key's own load ended.
          // Each key's load honours that key's own signal (signalOf): a key the cache gave up on
          // stops at once — the next caller that needs it loads it again, and two loads of one key
          // must never run at once — and is left out of the answer. A failed key fails the call only
          // once every load of the call has ended: the cache ends all the call's flights then, and a
          // load still running past that would run beside the next load of its key.
          // Each key's flight goes on until the call ends — it may have answered early meanwhile
          // (its soft timeout) — so its load record ends there too, unless the key was given up.
          async (missing, { signalOf }) => {
            const recs: OpRecord[] = [];
            const settled = await Promise.allSettled(
              missing.map((k) => load(scopeName, k, epochsAt[keys.indexOf(k)]!, rec.start, signalOf(k), undefined, loaderCalled.get(`${scopeName}/${k}`), "loadMany", recs)),
            );
            const ended = now();
            for (const r of recs) record(signalOf(r.key).aborted ? r : { ...r, end: ended });
            const values = settled.map((s, j) => {
              if (s.status === "fulfilled") return s.value;
              if (signalOf(missing[j]!).aborted) return undefined;
              throw s.reason;
            });
            const at = now();
            return values.map((v) => (v === undefined ? undefined : { ...v, at }));
          },
          tagged(scopeName, key),
        );
      } finally {
        inCall = false;
      }
      const values = (await pending.catch((error: unknown) => {
        rec.ok = false;
        rec.error = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        return undefined;
      })) as (Value | undefined)[] | undefined;
      const end = now();
      keys.forEach((k, i) => {
        const v = values?.[i];
        const r: OpRecord = { ...rec, key: k, end, policy: scopeName, version: v?.v, at: v?.at };
        if (v !== undefined && v.id !== `${scopeName}/${k}`) r.foreign = String(v.id);
        // loadMany answers undefined only for a key the cache had given up (its flight failed
        // already): a call that resolved has a value for every key, or the cache mixed them up.
        if (values !== undefined && v === undefined) Object.assign(r, { ok: false, error: "chaos: getOrSetMany resolved with no value for this key" });
        if (k !== key) record(r);
        else Object.assign(rec, r);
      });
    } else if (op === "set" || op === "remove") {
      // Writes to one key are serialized by the source of truth (as a row lock would).
      await ask("lock", id);
      try {
        rec.version = await ask("bump", id);
        rec.start = now();
        // The cache fences the key synchronously when the call starts; count it right after.
        const done = op === "set" ? scope.set(key, { v: rec.version, at: now(), id } satisfies Value, tagged(scopeName, key)) : scope.remove(key);
        bump(id);
        await done;
      } finally {
        send({ type: "unlock", id });
      }
    } else if (op === "clear") {
      const done = scope.clear();
      bumpScope(scopeName);
      await done;
    } else if (op === "removeLocal") {
      // L1 only (in flight loads of the key are fenced, its cooldown forgotten): the next read here goes to L2.
      scope.removeLocal(key);
      bump(id);
    } else if (op === "clearMemory") {
      scope.clearMemory();
      bumpScope(scopeName);
    } else {
      const epoch = epochs.get(id) ?? 0;
      const counted = scopeName === "bg" && op !== "get";
      if (counted) bgWaiting++;
      try {
        // Events the cache emits before the call returns belong to this call (see inCall).
        inCall = true;
        let pending: Promise<unknown>;
        try {
          pending =
            op === "get"
              ? scope.get(key)
              : op === "cached"
                ? cachedFns[scopeName](key, epoch, rec.start)
                : scope.getOrSet(key, ({ signal, stale }) => load(scopeName, key, epoch, rec.start, signal, stale as Value | undefined), tagged(scopeName, key));
        } finally {
          inCall = false;
        }
        const value = (await pending) as Value | undefined;
        rec.version = value?.v;
        rec.at = value?.at;
        rec.policy = scopeName;
        if (scopeName === "bg" && value !== undefined) lastSeen.set(key, value.at);
        if (value !== undefined && value.id !== id) rec.foreign = String(value.id);
      } finally {
        if (counted) bgWaiting--;
      }
    }
  } catch (error) {
    rec.ok = false;
    rec.error = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  }
  rec.end = now();
  return rec;
}

/**
 * During "outlast" loader faults, each process drops from its L1 the background keys whose value
 * (as its last read saw it) is late in its stale window — 250 to 900 ms before the window closes —
 * once per value. The next read finds the value in L2, serves it and starts a refresh (removeLocal
 * also forgot the key's cooldown), which the loader makes outlive the window: the situation of
 * issue [5.1], several times a second.
 */
const lastSeen = new Map<string, number>();
/** Background keys with a refresh from L2 in flight here (the dropper leaves them alone). */
const l2Refreshing = new Set<string>();
const droppedAt = new Map<string, number>();
const dropper = setInterval(() => {
  if (loaderMode !== "outlast" || stopping) return;
  const t = now();
  for (const [key, at] of lastSeen) {
    const left = at + CHAOS_POLICY.ttl.bg + CHAOS_POLICY.maxStale - t;
    if (left < 250 || left > 900 || droppedAt.get(key) === at || l2Refreshing.has(key)) continue;
    droppedAt.set(key, at);
    void run("removeLocal", "bg", key).then(record);
  }
}, 50);

let stopping = false;

async function actor(seed: number): Promise<void> {
  const random = rng(seed);
  while (!stopping) {
    const scopeName = random() < 0.5 ? "fg" : "bg";
    const k = Math.floor(random() * KEYS_PER_SCOPE[scopeName]);
    const x = random();
    // Mostly reads; writes often enough to race loads; L1 drops of this process often enough that
    // reads of stale keys go to L2 (removeLocal also forgets a refresh cooldown and detaches a
    // refresh in flight); scope clears and clearMemory rare (each one empties a scope here).
    let op: OpKind =
      x < 0.56 ? "getOrSet" : x < 0.71 ? "get" : x < 0.85 ? "cached" : x < 0.92 ? "set" : x < 0.9895 ? "remove" : x < 0.9995 ? "removeLocal" : x < 0.9998 ? "clearMemory" : "clear";
    // Cold keys are rarely invalidated, so their values live to their windows: stale reads,
    // refreshes. (removeLocal writes nothing: it leaves them cold.)
    if (k < (config.coldKeys ?? COLD_KEYS) && (op === "set" || op === "remove") && random() < 0.97) op = "getOrSet";
    // In the tagged (foreground) scope: some reads are bulk, some removals are tag removals of the key's group.
    if (scopeName === "fg" && op === "getOrSet" && random() < 0.15) op = "getOrSetMany";
    if (scopeName === "fg" && op === "remove" && random() < 0.03 && TAG_GROUPS > 0) op = "removeByTag";
    record(await run(op, scopeName, `k${k}`));
    await sleep(random() * 10);
  }
}

// ---------------------------------------------------------------- control
const memory = setInterval(() => {
  const m = process.memoryUsage();
  report.peakRssBytes = Math.max(report.peakRssBytes, m.rss);
  report.peakHeapBytes = Math.max(report.peakHeapBytes, m.heapUsed);
}, 250);
process.on("unhandledRejection", () => void report.unhandledRejections++);
// If the coordinator dies (killed, timed out), do not linger as an orphan.
process.on("disconnect", () => process.exit(2));

let actors: Promise<void>[] = [];
process.on("message", async (m: { type: string; req?: number; version?: number; mode?: LoaderMode }) => {
  if (m.req !== undefined) {
    replies.get(m.req)?.(m.version ?? 0);
    replies.delete(m.req);
  } else if (m.type === "start") {
    actors = Array.from({ length: config.concurrency }, (_, i) => actor(config.seed * 1000 + config.id * 100 + i));
  } else if (m.type === "loaderMode") {
    loaderMode = m.mode!;
  } else if (m.type === "stop") {
    stopping = true;
    await Promise.all(actors);
    send({ type: "stopped" });
  } else if (m.type === "final") {
    // After the run has settled: what does this process hold now? `get` for fresh values in the
    // foreground scope; `getOrSet` in the background scope also returns a stale copy it holds.
    const finals: OpRecord[] = [];
    for (const scopeName of ["fg", "bg"] as const) {
      for (let i = 0; i < KEYS_PER_SCOPE[scopeName]; i++) finals.push(await run(scopeName === "fg" ? "get" : "getOrSet", scopeName, `k${i}`));
    }
    clearInterval(memory);
    clearInterval(stallWatch);
    clearInterval(dropper);
    report.events!.evictions = cache.stats().evictions;
    await new Promise<void>((resolve) => history.end(resolve));
    const file = `${config.dir}/worker-${config.id}.json`;
    writeFileSync(file, JSON.stringify({ historyFile, finals, report }));
    await cache.close();
    for (const f of Object.values(loaded)) await f.close?.();
    send({ type: "done", file });
  }
});
send({ type: "ready" });
