import "reflect-metadata";
import { Inject, Injectable, Module } from "@nestjs/common";
import { NestFactory } from "@nestjs/core";
import { describe, expect, test } from "vitest";
import { CacheScope, LayerCache, MemoryBus } from "../../src/index.js";
import { InjectCache, InjectScope, LAYER_CACHE, LayerCacheModule, scopeToken } from "../../src/integrations/nestjs/index.js";

// The tests are compiled with standard decorators, so Nest's (experimentalDecorators-style)
// decorators are applied by call here; test/package.test.ts compiles a Nest application written
// with `@` syntax under experimentalDecorators.
class UsersService {
  loads = 0;
  constructor(
    readonly users: CacheScope,
    readonly cache: LayerCache,
  ) {}
  find(id: string): Promise<{ id: string; n: number }> {
    return this.users.getOrSet(id, async () => ({ id, n: ++this.loads }));
  }
}
Injectable()(UsersService);
InjectScope("users")(UsersService, undefined, 0);
InjectCache()(UsersService, undefined, 1);

/** Injects by the LayerCache class itself (what `emitDecoratorMetadata` gives a typed constructor parameter). */
class Reporter {
  constructor(readonly cache: LayerCache) {}
}
Injectable()(Reporter);
Inject(LayerCache)(Reporter, undefined, 0);

async function boot(imports: unknown[]) {
  class FeatureModule {}
  Module({ providers: [UsersService, Reporter], exports: [UsersService] })(FeatureModule);
  class AppModule {}
  Module({ imports: [...(imports as never[]), FeatureModule] })(AppModule);
  return NestFactory.createApplicationContext(AppModule, { logger: false });
}

describe("layercache/nestjs in a real Nest application", () => {
  test("forRoot provides the cache and named scopes to a feature module (global), and app.close() closes the cache", async () => {
    const app = await boot([LayerCacheModule.forRoot({ options: { ttl: "1m", bus: new MemoryBus() }, scopes: { users: { ttl: "10m" } } })]);
    const svc = app.get(UsersService);
    expect(await svc.find("1")).toEqual({ id: "1", n: 1 });
    expect(await svc.find("1")).toEqual({ id: "1", n: 1 });
    expect(svc.users.path).toEqual(["users"]);
    expect(await svc.cache.scope("users").get("1")).toEqual({ id: "1", n: 1 });
    // One cache behind every token.
    expect(app.get(Reporter).cache).toBe(svc.cache);
    expect(app.get(LAYER_CACHE)).toBe(svc.cache);
    expect(app.get(scopeToken("users"))).toBeInstanceOf(CacheScope);
    await app.close();
    await expect(svc.find("2")).rejects.toThrow(/closed/);
  });

  test("forRootAsync builds the cache from injected configuration; close: false leaves a given cache open", async () => {
    const CONFIG = "config";
    class ConfigModule {}
    Module({ providers: [{ provide: CONFIG, useValue: { ttl: "5m", prefix: "nest" } }], exports: [CONFIG] })(ConfigModule);
    const app = await boot([LayerCacheModule.forRootAsync({ imports: [ConfigModule], inject: [CONFIG], useFactory: (config: { ttl: string; prefix: string }) => ({ ttl: config.ttl, prefix: config.prefix }), scopes: ["users"] })]);
    const svc = app.get(UsersService);
    expect(await svc.find("a")).toEqual({ id: "a", n: 1 });
    await app.close();
    await expect(svc.cache.get("x")).rejects.toThrow(/closed/);

    const own = new LayerCache();
    const second = await boot([LayerCacheModule.forRoot({ cache: own, scopes: ["users"], close: false })]);
    expect(second.get(UsersService).cache).toBe(own);
    await second.close();
    await own.set("still", "open");
    expect(await own.get("still")).toBe("open");
    await own.close();
  });

  test("bad options are TypeErrors where the module is declared", () => {
    expect(() => LayerCacheModule.forRoot({ bogus: 1 } as never)).toThrow(/unknown option "bogus"/);
    expect(() => LayerCacheModule.forRoot({ options: { ttl: "never" } })).toThrow(/"ttl"/);
    expect(() => LayerCacheModule.forRoot({ cache: {} as never })).toThrow(TypeError);
    expect(() => LayerCacheModule.forRoot({ scopes: 5 as never })).toThrow(TypeError);
    expect(() => LayerCacheModule.forRootAsync({} as never)).toThrow(/useFactory/);
  });
});
