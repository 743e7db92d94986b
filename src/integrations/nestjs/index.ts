import { Inject, type DynamicModule, type FactoryProvider, type InjectionToken, type ModuleMetadata, type OptionalFactoryDependency, type Provider } from "@nestjs/common";
import { LayerCache, type CacheOptions, type ScopeOptions } from "../../index.js";

/** Injection token of the cache (the `LayerCache` class is a token for it as well). */
export const LAYER_CACHE = Symbol.for("layercache:cache");

/** Injection token of the named scope `name` (made by `scopes` of `forRoot`). */
export function scopeToken(name: string): string {
  return `layercache:scope:${name}`;
}

/** Parameter decorator: injects the cache (`constructor(@InjectCache() cache: LayerCache)`); injecting by the `LayerCache` type works too. */
export function InjectCache(): PropertyDecorator & ParameterDecorator {
  return Inject(LAYER_CACHE);
}

/** Parameter decorator: injects the named scope `name` (declared in `scopes`). */
export function InjectScope(name: string): PropertyDecorator & ParameterDecorator {
  return Inject(scopeToken(name));
}

/** Scopes to provide: names, or names with their option defaults. */
export type ScopeDeclarations = readonly string[] | Readonly<Record<string, ScopeOptions>>;

export interface LayerCacheModuleOptions {
  /** A cache made by the application. Without it the module makes one from `options`. */
  cache?: LayerCache;
  /** Options of the cache the module makes. */
  options?: CacheOptions;
  /** Named scopes provided for injection with `@InjectScope(name)`. */
  scopes?: ScopeDeclarations;
  /** Make the providers visible to every module without importing this one. Default true. */
  isGlobal?: boolean;
  /** Close the cache when the application shuts down (`app.close()`). Default true. */
  close?: boolean;
}

export interface LayerCacheModuleAsyncOptions {
  imports?: ModuleMetadata["imports"];
  /** Providers whose values `useFactory` receives, in order (e.g. `ConfigService`). */
  inject?: (InjectionToken | OptionalFactoryDependency)[];
  /** Returns the cache's options (or a cache). */
  useFactory: (...args: any[]) => CacheOptions | LayerCache | Promise<CacheOptions | LayerCache>;
  scopes?: ScopeDeclarations;
  isGlobal?: boolean;
  close?: boolean;
}

const MODULE_OPTIONS = new Set(["cache", "options", "scopes", "isGlobal", "close"]);
const ASYNC_OPTIONS = new Set(["imports", "inject", "useFactory", "scopes", "isGlobal", "close"]);

function checkNames(o: object, known: Set<string>, where: string): void {
  for (const k of Object.keys(o)) if (!known.has(k)) throw new TypeError(`layercache/nestjs: unknown option "${k}" of ${where}`);
}

function scopeEntries(scopes: ScopeDeclarations | undefined): [string, ScopeOptions | undefined][] {
  if (scopes === undefined) return [];
  if (Array.isArray(scopes)) return scopes.map((name) => [name as string, undefined]);
  if (typeof scopes !== "object" || scopes === null) throw new TypeError('layercache/nestjs: option "scopes" must be an array of names or an object of scope options');
  return Object.entries(scopes as Record<string, ScopeOptions>);
}

/**
 * Providers around the cache's own: the `LayerCache` alias, one provider per named scope (each
 * made when the module is created, so a bad scope fails at boot), and the shutdown hook.
 */
function around(cacheProvider: Provider, scopes: ScopeDeclarations | undefined, close: boolean | undefined): Provider[] {
  const providers: Provider[] = [cacheProvider, { provide: LayerCache, useExisting: LAYER_CACHE }];
  for (const [name, options] of scopeEntries(scopes)) {
    providers.push({ provide: scopeToken(name), useFactory: (cache: LayerCache) => cache.scope(name, options), inject: [LAYER_CACHE] });
  }
  if (close !== false) {
    // Nest calls the hook on every provider instance that has it: the cache is closed after every
    // module's onModuleDestroy (which may still use it), when the application shuts down.
    providers.push({ provide: Symbol("layercache:shutdown"), useFactory: (cache: LayerCache) => ({ onApplicationShutdown: () => cache.close() }), inject: [LAYER_CACHE] });
  }
  return providers;
}

function exported(scopes: ScopeDeclarations | undefined): DynamicModule["exports"] {
  return [LAYER_CACHE, LayerCache, ...scopeEntries(scopes).map(([name]) => scopeToken(name))];
}

/**
 * NestJS module: provides a cache (and named scopes) through Nest's dependency injection and
 * closes it when the application shuts down.
 *
 *     @Module({ imports: [LayerCacheModule.forRoot({ options: { ttl: "1m" }, scopes: ["users"] })] })
 *     class AppModule {}
 *
 *     @Injectable()
 *     class UsersService {
 *       constructor(@InjectScope("users") private readonly users: CacheScope) {}
 *     }
 */
export class LayerCacheModule {
  static forRoot(options: LayerCacheModuleOptions = {}): DynamicModule {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/nestjs: forRoot() takes an options object");
    checkNames(options, MODULE_OPTIONS, "forRoot()");
    if (options.cache !== undefined && !(options.cache instanceof LayerCache)) throw new TypeError('layercache/nestjs: option "cache" must be a LayerCache');
    if (options.cache !== undefined && options.options !== undefined) throw new TypeError('layercache/nestjs: give "cache" or "options", not both');
    scopeEntries(options.scopes);
    // A cache made here is made now: bad options fail where the module is declared.
    const cache = options.cache ?? new LayerCache(options.options);
    return {
      module: LayerCacheModule,
      global: options.isGlobal ?? true,
      providers: around({ provide: LAYER_CACHE, useValue: cache }, options.scopes, options.close),
      exports: exported(options.scopes),
    };
  }

  static forRootAsync(options: LayerCacheModuleAsyncOptions): DynamicModule {
    if (options === null || typeof options !== "object" || typeof options.useFactory !== "function") throw new TypeError("layercache/nestjs: forRootAsync() needs { useFactory }");
    checkNames(options, ASYNC_OPTIONS, "forRootAsync()");
    scopeEntries(options.scopes);
    const provider: FactoryProvider = {
      provide: LAYER_CACHE,
      useFactory: async (...args: unknown[]) => {
        const made = await options.useFactory(...args);
        return made instanceof LayerCache ? made : new LayerCache(made);
      },
      inject: options.inject ?? [],
    };
    return {
      module: LayerCacheModule,
      global: options.isGlobal ?? true,
      imports: options.imports ?? [],
      providers: around(provider, options.scopes, options.close),
      exports: exported(options.scopes),
    };
  }
}
