import type { Rules } from "./checker.js";
import type { BusKind, L2Kind } from "./families.js";

/** What the coordinator hands each worker process. */
export interface WorkerConfig {
  id: number;
  prefix: string;
  seed: number;
  /** Concurrent actors in the process. */
  concurrency: number;
  /** Directory the worker writes its history to. */
  dir: string;
  /**
   * A deliberately broken setup, to show the checker catches it: "no-bus" (no invalidation bus),
   * "no-cas" (an L2 store that ignores the generation check of load write-backs), "big-pool" (the
   * cache may run four times the refreshes the checker allows), "stale-join" (the engine's fix of
   * issue [5.1] switched off: callers joining a refresh that answered early with a stale value get
   * that value even past its window), "no-lock" (with `lock`: the checker applies the distributed
   * single-flight rule, but the caches run without `distributedLock`).
   */
  sabotage?: Sabotage;
  /** Keys k0.. of each scope that are rarely written (default COLD_KEYS). */
  coldKeys?: number;
  /** The L1 bound of this process (undefined: the library's default); see l1Bound. */
  maxEntries?: number;
  /** The L2 store's family (chaos/families.ts; default "redis"). */
  l2?: L2Kind;
  /** The invalidation bus (chaos/families.ts BUS_KINDS; default "pubsub", Redis pub/sub). */
  bus?: BusKind;
  /** The address of each family's server in this run, by family name. */
  urls: Record<string, string>;
  /** The caches run with `distributedLock` (distributed single flight). */
  lock?: boolean;
}

/**
 * Tags: every value of the foreground scope carries the tag of its key's group (k0, k4, k8, … in
 * "g0"; k1, k5, … in "g1"; …), and actors invalidate whole groups with `removeByTag`.
 */
export const TAG_GROUPS = 4;
export function tagOf(key: string): string {
  return `g${Number(key.slice(1)) % TAG_GROUPS}`;
}

export const SABOTAGES = ["no-bus", "no-cas", "big-pool", "stale-join", "no-lock"] as const;
export type Sabotage = (typeof SABOTAGES)[number];

/**
 * What the loaders do (the coordinator switches it for loader faults):
 * - "slow": loaders the cache can abort take 100 ms to `hardTimeout` + 300 ms (often past it);
 * - "fail": every loader throws;
 * - "outlast": a loader replacing a stale value (the `stale` the cache hands it) runs until that
 *   value's window has closed, and a bit longer (in the background scope: until `at + ttl + maxStale`
 *   + 150–550 ms; in the foreground scope: past `softTimeout`), then returns — or, one time in three,
 *   fails. Refreshes that outlive the value they replace, soft timeouts, failing refreshes.
 */
export type LoaderMode = "normal" | "slow" | "fail" | "outlast";

/** The cache options every worker uses; the checker's rules are derived from them. */
export const CHAOS_POLICY = {
  ttl: { fg: 1500, bg: 800 },
  maxStale: 1500,
  failSafe: 3000,
  refreshConcurrency: 4,
  refreshCooldown: 500,
  /** The L2 store's timeout (short, so that Redis faults show quickly). */
  storeTimeout: 300,
  /**
   * Longer in the background scope than its stale window: a refresh started from a value late in
   * its window can outlive that window instead of being aborted first (loader fault "outlast").
   */
  hardTimeout: { fg: 1000, bg: 2500 },
  /** A scope option of the foreground scope only (see softTimeout in RULES). */
  softTimeout: { fg: 250, bg: 0 },
} as const;

/**
 * L1 pressure: the L1 bound of worker `id`. Processes 1, 4, ... hold 12 entries and 2, 5, ... 28,
 * of the 40 keys, so entries — stale ones included — are evicted all the time; 0, 3, ... keep the
 * default (nothing evicted).
 */
export function l1Bound(id: number): number | undefined {
  return [undefined, 12, 28][id % 3];
}

/**
 * A key space small enough for operations to collide (loads racing invalidations), large enough
 * that a copy can outlive the propagation bound when an invalidation does not arrive.
 */
export const KEYS_PER_SCOPE = { fg: 20, bg: 20 } as const;

/**
 * Keys k0..k4 of each scope are rarely written, so their values reach their stale windows. A run
 * may make more keys cold (`coldKeys`): every cold key past its ttl is a refresh waiting to start,
 * which is what a run that must fill the refresh pool needs.
 */
export const COLD_KEYS = 5;

/**
 * Each worker's stall watch: a timer every `tick` ms; one that fires more than `min` ms late
 * records a stall (the process was not running). See boundFor in chaos/checker.ts.
 */
export const STALL = { tick: 20, min: 30 } as const;

export const RULES: Rules = {
  bound: 500,
  grace: 2000,
  refreshConcurrency: CHAOS_POLICY.refreshConcurrency,
  ttl: CHAOS_POLICY.ttl,
  maxStale: CHAOS_POLICY.maxStale,
  failSafe: CHAOS_POLICY.failSafe,
  refreshCooldown: CHAOS_POLICY.refreshCooldown,
  // Only the foreground scope has a soft timeout: a background scope with one would let a soft
  // answer excuse what the stale window forbids, and blunt the check of issue [5.1].
  softTimeout: CHAOS_POLICY.softTimeout,
  writeBack: CHAOS_POLICY.storeTimeout + 100,
  slack: 100,
  // Reads may fail only the ways a loader can: it threw, or it timed out.
  allowedErrors: /chaos: the source is down|chaos: the source timed out|LoadTimeoutError|exceeded hardTimeout/,
};
