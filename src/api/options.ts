import ms from "ms";

// `ms` parses "500ms", "30s", "5m", "1h", "1d" (and long forms); undefined when it cannot.
const parseMs = ms as unknown as (text: string) => number | undefined;
import type { Clock } from "../shared/clock.js";
import type { Bus } from "../bus/contract.js";
import type { L2Store } from "../l2/contract.js";
import type { Serializer } from "../l2/serializer.js";
import type { Logger } from "../telemetry/logger.js";
import { optionError, preview } from "../shared/errors.js";

/** Milliseconds as a number, or a string such as `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`. */
export type Duration = number | string;
export type RefreshMode = "foreground" | "background";

/**
 * Options that shape one entry and how it is read. Each can be set on the cache, a scope, a
 * cached function or a single call; the most specific setting wins, field by field.
 */
export interface EntryOptions {
  /** How long a value is fresh. Default `"1m"`. `Infinity` keeps it fresh forever. */
  ttl?: Duration;
  /** What a read does once the value is past `ttl`: wait for a load (`"foreground"`, default) or serve the stale value and refresh in the background (`"background"`). */
  refresh?: RefreshMode;
  /** Background mode: how long past `ttl` a stale value may still be served while it refreshes. Default: equal to `ttl`. */
  maxStale?: Duration;
  /** If a load fails, a value no older than `ttl + failSafe` is returned instead of the error. Default `"5m"`; `0` turns it off. */
  failSafe?: Duration;
  /** The loader's `signal` is aborted after this long and the load counts as failed. Default `"5s"`; `0` or `Infinity` turns it off. */
  hardTimeout?: Duration;
  /** If a fallback value exists, it is returned once the loader has run this long; the load goes on in the background. Default off (`0`). */
  softTimeout?: Duration;
  /** Fraction of `ttl` (0–1) after which a read of a fresh value starts a background refresh. Default off (`0`). */
  refreshAhead?: number;
  /** Random extra lifetime in `[0, jitter)` added to `ttl` on every write, to spread expiries. Default `0`. */
  jitter?: Duration;
}

/** Options of one call (`getOrSet`, `set`, `getOrSetMany`, `setMany`): entry options plus tags. */
export interface CallOptions extends EntryOptions {
  /**
   * Tags of the entry, for `removeByTag(tag)` of its scope. Non-empty strings, per scope. A tagged
   * entry costs nothing more on an L1 hit; read from L2 it is checked against its tags' current
   * generations (read in the same L2 batch when the call names them). See docs/tags.md.
   */
  tags?: readonly string[];
}

/** Options of a scope: entry defaults plus an L1 bound of its own. */
export interface ScopeOptions extends EntryOptions {
  /** Most entries L1 holds (for a scope: a partition of its own). Default 10 000. */
  maxEntries?: number;
  /** Most bytes L1 holds, measured as the length of each value's serialized form. Default: no byte bound. */
  maxBytes?: number;
}

export interface CachedOptions<A extends unknown[] = unknown[]> extends EntryOptions {
  /** Tags of every result, or a function of the arguments giving them (see `CallOptions.tags`). */
  tags?: readonly string[] | ((...args: A) => readonly string[]);
  /** Builds the cache key from the arguments. Without it the key is `name` plus a stable encoding of the arguments. */
  key?: (...args: A) => string;
  /** Name used in derived keys. Default: the function's own name. */
  name?: string;
}

export interface CacheOptions extends ScopeOptions {
  /** Shared second-level store (e.g. `RedisStore` from `layercache/redis`). */
  l2?: L2Store;
  /** Invalidation bus (e.g. `MemoryBus`, or `RedisBus` from `layercache/redis`). */
  bus?: Bus;
  /** First part of every L2 key and of the bus channel. Default `"layercache"`. */
  prefix?: string;
  /** Most background refreshes running at once in this instance; when full, refreshes are skipped, not queued. Default 8. */
  refreshConcurrency?: number;
  /** After a failed refresh, or a failed load answered by a fail-safe value, the key waits this long before the loader is tried again. Default `"30s"`. */
  refreshCooldown?: Duration;
  /** Longest key accepted. Default 1024. */
  maxKeyLength?: number;
  /** Values whose serialized form is larger (UTF-8 bytes) stay in L1 only; the L2 store's record limit can lower it. Default 1 MiB. */
  maxValueBytes?: number;
  /** Encodes values for L2. Default: JSON, safe against prototype pollution. */
  serializer?: Serializer;
  /** pino- or console-compatible logger. Default: silent. */
  logger?: Logger;
  /** Time source, for tests (`FakeClock`). Default: `Date.now` and the global timers. */
  clock?: Clock;
  /** Shared secret: bus messages are signed with HMAC-SHA256 and unsigned or forged ones dropped. */
  busSecret?: string | Uint8Array;
  /**
   * Distributed single flight (docs/distributed-lock.md): a load that misses L2 first takes a lease
   * in L2; instances that find the lease taken wait for the holder's value (woken by its bus
   * message, or re-reading L2 every `poll`) up to `wait`, then load themselves. `true` for the
   * defaults. Needs an L2. Default off.
   */
  distributedLock?: boolean | DistributedLockOptions;
}

export interface DistributedLockOptions {
  /** How long a lease holds: the lease record's expiry in L2. Default `"10s"`. */
  lease?: Duration;
  /** Longest a load waits for the holder's value before loading itself. Default `"5s"`. */
  wait?: Duration;
  /** How often a waiting load re-reads L2 when no bus message woke it. Default `"100ms"`. */
  poll?: Duration;
}

/** Entry options parsed to milliseconds; `undefined` means "inherit". */
export interface EntryLayer {
  ttl?: number;
  background?: boolean;
  maxStale?: number;
  failSafe?: number;
  hardTimeout?: number;
  softTimeout?: number;
  refreshAhead?: number;
  jitter?: number;
  tags?: readonly string[];
}

/** Fully resolved entry options, as the engine reads them on every request. */
export interface Policy {
  readonly ttl: number;
  readonly background: boolean;
  readonly maxStale: number;
  readonly failSafe: number;
  readonly hardTimeout: number;
  readonly softTimeout: number;
  readonly refreshAhead: number;
  readonly jitter: number;
  /** Tags given to the entries written under this policy (a call's or a cached function's; never a scope's). */
  readonly tags: readonly string[] | undefined;
  /** The explicit settings this policy was built from, for further inheritance. */
  readonly layer: EntryLayer;
}

export const DEFAULTS = {
  ttl: 60_000,
  failSafe: 300_000,
  hardTimeout: 5_000,
  maxEntries: 10_000,
  prefix: "layercache",
  refreshConcurrency: 8,
  refreshCooldown: 30_000,
  maxKeyLength: 1024,
  maxValueBytes: 1024 * 1024,
} as const;

const ENTRY_KEYS = ["ttl", "refresh", "maxStale", "failSafe", "hardTimeout", "softTimeout", "refreshAhead", "jitter"] as const;
const BOUND_KEYS = ["maxEntries", "maxBytes"] as const;
const CACHED_KEYS = ["key", "name", "tags"] as const;
const CACHE_KEYS = [
  "l2",
  "bus",
  "prefix",
  "refreshConcurrency",
  "refreshCooldown",
  "maxKeyLength",
  "maxValueBytes",
  "serializer",
  "logger",
  "clock",
  "busSecret",
  "distributedLock",
] as const;

export type OptionLevel = "cache" | "scope" | "cached" | "call";

const ALLOWED: Record<OptionLevel, ReadonlySet<string>> = {
  cache: new Set<string>([...ENTRY_KEYS, ...BOUND_KEYS, ...CACHE_KEYS]),
  scope: new Set<string>([...ENTRY_KEYS, ...BOUND_KEYS]),
  cached: new Set<string>([...ENTRY_KEYS, ...CACHED_KEYS]),
  call: new Set<string>([...ENTRY_KEYS, "tags"]),
};

/** Rejects anything but a plain options object, and names the first unknown or misplaced option. */
export function checkOptionNames(options: unknown, level: OptionLevel): Record<string, unknown> {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`layercache: options must be an object (got ${Array.isArray(options) ? "array" : typeof options})`);
  }
  const allowed = ALLOWED[level];
  for (const name of Object.keys(options)) {
    if (allowed.has(name)) continue;
    if (ALLOWED.cache.has(name) || CACHED_KEYS.includes(name as never)) {
      throw optionError(name, `cannot be set on a ${level === "call" ? "single call" : level}; ${whereAllowed(name)}`);
    }
    throw optionError(name, `is not a known option (known: ${[...allowed].join(", ")})`);
  }
  return options as Record<string, unknown>;
}

function whereAllowed(name: string): string {
  if ((CACHE_KEYS as readonly string[]).includes(name)) return "it is a cache-level option (constructor only)";
  if ((BOUND_KEYS as readonly string[]).includes(name)) return "it is an L1 bound (cache or scope only)";
  if (name === "tags") return "tags belong to an entry: give them to set, getOrSet or a cached function";
  return "it belongs to cache.cached(fn, options)";
}

/** Parses a duration to milliseconds; `Infinity` only where `infinite` says it means something. */
export function parseDuration(option: string, value: unknown, infinite: boolean): number {
  let n: number | undefined;
  if (typeof value === "number") n = value;
  else if (typeof value === "string") {
    const trimmed = value.trim();
    n = trimmed === "" ? undefined : parseMs(trimmed);
    if (n === undefined && /^(infinity|inf)$/i.test(trimmed)) n = Infinity;
  } else {
    throw optionError(option, `must be a duration (milliseconds or a string like "30s"), got ${value === null ? "null" : typeof value}`);
  }
  if (n === undefined || Number.isNaN(n)) throw optionError(option, `is not a valid duration: ${JSON.stringify(value)}`);
  if (n < 0) throw optionError(option, `must not be negative (got ${preview(value)})`);
  if (n === Infinity && !infinite) throw optionError(option, "must be finite");
  return n;
}

function parsePositiveInt(option: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw optionError(option, `must be a positive integer (got ${preview(value)})`);
  }
  return value;
}

/** Parses the entry options of one level into an `EntryLayer` (after `checkOptionNames`). */
export function parseEntryLayer(o: Record<string, unknown>): EntryLayer {
  const layer: EntryLayer = {};
  if (o.ttl !== undefined) layer.ttl = parseDuration("ttl", o.ttl, true);
  if (o.refresh !== undefined) {
    if (o.refresh !== "foreground" && o.refresh !== "background") {
      throw optionError("refresh", `must be "foreground" or "background" (got ${preview(o.refresh)})`);
    }
    layer.background = o.refresh === "background";
  }
  if (o.maxStale !== undefined) layer.maxStale = parseDuration("maxStale", o.maxStale, true);
  if (o.failSafe !== undefined) layer.failSafe = parseDuration("failSafe", o.failSafe, true);
  if (o.hardTimeout !== undefined) layer.hardTimeout = parseDuration("hardTimeout", o.hardTimeout, true);
  if (o.softTimeout !== undefined) layer.softTimeout = parseDuration("softTimeout", o.softTimeout, true);
  if (o.refreshAhead !== undefined) {
    const r = o.refreshAhead;
    if (typeof r !== "number" || !(r >= 0 && r <= 1)) throw optionError("refreshAhead", `must be a number from 0 to 1 (got ${preview(r)})`);
    layer.refreshAhead = r;
  }
  if (o.jitter !== undefined) layer.jitter = parseDuration("jitter", o.jitter, false);
  if (o.tags !== undefined && typeof o.tags !== "function") layer.tags = parseTags(o.tags);
  return layer;
}

/** Longest tag, in characters (a tag becomes part of an L2 key and of bus messages). */
export const MAX_TAG_LENGTH = 1024;

/** Checks a list of tags: an array of non-empty, well-formed strings; duplicates are dropped. */
export function parseTags(tags: unknown): readonly string[] {
  if (!Array.isArray(tags)) throw optionError("tags", `must be an array of strings (got ${preview(tags)})`);
  for (const t of tags) {
    if (typeof t !== "string" || t.length === 0 || t.length > MAX_TAG_LENGTH || !t.isWellFormed()) {
      throw optionError("tags", `must hold non-empty, well-formed strings of at most ${MAX_TAG_LENGTH} characters (got ${preview(t)})`);
    }
  }
  return tags.length < 2 ? [...tags] : [...new Set(tags as string[])];
}

/** Field-by-field inheritance: every field the child sets wins, the rest come from the parent. */
export function mergeLayers(parent: EntryLayer, child: EntryLayer): EntryLayer {
  const out: EntryLayer = { ...parent };
  for (const k of Object.keys(child) as (keyof EntryLayer)[]) {
    if (child[k] !== undefined) (out as Record<string, unknown>)[k] = child[k];
  }
  return out;
}

/** Applies defaults and the rules that tie fields together. */
export function toPolicy(layer: EntryLayer): Policy {
  const ttl = layer.ttl ?? DEFAULTS.ttl;
  const background = layer.background ?? false;
  if (background && !(ttl > 0 && Number.isFinite(ttl))) {
    throw optionError("refresh", `"background" needs a positive finite ttl (ttl is ${ttl})`);
  }
  const hard = layer.hardTimeout ?? DEFAULTS.hardTimeout;
  return {
    ttl,
    background,
    maxStale: layer.maxStale ?? ttl,
    failSafe: layer.failSafe ?? DEFAULTS.failSafe,
    hardTimeout: hard === Infinity ? 0 : hard,
    softTimeout: layer.softTimeout === Infinity ? 0 : (layer.softTimeout ?? 0),
    refreshAhead: layer.refreshAhead ?? 0,
    jitter: layer.jitter ?? 0,
    tags: layer.tags !== undefined && layer.tags.length > 0 ? layer.tags : undefined,
    layer,
  };
}

/** A policy derived from `parent` plus the options of one more level. */
export function derivePolicy(parent: Policy, options: Record<string, unknown>): Policy {
  const child = parseEntryLayer(options);
  return Object.keys(child).length === 0 ? parent : toPolicy(mergeLayers(parent.layer, child));
}

export interface L1Bounds {
  maxEntries?: number;
  maxBytes?: number;
}

export function parseBounds(o: Record<string, unknown>): L1Bounds {
  const b: L1Bounds = {};
  if (o.maxEntries !== undefined) b.maxEntries = parsePositiveInt("maxEntries", o.maxEntries);
  if (o.maxBytes !== undefined) b.maxBytes = parsePositiveInt("maxBytes", o.maxBytes);
  return b;
}

/** Cache-level settings, resolved. */
export interface CacheSettings {
  prefix: string;
  refreshConcurrency: number;
  refreshCooldown: number;
  maxKeyLength: number;
  maxValueBytes: number;
  busSecret?: Uint8Array;
  /** Distributed single flight, when on (milliseconds). */
  lock?: { leaseMs: number; waitMs: number; pollMs: number };
}

export function parseCacheSettings(o: Record<string, unknown>): CacheSettings {
  const maxKeyLength = o.maxKeyLength === undefined ? DEFAULTS.maxKeyLength : parsePositiveInt("maxKeyLength", o.maxKeyLength);
  const prefix = o.prefix ?? DEFAULTS.prefix;
  // The rules of keys (SPEC 6): a non-empty, well-formed string no longer than maxKeyLength.
  if (typeof prefix !== "string" || prefix.length === 0 || !prefix.isWellFormed()) throw optionError("prefix", `must be a non-empty, well-formed string (got ${preview(prefix)})`);
  // (The default prefix is ours, not input: a small maxKeyLength alone does not make it an error.)
  if (o.prefix !== undefined && prefix.length > maxKeyLength) throw optionError("prefix", `is longer than maxKeyLength (${prefix.length} > ${maxKeyLength} characters)`);
  const s: CacheSettings = {
    prefix,
    refreshConcurrency: o.refreshConcurrency === undefined ? DEFAULTS.refreshConcurrency : parsePositiveInt("refreshConcurrency", o.refreshConcurrency),
    refreshCooldown: o.refreshCooldown === undefined ? DEFAULTS.refreshCooldown : parseDuration("refreshCooldown", o.refreshCooldown, false),
    maxKeyLength,
    maxValueBytes: o.maxValueBytes === undefined ? DEFAULTS.maxValueBytes : parsePositiveInt("maxValueBytes", o.maxValueBytes),
  };
  if (o.busSecret !== undefined) {
    const secret = o.busSecret;
    if (typeof secret === "string" && secret.length > 0) s.busSecret = new TextEncoder().encode(secret);
    else if (secret instanceof Uint8Array && secret.length > 0) s.busSecret = secret;
    else throw optionError("busSecret", "must be a non-empty string or Uint8Array");
  }
  const lock = o.distributedLock;
  if (lock !== undefined && lock !== false) {
    if (lock !== true && (lock === null || typeof lock !== "object" || Array.isArray(lock))) throw optionError("distributedLock", `must be true, false or an object { lease, wait, poll } (got ${preview(lock)})`);
    const l = (lock === true ? {} : lock) as Record<string, unknown>;
    for (const name of Object.keys(l)) if (!["lease", "wait", "poll"].includes(name)) throw optionError(`distributedLock.${name}`, "is not a known option (known: lease, wait, poll)");
    const positive = (name: string, v: unknown, def: number): number => {
      const n = v === undefined ? def : parseDuration(`distributedLock.${name}`, v, false);
      if (n <= 0) throw optionError(`distributedLock.${name}`, "must be positive");
      return n;
    };
    s.lock = { leaseMs: positive("lease", l.lease, 10_000), waitMs: positive("wait", l.wait, 5_000), pollMs: positive("poll", l.poll, 100) };
  }
  requireMethods("l2", o.l2, ["get", "set"]);
  requireMethods("bus", o.bus, ["connect"]);
  requireMethods("serializer", o.serializer, ["serialize", "deserialize"]);
  requireMethods("clock", o.clock, ["now"]);
  if (o.logger !== undefined && (o.logger === null || typeof o.logger !== "object")) throw optionError("logger", "must be an object with warn/error methods (pino or console)");
  return s;
}

function requireMethods(option: string, value: unknown, methods: string[]): void {
  if (value === undefined) return;
  if (value === null || typeof value !== "object") throw optionError(option, `must be an object with ${methods.join(", ")}()`);
  for (const m of methods) {
    if (typeof (value as Record<string, unknown>)[m] !== "function") throw optionError(option, `must have a ${m}() method`);
  }
}
