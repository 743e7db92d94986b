/**
 * One process of the chaos run: a LayerCache on the shared Redis (L2 + bus) doing random
 * operations over a small key space, recording each one with start and end times. The source of
 * truth is the coordinator (over IPC): versions only grow. Argv: one JSON object (WorkerConfig).
 */
import { createWriteStream, writeFileSync } from "node:fs";
import { Redis } from "ioredis";
import { LayerCache, type CacheScope } from "../src/index.js";
import { RedisBus, RedisStore } from "../src/redis.js";
import { rng } from "../bench/rng.js";
import type { OpKind, OpRecord, WorkerReport } from "./checker.js";
import { CHAOS_POLICY, COLD_KEYS, KEYS_PER_SCOPE, STALL, type LoaderMode, type WorkerConfig } from "./config.js";

const config = JSON.parse(process.argv[2]!) as WorkerConfig;
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
const client = new Redis(config.url, { maxRetriesPerRequest: 1 });
client.on("error", () => {});

/** Sabotage "no-cas": an L2 store that ignores the generation check of load write-backs. */
class CarelessStore extends RedisStore {
  override set(key: string, record: string, ttlMs: number): Promise<boolean> {
    return super.set(key, record, ttlMs);
  }
}
const storeOptions = { client, timeout: "300ms", circuitBreaker: { threshold: 3, cooldown: "500ms" } } as const;
const cache = new LayerCache({
  prefix: config.prefix,
  l2: config.sabotage === "no-cas" ? new CarelessStore(storeOptions) : new RedisStore(storeOptions),
  ...(config.sabotage === "no-bus" ? {} : { bus: new RedisBus({ client, heartbeat: "250ms" }) }),
  // Sabotage "big-pool": the cache may run more refreshes than the checker's bound.
  refreshConcurrency: CHAOS_POLICY.refreshConcurrency * (config.sabotage === "big-pool" ? 4 : 1),
  refreshCooldown: "500ms",
  hardTimeout: CHAOS_POLICY.hardTimeout,
  failSafe: CHAOS_POLICY.failSafe,
});
const scopes: Record<"fg" | "bg", CacheScope> = {
  fg: cache.scope("fg", { ttl: CHAOS_POLICY.ttl.fg }),
  bg: cache.scope("bg", { ttl: CHAOS_POLICY.ttl.bg, refresh: "background", maxStale: CHAOS_POLICY.maxStale }),
};

// ---------------------------------------------------------------- loader, with its own bookkeeping
let loaderMode: LoaderMode = "normal";
const inflight = new Map<string, number>();
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
});
cache.on("busReconnect", () => {
  bumpScope("fg");
  bumpScope("bg");
});
const report: WorkerReport = { worker: config.id, maxLoadsPerKey: 0, maxRefreshing: 0, unhandledRejections: 0, peakRssBytes: 0, peakHeapBytes: 0, stalls: [] };

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
function ownDeadline(): { signal: AbortSignal; cancel: () => void } {
  const c = new AbortController();
  const timer = setTimeout(() => c.abort(new Error("chaos: the source timed out")), CHAOS_POLICY.hardTimeout);
  return { signal: c.signal, cancel: () => clearTimeout(timer) };
}

/**
 * `epoch`: the key's invalidation count when the operation that started this load was called —
 * that is when its flight was made. (A flight fenced while it read L2 still calls its loader for
 * the callers waiting on it, so the count at the loader's own start would be the wrong one.)
 */
async function load(scope: string, key: string, epoch: number, cacheSignal?: AbortSignal): Promise<Value> {
  // A cached function's loader gets no signal from the cache, and one the cache gave up on would
  // run on beside the next load of its key. So it gives up on its own at the hard timeout: its
  // timer starts before the cache's, so the load fails (an allowed loader error) rather than being
  // abandoned, and it ends its flight itself.
  const own = cacheSignal ? undefined : ownDeadline();
  const signal = cacheSignal ?? own!.signal;
  const flight = `${scope}/${key}#${epoch}`;
  const n = (inflight.get(flight) ?? 0) + 1;
  inflight.set(flight, n);
  report.maxLoadsPerKey = Math.max(report.maxLoadsPerKey, n);
  if (scope === "bg") {
    bgLoads++;
    report.maxRefreshing = Math.max(report.maxRefreshing, bgLoads - bgWaiting);
  }
  try {
    if (loaderMode === "fail") throw new Error("chaos: the source is down");
    const v = await ask("read", `${scope}/${key}`, signal);
    // Read first, then take time: an invalidation in between is the race the cache must survive.
    // Slow phases slow only loaders the cache can abort: they exercise the cache's hard timeout.
    await sleep(loaderMode === "slow" && cacheSignal ? 100 + Math.random() * 1200 : Math.random() * 3, signal);
    // Produced now: the cache stamps the entry right after the loader returns.
    return { v, at: now(), id: `${scope}/${key}` };
  } finally {
    own?.cancel();
    if (scope === "bg") bgLoads--;
    const left = inflight.get(flight)! - 1;
    if (left === 0) inflight.delete(flight);
    else inflight.set(flight, left);
  }
}

// The key is the key alone; `epoch` only rides along for the bookkeeping above.
const cachedFns = {
  fg: scopes.fg.cached((key: string, epoch: number) => load("fg", key, epoch), { key: (key) => key }),
  bg: scopes.bg.cached((key: string, epoch: number) => load("bg", key, epoch), { key: (key) => key }),
};

// ---------------------------------------------------------------- operations
/** The history goes to disk as it is made (one JSON line per operation), not into this heap. */
const historyFile = `${config.dir}/worker-${config.id}.ndjson`;
const history = createWriteStream(historyFile);

async function run(op: OpKind, scopeName: "fg" | "bg", key: string): Promise<OpRecord> {
  const scope = scopes[scopeName];
  const id = `${scopeName}/${key}`;
  const rec: OpRecord = { worker: config.id, op, scope: scopeName, key, start: now(), end: 0, ok: true };
  try {
    if (op === "set" || op === "remove") {
      // Writes to one key are serialized by the source of truth (as a row lock would).
      await ask("lock", id);
      try {
        rec.version = await ask("bump", id);
        rec.start = now();
        // The cache fences the key synchronously when the call starts; count it right after.
        const done = op === "set" ? scope.set(key, { v: rec.version, at: now(), id } satisfies Value) : scope.remove(key);
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
      scope.removeLocal(key);
      bump(id);
    } else {
      const epoch = epochs.get(id) ?? 0;
      const counted = scopeName === "bg" && op !== "get";
      if (counted) bgWaiting++;
      try {
        const value =
          op === "get"
            ? ((await scope.get(key)) as Value | undefined)
            : op === "cached"
              ? ((await cachedFns[scopeName](key, epoch)) as Value)
              : ((await scope.getOrSet(key, ({ signal }) => load(scopeName, key, epoch, signal))) as Value);
        rec.version = value?.v;
        rec.at = value?.at;
        rec.policy = scopeName;
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

let stopping = false;

async function actor(seed: number): Promise<void> {
  const random = rng(seed);
  while (!stopping) {
    const scopeName = random() < 0.5 ? "fg" : "bg";
    const k = Math.floor(random() * KEYS_PER_SCOPE[scopeName]);
    const x = random();
    // Mostly reads; writes often enough to race loads; scope clears rare (each one empties a scope here).
    let op: OpKind = x < 0.56 ? "getOrSet" : x < 0.71 ? "get" : x < 0.85 ? "cached" : x < 0.92 ? "set" : x < 0.99 ? "remove" : x < 0.9995 ? "removeLocal" : "clear";
    // Cold keys are rarely invalidated, so their values live to their windows: stale reads, refreshes.
    if (k < (config.coldKeys ?? COLD_KEYS) && (op === "set" || op === "remove" || op === "removeLocal") && random() < 0.97) op = "getOrSet";
    history.write(JSON.stringify(await run(op, scopeName, `k${k}`)) + "\n");
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
    await new Promise<void>((resolve) => history.end(resolve));
    const file = `${config.dir}/worker-${config.id}.json`;
    writeFileSync(file, JSON.stringify({ historyFile, finals, report }));
    await cache.close();
    client.disconnect();
    send({ type: "done", file });
  }
});
send({ type: "ready" });
