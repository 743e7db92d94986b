import { parseDuration, type Duration } from "../api/options.js";
import type { L2Resilience } from "../l2/contract.js";
import { optionError, preview } from "./errors.js";

/**
 * Option parsing every backend needs, in one place so that every store and bus rejects bad
 * options the same way (SPEC 8: unknown options are a TypeError at construction).
 */

/** The `circuitBreaker` option of a store or bus. */
export interface CircuitBreakerOptions {
  /** Consecutive failures before it opens (default 3; `0` disables it). */
  threshold?: number;
  /** How long it stays open before one probe call. */
  cooldown?: Duration;
}

/**
 * Checks an options object of a backend (or a nested one, at `path`): a plain object holding only
 * `known` names — a misspelled name would otherwise leave its default silently in place. `what`
 * names the class (or the nested option) in messages.
 */
export function checkOptions<T extends object>(options: T, known: readonly string[], what: string, path?: string): T {
  const proto: unknown = options === null || typeof options !== "object" ? undefined : Object.getPrototypeOf(options);
  if (proto !== Object.prototype && proto !== null) {
    if (path !== undefined) throw optionError(path, `must be a plain object { ${known.join("?, ")}? } (got ${preview(options)})`);
    throw new TypeError(`layercache: ${what} needs an options object (got ${preview(options)})`);
  }
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) throw optionError(path === undefined ? k : `${path}.${k}`, `is not a ${what} option (known: ${known.join(", ")})`);
  }
  return options;
}

const BREAKER_OPTIONS = ["threshold", "cooldown"];

/** The `timeout` and `circuitBreaker` options of a store or bus, as its `resilience`. */
export function parseResilience(timeout: Duration | undefined, cb: CircuitBreakerOptions | undefined, defaultCooldownMs: number): L2Resilience {
  if (cb !== undefined) checkOptions(cb, BREAKER_OPTIONS, "circuitBreaker", "circuitBreaker");
  const threshold = cb?.threshold ?? 3;
  if (!Number.isInteger(threshold) || threshold < 0) throw optionError("circuitBreaker.threshold", "must be a non-negative integer");
  return {
    timeoutMs: timeout === undefined ? 1000 : parseDuration("timeout", timeout, false),
    breakerThreshold: threshold,
    breakerCooldownMs: cb?.cooldown === undefined ? defaultCooldownMs : parseDuration("circuitBreaker.cooldown", cb.cooldown, false),
  };
}

/**
 * Throws the TypeError for option `option` unless it is a URL with a host and one of `schemes`
 * (`["redis", "rediss"]`): a typo in a connection setting fails at construction, not at the first
 * connect.
 */
export function checkUrl(value: unknown, schemes: readonly string[], option = "url"): asserts value is string {
  let ok = false;
  if (typeof value === "string") {
    try {
      const u = new URL(value);
      ok = schemes.includes(u.protocol.slice(0, -1)) && u.hostname !== "";
    } catch {
      ok = false;
    }
  }
  if (!ok) throw optionError(option, `must be a ${schemes.map((s) => `${s}://`).join(" or ")} URL with a host (got ${JSON.stringify(value)})`);
}
