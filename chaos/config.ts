import type { Rules } from "./checker.js";

/** What the coordinator hands each worker process. */
export interface WorkerConfig {
  id: number;
  url: string;
  prefix: string;
  seed: number;
  /** Concurrent actors in the process. */
  concurrency: number;
  /** Directory the worker writes its history to. */
  dir: string;
  /**
   * A deliberately broken setup, to show the checker catches it: "no-bus" (no invalidation bus),
   * "no-cas" (an L2 store that ignores the generation check of load write-backs), "big-pool" (the
   * cache may run four times the refreshes the checker allows).
   */
  sabotage?: "no-bus" | "no-cas" | "big-pool";
  /** Keys k0.. of each scope that are rarely written (default COLD_KEYS). */
  coldKeys?: number;
}

export type LoaderMode = "normal" | "slow" | "fail";

/** The cache options every worker uses; the checker's rules are derived from them. */
export const CHAOS_POLICY = {
  ttl: { fg: 1500, bg: 800 },
  maxStale: 1500,
  failSafe: 3000,
  refreshConcurrency: 4,
  hardTimeout: 1000,
} as const;

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
  slack: 100,
  // Reads may fail only the ways a loader can: it threw, or it timed out.
  allowedErrors: /chaos: the source is down|chaos: the source timed out|LoadTimeoutError|exceeded hardTimeout/,
};
