import type { Reporter } from "../telemetry/reporter.js";
import type { Namespace } from "./namespace.js";

/**
 * Records a key's "until" time. Expired stamps are removed when read; this sweep (at every power
 * of two past 1024 stamps) bounds the map for keys that failed once and were never read again.
 */
export function stamp(map: Map<string, number>, key: string, until: number, now: number): void {
  const n = map.size;
  if (n >= 1024 && (n & (n - 1)) === 0) for (const [k, t] of map) if (t <= now) map.delete(k);
  map.set(key, until);
}

/**
 * The background refresh pool of one cache instance: at most `limit` refreshes at once; when it is
 * full, or the key is cooling down after a failed refresh, a refresh is skipped — never queued: the
 * next read tries again, so there is no hidden backlog.
 */
export class RefreshPool {
  /** Refreshes running now. */
  running = 0;
  readonly #limit: number;
  readonly #cooldownMs: number;
  readonly #report: Reporter;

  constructor(limit: number, cooldownMs: number, report: Reporter) {
    this.#limit = limit;
    this.#cooldownMs = cooldownMs;
    this.#report = report;
  }

  /** Takes a place for a refresh of `key`, unless the key is cooling down or the pool is full. */
  acquire(ns: Namespace, key: string, now: number): boolean {
    const until = ns.cooldowns?.get(key);
    if (until !== undefined) {
      if (now < until) {
        this.#report.fact("refreshSkipped", { key, scope: ns.label, reason: "cooldown" });
        return false;
      }
      ns.cooldowns!.delete(key);
    }
    if (this.running >= this.#limit) {
      this.#report.fact("refreshSkipped", { key, scope: ns.label, reason: "poolFull" });
      return false;
    }
    this.running++;
    this.#report.fact("refreshStart", { key, scope: ns.label });
    return true;
  }

  /** Gives the place back (the refresh ended, however). */
  release(): void {
    this.running--;
  }

  succeeded(ns: Namespace, key: string): void {
    this.#report.fact("refreshSuccess", { key, scope: ns.label });
  }

  /** A failed refresh: the key cools down before the next attempt. */
  failed(ns: Namespace, key: string, error: unknown, now: number): void {
    stamp((ns.cooldowns ??= new Map()), key, now + this.#cooldownMs, now);
    this.#report.fact("refreshFailure", { key, scope: ns.label, error });
  }
}
