import { describe, expect, test } from "vitest";
import { LayerCache } from "../src/index.js";
import { deferred, flush } from "./support/helpers.js";

describe("single flight (SPEC 4.1)", () => {
  test("1 000 concurrent misses call the loader exactly once", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const gate = deferred<void>();
    const loader = async (): Promise<string> => {
      calls++;
      await gate.promise;
      return "value";
    };
    const all = Promise.all(Array.from({ length: 1000 }, () => cache.getOrSet("k", loader)));
    await flush();
    gate.resolve();
    const results = await all;
    expect(calls).toBe(1);
    expect(new Set(results)).toEqual(new Set(["value"]));
    expect(cache.stats().loads).toBe(1);
  });

  test("a failing load is shared by its waiters, not re-run once per waiter", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const gate = deferred<void>();
    const loader = async (): Promise<string> => {
      calls++;
      await gate.promise;
      throw new Error("db down");
    };
    const all = Promise.allSettled(Array.from({ length: 100 }, () => cache.getOrSet("k", loader)));
    await flush();
    gate.resolve();
    const results = await all;
    expect(calls).toBe(1);
    expect(results.every((r) => r.status === "rejected" && (r.reason as Error).message === "db down")).toBe(true);
    // The next call after the failure loads again.
    expect(await cache.getOrSet("k", async () => "ok")).toBe("ok");
  });

  test("a synchronous throw is shared the same way", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const loader = (): string => {
      calls++;
      throw new Error("sync");
    };
    const results = await Promise.allSettled([cache.getOrSet("k", loader), cache.getOrSet("k", loader)]);
    expect(calls).toBe(1);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
  });

  test("the flight is shared by every view of the scope and by cached functions of the same key", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const gate = deferred<void>();
    const load = async (): Promise<string> => {
      calls++;
      await gate.promise;
      return "u1";
    };
    const getUser = cache.scope("users").cached((_id: string) => load(), { key: (id) => `user:${id}` });
    const p = Promise.all([
      cache.scope("users").getOrSet("user:1", load),
      cache.scope("users").getOrSet("user:1", load),
      getUser("1"),
      cache.scope("users", { ttl: "5m" }).getOrSet("user:1", load),
    ]);
    await flush();
    gate.resolve();
    expect(await p).toEqual(["u1", "u1", "u1", "u1"]);
    expect(calls).toBe(1);
  });

  test("different keys and different scopes load independently", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const load = async (): Promise<number> => ++calls;
    await Promise.all([cache.getOrSet("a", load), cache.getOrSet("b", load), cache.scope("s").getOrSet("a", load)]);
    expect(calls).toBe(3);
  });
});
