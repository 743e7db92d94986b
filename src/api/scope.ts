import { isLegacyMethodCall, isMethodContext, makeCached, methodDecorator, type CachedDecorator, type CachedFunction } from "./cached.js";
import type { Engine } from "../core/engine.js";
import type { Loader } from "../core/flight.js";
import type { Namespace } from "../core/namespace.js";
import { checkOptionNames, derivePolicy, parseBounds, type CachedOptions, type EntryOptions, type Policy, type ScopeOptions } from "./options.js";

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
  getOrSet<V>(key: string, loader: Loader<V>, options?: EntryOptions): Promise<V> {
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
  set(key: string, value: unknown, options?: EntryOptions): Promise<void> {
    try {
      this.#engine.checkKey(key);
      const p = options === undefined ? this.#policy : derivePolicy(this.#policy, checkOptionNames(options, "call"));
      return this.#engine.set(this.#ns, key, value, p);
    } catch (error) {
      return Promise.reject(error);
    }
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
