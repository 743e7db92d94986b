import Fastify from "fastify";
import { describe, expect, test } from "vitest";
import { LayerCache, MemoryBus } from "../../src/index.js";
import { layercache } from "../../src/integrations/fastify/index.js";

describe("layercache/fastify", () => {
  test("decorates the instance for every route (no encapsulation), serves cached values, and closes the cache on close", async () => {
    const app = Fastify();
    let loads = 0;
    await app.register(layercache, { options: { ttl: "1m", bus: new MemoryBus() } });
    // A child plugin sees the decorator too.
    await app.register(async (child) => {
      child.get("/users/:id", async (req) => {
        const { id } = req.params as { id: string };
        return child.cache.scope("users").getOrSet(id, async () => ({ id, n: ++loads }));
      });
    });
    app.delete("/users/:id", async (req, reply) => {
      await app.cache.scope("users").remove((req.params as { id: string }).id);
      return reply.code(204).send();
    });
    const first = await app.inject({ method: "GET", url: "/users/7" });
    const second = await app.inject({ method: "GET", url: "/users/7" });
    expect(first.json()).toEqual({ id: "7", n: 1 });
    expect(second.json()).toEqual({ id: "7", n: 1 });
    expect((await app.inject({ method: "DELETE", url: "/users/7" })).statusCode).toBe(204);
    expect((await app.inject({ method: "GET", url: "/users/7" })).json()).toEqual({ id: "7", n: 2 });
    expect(app.cache.stats().hits).toBe(1);
    const cache = app.cache;
    await app.close();
    await expect(cache.getOrSet("x", async () => 1)).rejects.toThrow(/closed/);
  });

  test("a cache the application made, under another decorator name, left open with close: false", async () => {
    const cache = new LayerCache();
    const app = Fastify();
    await app.register(layercache, { cache, decorator: "layercache", close: false });
    app.get("/", async () => (app as unknown as { layercache: LayerCache }).layercache.getOrSet("k", async () => "v"));
    expect((await app.inject({ method: "GET", url: "/" })).body).toBe("v");
    await app.close();
    expect(await cache.get("k")).toBe("v");
    await cache.close();
  });

  test("bad options fail the registration with a TypeError", async () => {
    for (const opts of [{ bogus: 1 }, { cache: {} }, { cache: new LayerCache(), options: {} }, { decorator: "" }, { options: { ttl: "never" } }]) {
      const app = Fastify();
      await expect(app.register(layercache, opts as never).ready()).rejects.toThrow(TypeError);
      await app.close();
    }
  });
});
