import { createHash } from "node:crypto";
import { configure } from "safe-stable-stringify";
import { optionError, preview } from "../shared/errors.js";
import { checkOptionNames, derivePolicy, parseTags, type CachedOptions, type EntryOptions, type Policy } from "./options.js";
import type { Engine } from "../core/engine.js";
import type { Namespace } from "../core/namespace.js";
import { Later } from "../core/batch.js";

/** A function wrapped by `cache.cached(fn, options)`. */
export type CachedFunction<A extends unknown[], R> = ((...args: A) => Promise<Awaited<R>>) & {
  /** Removes the cached result for these arguments: the same as `remove(cacheKey(...args))` in the function's scope. */
  removeCached(...args: A): Promise<void>;
  /** The key under which the result for these arguments is cached (without scope or prefix). */
  cacheKey(...args: A): string;
};

/** A class method after `@cache.cached(...)`. */
export type CachedMethod<This, A extends unknown[], R> = ((this: This, ...args: A) => Promise<Awaited<R>>) & {
  removeCached(...args: A): Promise<void>;
  cacheKey(...args: A): string;
};

/**
 * What `cache.cached(options)` returns: a method decorator that works under both decorator
 * settings of TypeScript — standard (TC39) decorators, and `experimentalDecorators` (NestJS and
 * other projects on the legacy proposal). Either way the method keeps its own type: TypeScript
 * does not let a decorator change the type of what it decorates, so `removeCached` and
 * `cacheKey` are reached in a typed way through `cachedOf(instance.method)`.
 */
export interface CachedDecorator<A extends unknown[]> {
  /** Standard (TC39) method decorator. */
  <This, M extends (this: This, ...args: A) => unknown>(method: M, context: ClassMethodDecoratorContext<This, M>): M;
  /** `experimentalDecorators` method decorator (the method is replaced on its descriptor). */
  <M extends (...args: A) => unknown>(target: object, propertyKey: string | symbol, descriptor: TypedPropertyDescriptor<M>): void;
}

/** Every function `cached` made (functions and decorated methods alike), for `cachedOf`. */
const made = new WeakSet<Function>();

/**
 * The cached function behind `fn` — a decorated method (`cachedOf(service.getUser)`) or a
 * function from `cache.cached` — typed with its `removeCached` and `cacheKey`. A decorated
 * method's type cannot show them (decorators do not change types), this makes them visible.
 * Throws a TypeError for a function that is not cached.
 */
export function cachedOf<F extends (...args: any[]) => unknown>(fn: F): CachedFunction<Parameters<F>, ReturnType<F>> {
  if (typeof fn !== "function" || !made.has(fn)) {
    throw new TypeError(`layercache: cachedOf() needs a function made by cache.cached() or a method decorated with @cache.cached (got ${typeof fn === "function" ? `function ${JSON.stringify(fn.name)}` : preview(fn)})`);
  }
  return fn as unknown as CachedFunction<Parameters<F>, ReturnType<F>>;
}

const stringify = configure({ deterministic: true, circularValue: Error, bigint: true });

// Markers for values JSON has no form of; a leading NUL keeps them apart from user strings.
const TAG = "\u0000";

/**
 * `JSON.stringify` replacer run by safe-stable-stringify (which sorts object keys): gives Date,
 * Map, Set, bigint, undefined (as an argument) and non-finite numbers distinct, stable forms.
 */
function argReplacer(this: unknown, key: string, value: unknown): unknown {
  const raw = (this as Record<string, unknown> | undefined)?.[key];
  if (raw instanceof Date) return [TAG + "date", Number.isNaN(raw.getTime()) ? "invalid" : raw.toISOString()];
  switch (typeof value) {
    case "bigint":
      return [TAG + "bigint", value.toString()];
    case "number":
      return Number.isFinite(value) ? value : [TAG + "number", String(value)];
    case "undefined":
      return Array.isArray(this) ? [TAG + "undefined"] : value;
    case "function":
    case "symbol":
      throw new TypeError(`cannot derive a cache key from a ${typeof value} argument; pass a \`key\` function`);
  }
  if (value instanceof Map) {
    return [TAG + "map", [...value].map(([k, v]) => [encodeArg(k), encodeArg(v)]).sort(compareEntries)];
  }
  if (value instanceof Set) return [TAG + "set", [...value].map(encodeArg).sort()];
  return value;
}

function encodeArg(v: unknown): string {
  return stringify([v], argReplacer) as string;
}

function compareEntries(a: string[], b: string[]): number {
  return a[0]! < b[0]! ? -1 : a[0]! > b[0]! ? 1 : 0;
}

function isPlainPrimitive(v: unknown): boolean {
  const t = typeof v;
  return t === "string" || t === "boolean" || v === null || (t === "number" && Number.isFinite(v));
}

/** Length of a SHA-256 digest in base64url. */
const HASH_CHARS = 43;

/**
 * The derived key: `name:` plus a stable, order-independent encoding of the arguments (object
 * keys sorted; Date, Map, Set, bigint distinct). Arguments that are plain strings, numbers,
 * booleans or null — the common case — take a fast path with the same output.
 *
 * Every derived key obeys the rules of keys (`Engine.checkKey`, README "Bad input"): it is never
 * empty, always well-formed Unicode — the name is checked when the cached function is created,
 * and JSON escapes lone surrogates in arguments (`"\ud800"`) — and never longer than
 * `maxKeyLength`. A key that would be longer is shortened (see `shortKey`).
 */
export function deriveKey(name: string, args: unknown[], maxKeyLength: number): string {
  let encoded: string;
  if (args.every(isPlainPrimitive)) encoded = JSON.stringify(args);
  else {
    try {
      encoded = stringify(args, argReplacer) as string;
    } catch (error) {
      const why = error instanceof Error ? error.message : preview(error);
      throw new TypeError(`layercache: cannot derive a cache key for ${name}(): ${why}`);
    }
  }
  const key = `${name}:${encoded}`;
  return key.length <= maxKeyLength ? key : shortKey(name, encoded, maxKeyLength);
}

/**
 * A derived key that does not fit in `maxKeyLength`, hashed. The SHA-256 covers the whole name
 * and the whole encoded arguments (the name's length first, so that no two (name, arguments)
 * pairs hash the same input), so two names sharing a long prefix never share a key:
 *   - `name:#<hash>` when that fits;
 *   - else `<name cut to fit>:#<hash>` (cut between code points, never inside a surrogate pair);
 *   - else, when `maxKeyLength` is below 46, the hash alone, cut to `maxKeyLength` characters:
 *     6 bits per character, so collisions stay negligible down to ~32 characters (192 bits) but
 *     grow likely with very short limits.
 * None of these forms can equal an unshortened key (those end in "]", the hash never does), and
 * the hash alone has no ":", which every other form has.
 */
function shortKey(name: string, encoded: string, maxKeyLength: number): string {
  const hash = createHash("sha256").update(`${name.length}:${name}:${encoded}`).digest("base64url");
  const room = maxKeyLength - HASH_CHARS - 2;
  if (name.length <= room) return `${name}:#${hash}`;
  const cut = cutName(name, room);
  return cut.length > 0 ? `${cut}:#${hash}` : hash.slice(0, maxKeyLength);
}

/** The first `n` (or `n - 1`) UTF-16 units of a well-formed string, not ending inside a surrogate pair. */
function cutName(name: string, n: number): string {
  if (n <= 0) return "";
  const last = name.charCodeAt(n - 1);
  return name.slice(0, last >= 0xd800 && last <= 0xdbff ? n - 1 : n);
}

/**
 * The name a cached function derives keys from: checked like a key part (README "Bad input") when
 * the function is created — a non-empty, well-formed string. A lone surrogate would turn into
 * U+FFFD on its way to L2, so two names (and all their keys) would share records there.
 */
function checkName(name: unknown, source: string): string {
  if (typeof name !== "string" || name === "") throw optionError("name", `must be a non-empty string (got ${source} ${preview(name)})`);
  if (!name.isWellFormed()) {
    throw optionError("name", `must be well-formed Unicode: ${source} ${preview(name)} contains a lone surrogate (two such names would share L2 records)`);
  }
  return name;
}

/**
 * Builds the cached function for `cache.cached(fn, options)` in scope `ns`. `methodName` is the
 * name of a decorated method (the default name), `fn.name` otherwise.
 */
export function makeCached(engine: Engine, ns: Namespace, base: Policy, fn: unknown, options: unknown, methodName?: string): CachedFunction<unknown[], unknown> {
  if (typeof fn !== "function") throw new TypeError(`layercache: cached() needs a function (got ${fn === null ? "null" : typeof fn})`);
  const o = checkOptionNames(options, "cached");
  const policy = derivePolicy(base, o);
  const keyFn = o.key;
  if (keyFn !== undefined && typeof keyFn !== "function") throw optionError("key", "must be a function returning the cache key");
  // Tags as a function of the arguments: a policy per call, with that call's tags.
  const tagsFn = typeof o.tags === "function" ? (o.tags as (...a: unknown[]) => unknown) : undefined;
  const policyOf = (args: unknown[]): Policy => {
    if (tagsFn === undefined) return policy;
    const tags = parseTags(tagsFn(...args));
    return { ...policy, tags: tags.length > 0 ? tags : undefined };
  };
  if (o.name !== undefined) checkName(o.name, "the name");
  let name: unknown = o.name ?? methodName ?? fn.name;
  if (keyFn === undefined) {
    if (typeof name !== "string" || name === "") {
      throw optionError("name", "is needed: an anonymous function without `key` or `name` cannot derive cache keys");
    }
    // The function's (or method's) own name derives the keys: the same rules as a given name.
    if (o.name === undefined) name = checkName(name, methodName !== undefined ? "the method name" : "the function's name");
  }
  const maxKeyLength = engine.settings.maxKeyLength;
  const keyOf = (args: unknown[]): string =>
    keyFn !== undefined ? engine.checkKey((keyFn as (...a: unknown[]) => unknown)(...args)) : deriveKey(name as string, args, maxKeyLength);

  const wrapper = function (this: unknown, ...args: unknown[]): Promise<unknown> {
    let key: string;
    let p: Policy;
    try {
      key = keyOf(args);
      p = policyOf(args);
    } catch (error) {
      return Promise.reject(error);
    }
    return engine.read(ns, key, p, fn, this, args);
  } as CachedFunction<unknown[], unknown>;
  wrapper.removeCached = (...args: unknown[]): Promise<void> => {
    let key: string;
    try {
      key = keyOf(args);
    } catch (error) {
      return Promise.reject(error);
    }
    return engine.remove(ns, key);
  };
  wrapper.cacheKey = (...args: unknown[]): string => keyOf(args);
  Object.defineProperty(wrapper, "name", { value: typeof name === "string" && name !== "" ? name : "cached" });
  made.add(wrapper);
  return wrapper;
}

/** True when `cached` was applied directly as `@cache.cached` (no options call). */
export function isMethodContext(v: unknown): v is ClassMethodDecoratorContext {
  return typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === "method" && typeof (v as { addInitializer?: unknown }).addInitializer === "function";
}

/**
 * True when the call is TypeScript's `experimentalDecorators` form, `(target, propertyKey,
 * descriptor)`, on a method. (A standard decorator gets `(method, context)`.)
 */
export function isLegacyMethodCall(target: unknown, propertyKey: unknown, descriptor: unknown): descriptor is PropertyDescriptor {
  return (
    (typeof target === "object" || typeof target === "function") &&
    target !== null &&
    (typeof propertyKey === "string" || typeof propertyKey === "symbol") &&
    typeof descriptor === "object" &&
    descriptor !== null &&
    ("value" in descriptor || "get" in descriptor || "set" in descriptor)
  );
}

/**
 * The method decorator returned by `cache.cached(options)`, for both decorator settings: the
 * standard `(method, context)` call returns the replacement; the `experimentalDecorators`
 * `(target, propertyKey, descriptor)` call puts it on the descriptor.
 */
export function methodDecorator(engine: Engine, ns: Namespace, base: Policy, options: CachedOptions<unknown[]> | undefined) {
  // Options are checked when the decorator is created, not when the class is defined.
  const o = checkOptionNames(options, "cached");
  derivePolicy(base, o);
  if (o.name !== undefined) checkName(o.name, "the name");
  if (o.key !== undefined && typeof o.key !== "function") throw optionError("key", "must be a function returning the cache key");
  return (method: unknown, context: unknown, descriptor?: unknown): unknown => {
    if (isLegacyMethodCall(method, context, descriptor)) {
      if (typeof descriptor.value !== "function") throw new TypeError(`layercache: @cached(...) decorates class methods only (${String(context)} is an accessor)`);
      descriptor.value = makeCached(engine, ns, base, descriptor.value, o, String(context));
      return descriptor;
    }
    if (!isMethodContext(context)) throw new TypeError("layercache: @cached(...) decorates class methods only");
    // The method name (when it derives keys) is checked when the class is defined.
    return makeCached(engine, ns, base, method, o, String(context.name));
  };
}

/** Options of `cache.cachedBatch(loadMany, options)`: entry options, tags, and how an argument becomes a key. */
export interface CachedBatchOptions<A> extends EntryOptions {
  /** The cache key of an argument. Without it: `name` plus a stable encoding of the argument. */
  key?: (arg: A) => string;
  /** Name used in derived keys. Default: `loadMany`'s own name. */
  name?: string;
  /** Tags of every value. */
  tags?: readonly string[];
}

/** A function made by `cache.cachedBatch(loadMany, options)`. */
export type CachedBatchFunction<A, V> = ((arg: A) => Promise<V>) & {
  /** Removes the cached value of this argument (the same as `remove(cacheKey(arg))` in its scope). */
  removeCached(arg: A): Promise<void>;
  /** The key under which the value of this argument is cached. */
  cacheKey(arg: A): string;
};

/**
 * Builds `cachedBatch`: calls made in the same tick are gathered (flushed on `process.nextTick`,
 * like DataLoader) and read with `Engine.readMany`, so their misses reach one `loadMany(args)`.
 */
export function makeCachedBatch<A, V>(
  engine: Engine,
  ns: Namespace,
  base: Policy,
  loadMany: unknown,
  options: unknown,
): CachedBatchFunction<A, V> {
  if (typeof loadMany !== "function") throw new TypeError(`layercache: cachedBatch() needs a loadMany function (got ${loadMany === null ? "null" : typeof loadMany})`);
  const o = checkOptionNames(options, "cached");
  if (typeof o.tags === "function") throw optionError("tags", "of cachedBatch must be an array of strings");
  const policy = derivePolicy(base, o);
  const keyFn = o.key;
  if (keyFn !== undefined && typeof keyFn !== "function") throw optionError("key", "must be a function returning the cache key");
  if (o.name !== undefined) checkName(o.name, "the name");
  const name = o.name ?? loadMany.name;
  if (keyFn === undefined) {
    if (typeof name !== "string" || name === "") throw optionError("name", "is needed: an anonymous loadMany without `key` or `name` cannot derive cache keys");
    if (o.name === undefined) checkName(name, "the function's name");
  }
  const maxKeyLength = engine.settings.maxKeyLength;
  const keyOf = (arg: A): string => (keyFn !== undefined ? engine.checkKey((keyFn as (a: A) => unknown)(arg)) : deriveKey(name as string, [arg], maxKeyLength));

  let queue: { key: string; arg: A; resolve(v: V): void; reject(e: unknown): void }[] = [];
  const flush = (): void => {
    const calls = queue;
    queue = [];
    const argOf = new Map<string, A>();
    for (const c of calls) if (!argOf.has(c.key)) argOf.set(c.key, c.arg);
    const keys = [...argOf.keys()];
    const byKeys = async (missing: string[]): Promise<Map<string, unknown>> => {
      const args = missing.map((k) => argOf.get(k) as A);
      const result = await (loadMany as (args: A[]) => unknown)(args);
      const out = new Map<string, unknown>();
      if (result instanceof Map) {
        for (let i = 0; i < missing.length; i++) out.set(missing[i]!, result.get(args[i]));
      } else if (Array.isArray(result) && result.length === args.length) {
        for (let i = 0; i < missing.length; i++) out.set(missing[i]!, result[i]);
      } else {
        throw new TypeError(`layercache: cachedBatch's loadMany must return a Map or an array of ${args.length} values in argument order`);
      }
      return out;
    };
    engine.readMany(ns, keys, policy, byKeys).then(
      (results) => {
        const byKey = new Map(keys.map((k, i) => [k, results[i]]));
        for (const c of calls) {
          const r = byKey.get(c.key);
          if (r instanceof Later) r.promise.then(c.resolve as (v: unknown) => void, c.reject);
          else c.resolve(r as V);
        }
      },
      (error: unknown) => {
        for (const c of calls) c.reject(error);
      },
    );
  };

  const batched = ((arg: A): Promise<V> => {
    let key: string;
    try {
      key = keyOf(arg);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<V>((resolve, reject) => {
      if (queue.length === 0) process.nextTick(flush);
      queue.push({ key, arg, resolve, reject });
    });
  }) as CachedBatchFunction<A, V>;
  batched.removeCached = (arg: A): Promise<void> => {
    let key: string;
    try {
      key = keyOf(arg);
    } catch (error) {
      return Promise.reject(error);
    }
    return engine.remove(ns, key);
  };
  batched.cacheKey = (arg: A): string => keyOf(arg);
  Object.defineProperty(batched, "name", { value: typeof name === "string" && name !== "" ? name : "cachedBatch" });
  return batched;
}
