import { isLegacyMethodCall, isMethodContext, makeCached, makeCachedBatch, methodDecorator, type CachedBatchFunction, type CachedBatchOptions, type CachedDecorator, type CachedFunction, type CachedMethod } from "./cached.js";
import { settleAll, type LoadMany } from "../core/batch.js";
import type { Engine } from "../core/engine.js";
import type { Loader } from "../core/flight.js";
import type { Namespace } from "../core/namespace.js";
import { checkOptionNames, derivePolicy, parseBounds, parseTags, type CachedOptions, type CallOptions, type Policy, type ScopeOptions } from "./options.js";

/** What a scope view is made of; kept out of the public types. */
export class ScopeCore {
  constructor(
    readonly engine: Engine,
    readonly ns: Namespace,
    readonly policy: Policy,
  ) {}
}

let namespaceOfView: (scope: CacheScope) => Namespace;

/** The shared state behind a view (internal: tests and diagnostics; not exported by the package). */
export function namespaceOf(scope: CacheScope): Namespace {
  return namespaceOfView(scope);
}

/**
 * A view of the cache in one scope: a name (a namespace across L1, L2 and bus messages) plus
 * option defaults. A scope holds no entries of its own — every view of the same scope path
 * shares them — so creating one is cheap. `LayerCache` itself is the root scope.
 *
 * A view may outlive the scope's state: a scope that holds nothing is reclaimed (see `Namespace`),
 * and its namespace object — the one this view holds, the one a later `scope(name)` call finds —
 * attaches itself again when something is stored through it, so a view never goes stale.
 */
export class CacheScope {
  static {
    namespaceOfView = (scope) => scope.#ns;
  }

  readonly #engine: Engine;
  readonly #ns: Namespace;
  readonly #policy: Policy;

  /** Scopes are made by `cache.scope(name, options)`, not constructed directly. */
  constructor(core: unknown) {
    if (!(core instanceof ScopeCore)) throw new TypeError("layercache: create scopes with cache.scope(name, options)");
    this.#engine = core.engine;
    this.#ns = core.ns;
    this.#policy = core.policy;
    // Bound, so that `@cache.cached` works as a bare decorator (decorators are called without a receiver).
    Object.defineProperty(this, "cached", { value: this.cached.bind(this), writable: true, configurable: true });
  }

  /** The scope path, outermost first (empty for the cache itself). */
  get path(): readonly string[] {
    return this.#ns.path;
  }

  /** A fresh value from L1 or L2, or undefined. Never runs a loader and never returns a stale value. */
  get<V = unknown>(key: string): Promise<V | undefined> {
    const e = this.#engine;
    if (typeof key !== "string" || key.length === 0 || key.length > e.settings.maxKeyLength || !key.isWellFormed()) return rejectKey(e, key);
    return e.get(this.#ns, key) as Promise<V | undefined>;
  }

  /** The cached value, or the loader's result (loaded once per key however many callers miss at once). */
  getOrSet<V>(key: string, loader: Loader<V>, options?: CallOptions): Promise<V> {
    const e = this.#engine;
    if (typeof key !== "string" || key.length === 0 || key.length > e.settings.maxKeyLength || !key.isWellFormed()) return rejectKey(e, key);
    if (typeof loader !== "function") return Promise.reject(new TypeError(`layercache: getOrSet(${JSON.stringify(key)}) needs a loader function`));
    let p = this.#policy;
    if (options !== undefined) {
      try {
        p = derivePolicy(p, checkOptionNames(options, "call"));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return e.read(this.#ns, key, p, loader, undefined, undefined) as Promise<V>;
  }

  /** Writes L1 and L2, then tells peers to drop their copy. `undefined` is refused (use `remove`, or `null`). */
  set(key: string, value: unknown, options?: CallOptions): Promise<void> {
    try {
      this.#engine.checkKey(key);
      const p = options === undefined ? this.#policy : derivePolicy(this.#policy, checkOptionNames(options, "call"));
      return this.#engine.set(this.#ns, key, value, p);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Fresh values of several keys (`undefined` for a miss), in key order: L1 first, then the L1 misses in one multi-key L2 read. */
  getMany<V = unknown>(keys: readonly string[]): Promise<(V | undefined)[]> {
    try {
      this.#checkKeys(keys, "getMany");
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#engine.getMany(this.#ns, keys) as Promise<(V | undefined)[]>;
  }

  /**
   * The values of several keys, in key order: fresh hits from L1, then one multi-key L2 read;
   * keys another caller is loading join that load; every other key goes to ONE
   * `loadMany(keys, { signal })` call, which returns a `Map` by key or an array in the order of
   * the keys it was given. Single flight, fail-safe, timeouts and no-resurrection hold per key.
   * Rejects (with the first error) when a key's load fails with no fail-safe value.
   */
  getOrSetMany<V>(keys: readonly string[], loadMany: LoadMany<V>, options?: CallOptions): Promise<V[]> {
    let p = this.#policy;
    try {
      this.#checkKeys(keys, "getOrSetMany");
      if (typeof loadMany !== "function") throw new TypeError("layercache: getOrSetMany(keys, loadMany) needs a loadMany function");
      if (options !== undefined) p = derivePolicy(p, checkOptionNames(options, "call"));
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#engine.readMany(this.#ns, keys, p, loadMany as LoadMany<unknown>).then(settleAll) as Promise<V[]>;
  }

  /** Writes several entries (`[key, value, options?]`), as `set` does each; everything is checked before anything is written. */
  setMany(entries: readonly (readonly [key: string, value: unknown, options?: CallOptions])[]): Promise<void> {
    const e = this.#engine;
    const jobs: [string, unknown, Policy][] = [];
    try {
      if (!Array.isArray(entries)) throw new TypeError("layercache: setMany needs an array of [key, value, options?] entries");
      for (const entry of entries) {
        if (!Array.isArray(entry)) throw new TypeError("layercache: setMany needs an array of [key, value, options?] entries");
        const [key, value, options] = entry;
        e.checkKey(key);
        if (value === undefined) throw new TypeError(`layercache: cannot set key ${JSON.stringify(key)} to undefined (use remove, or null)`);
        jobs.push([key, value, options === undefined ? this.#policy : derivePolicy(this.#policy, checkOptionNames(options, "call"))]);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.all(jobs.map(([k, v, p]) => e.set(this.#ns, k, v, p))).then(() => undefined);
  }

  /** Removes several keys from L1 and L2, then tells peers in one message. */
  removeMany(keys: readonly string[]): Promise<void> {
    try {
      this.#checkKeys(keys, "removeMany");
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#engine.removeMany(this.#ns, keys);
  }

  #checkKeys(keys: readonly string[], method: string): void {
    if (!Array.isArray(keys)) throw new TypeError(`layercache: ${method} needs an array of keys`);
    for (const k of keys) this.#engine.checkKey(k);
  }

  /** Whether a fresh value of the key is in L1 or L2 (as `get` would return one). Never loads. */
  has(key: string): Promise<boolean> {
    return this.get(key).then((v) => v !== undefined);
  }

  /**
   * Invalidates every entry of this scope carrying the tag (or any of the tags): in L1 here, in L2
   * (so no instance reads it from there again) and on peers; loads in flight that would write such
   * a value do not write it (as for `remove`). Tags are per scope: nested scopes are not touched.
   */
  removeByTag(tag: string | readonly string[]): Promise<void> {
    let tags: readonly string[];
    try {
      tags = parseTags(typeof tag === "string" ? [tag] : tag);
    } catch (error) {
      return Promise.reject(error);
    }
    if (tags.length === 0) return Promise.resolve();
    return this.#engine.removeByTag(this.#ns, tags);
  }

  /** Deletes the key from L1 and L2, then tells peers. */
  remove(key: string): Promise<void> {
    try {
      return this.#engine.remove(this.#ns, this.#engine.checkKey(key));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Empties this scope (and the scopes nested in it) in this instance's L1 and tells peers to do the same. L2 is left as it is. */
  clear(): Promise<void> {
    return this.#engine.clear(this.#ns);
  }

  /** Deletes the key from this instance's L1 only; nobody is told. */
  removeLocal(key: string): void {
    this.#engine.removeLocal(this.#ns, this.#engine.checkKey(key));
  }

  /** Empties this scope in this instance's L1 only; nobody is told. */
  clearMemory(): void {
    this.#engine.clearLocal(this.#ns);
  }

  /** A nested scope; its options override this scope's, field by field. */
  scope(name: string, options?: ScopeOptions): CacheScope {
    if (typeof name !== "string" || name.length === 0 || name.length > this.#engine.settings.maxKeyLength || !name.isWellFormed()) {
      throw new TypeError(`layercache: scope name must be a non-empty, well-formed string of at most ${this.#engine.settings.maxKeyLength} characters (got ${typeof name === "string" ? JSON.stringify(name) : typeof name})`);
    }
    const o = checkOptionNames(options, "scope");
    const bounds = parseBounds(o);
    const policy = derivePolicy(this.#policy, o);
    const hasBounds = bounds.maxEntries !== undefined || bounds.maxBytes !== undefined;
    return new CacheScope(new ScopeCore(this.#engine, this.#ns.child(name, hasBounds ? bounds : undefined), policy));
  }

  /**
   * A function of one argument whose calls in the same tick are gathered: their keys go through
   * `getOrSetMany`, so the misses reach ONE `loadMany(args)` call (DataLoader-style), which returns
   * an array in the order of `args` or a `Map` by argument. With `removeCached(arg)` and `cacheKey(arg)`.
   */
  cachedBatch<A, V>(loadMany: (args: A[]) => Promise<ReadonlyMap<A, V> | readonly V[]> | ReadonlyMap<A, V> | readonly V[], options?: CachedBatchOptions<A>): CachedBatchFunction<A, V> {
    return makeCachedBatch<A, V>(this.#engine, this.#ns, this.#policy, loadMany, options);
  }

  /**
   * Wraps a function so its results are cached in this scope, keyed by `options.key(...args)` or
   * by its name and a stable encoding of the arguments. Called with options only (or applied
   * bare as `@cache.cached`), it is a method decorator, under standard (TC39) decorators and
   * under TypeScript's `experimentalDecorators` alike; `cachedOf(instance.method)` gives the
   * decorated method's `removeCached` and `cacheKey` with their types.
   */
  cached<This, M extends (this: This, ...args: any[]) => unknown>(method: M, context: ClassMethodDecoratorContext<This, M>): M;
  cached(target: object, propertyKey: string | symbol, descriptor: PropertyDescriptor): void;
  cached<F extends (...args: any[]) => unknown>(fn: F, options?: CachedOptions<Parameters<F>>): CachedFunction<Parameters<F>, ReturnType<F>>;
  cached<A extends unknown[] = any[]>(options?: CachedOptions<A>): CachedDecorator<A>;
  cached(fnOrOptions?: unknown, options?: unknown, descriptor?: unknown): unknown {
    if (isLegacyMethodCall(fnOrOptions, options, descriptor) || (typeof fnOrOptions === "function" && isMethodContext(options))) {
      return methodDecorator(this.#engine, this.#ns, this.#policy, undefined)(fnOrOptions, options, descriptor);
    }
    if (typeof fnOrOptions === "function") return makeCached(this.#engine, this.#ns, this.#policy, fnOrOptions, options);
    return methodDecorator(this.#engine, this.#ns, this.#policy, fnOrOptions as CachedOptions<unknown[]> | undefined);
  }
}

function rejectKey(e: Engine, key: unknown): Promise<never> {
  try {
    e.checkKey(key);
  } catch (error) {
    return Promise.reject(error);
  }
  return Promise.reject(new TypeError("layercache: invalid key"));
}
