import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache } from "../src/index.js";
import { deriveKey } from "../src/cached.js";

describe("cached functions (SPEC 1.2)", () => {
  test("caches by key and keeps the function's parameters", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const getUser = cache.cached(async (id: string, full = false) => ({ id, full, n: ++calls }), {
      key: (id, full) => `user:${id}:${full ? "full" : "short"}`,
    });
    expect(await getUser("1")).toEqual({ id: "1", full: false, n: 1 });
    expect(await getUser("1")).toEqual({ id: "1", full: false, n: 1 });
    expect(await getUser("1", true)).toEqual({ id: "1", full: true, n: 2 });
    expect(getUser.cacheKey("1")).toBe("user:1:short");
  });

  test("with key, cache.remove(key) and fn.removeCached(args) are the same operation", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const getUser = cache.cached(async (id: string) => ++calls, { key: (id) => `user:${id}` });
    await getUser("123");
    expect(await cache.get("user:123")).toBe(1);
    await cache.remove("user:123");
    expect(await getUser("123")).toBe(2);
    await getUser.removeCached("123");
    expect(await cache.get("user:123")).toBeUndefined();
    expect(await getUser("123")).toBe(3);
  });

  test("a cached function lives in the scope it was created from", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    let calls = 0;
    const getUser = users.cached(async (id: string) => ++calls, { key: (id) => `user:${id}` });
    await getUser("1");
    expect(await users.get("user:1")).toBe(1);
    expect(await cache.get("user:1")).toBeUndefined();
    await users.remove("user:1");
    expect(await getUser("1")).toBe(2);
    await users.clear();
    expect(await getUser("1")).toBe(3);
  });

  test("cached-function options override the scope's, and calls pass this", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s" });
    const obj = {
      factor: 10,
      times: cache.cached(
        async function times(this: { factor: number }, x: number) {
          return x * this.factor;
        },
        { ttl: "1h" },
      ),
    };
    expect(await obj.times(2)).toBe(20);
    clock.advance(60_000);
    expect(await cache.get(obj.times.cacheKey(2))).toBe(20);
  });

  test("an anonymous function without key or name is a configuration error", () => {
    const cache = new LayerCache();
    expect(() => cache.cached(async (x: number) => x)).toThrow(/"name"/);
    expect(() => cache.cached(async (x: number) => x, { name: "double" })).not.toThrow();
    expect(() => cache.cached(async (x: number) => x, { key: (x) => `x:${x}` })).not.toThrow();
    expect(() => cache.cached("nope" as never)).toThrow(TypeError);
  });

  test("a key builder that returns a bad key rejects the call", async () => {
    const cache = new LayerCache();
    const f = cache.cached(async (x: number) => x, { key: () => "" });
    await expect(f(1)).rejects.toThrow(TypeError);
    const g = cache.cached(async (x: number) => x, { key: () => 5 as never });
    await expect(g(1)).rejects.toThrow(TypeError);
  });

  test("errors and undefined results are not cached", async () => {
    const cache = new LayerCache({ failSafe: 0 });
    let calls = 0;
    const f = cache.cached(async function flaky(x: number) {
      calls++;
      if (calls === 1) throw new Error("first fails");
      return calls === 2 ? undefined : x;
    });
    await expect(f(1)).rejects.toThrow("first fails");
    expect(await f(1)).toBeUndefined();
    expect(await f(1)).toBe(1);
    expect(await f(1)).toBe(1);
    expect(calls).toBe(3);
  });
});

describe("derived keys", () => {
  const k = (...args: unknown[]) => deriveKey("fn", args, 1024);

  test("name plus the arguments", () => {
    expect(k("123")).toBe('fn:["123"]');
    expect(k(1, true, null)).toBe("fn:[1,true,null]");
    expect(k()).toBe("fn:[]");
  });

  test("object keys are sorted (order-independent), deeply", () => {
    expect(k({ a: 1, b: { c: 2, d: 3 } })).toBe(k({ b: { d: 3, c: 2 }, a: 1 }));
  });

  test("Date, Map, Set and bigint are encoded distinctly and stably", () => {
    const d = new Date("2024-01-02T03:04:05.000Z");
    expect(k(d)).toBe(k(new Date(d.getTime())));
    expect(k(d)).not.toBe(k(d.toISOString()));
    expect(k(new Map([["a", 1], ["b", 2]]))).toBe(k(new Map([["b", 2], ["a", 1]])));
    expect(k(new Map([["a", 1]]))).not.toBe(k({ a: 1 }));
    expect(k(new Set([1, 2, 3]))).toBe(k(new Set([3, 2, 1])));
    expect(k(new Set([1]))).not.toBe(k([1]));
    expect(k(10n)).not.toBe(k(10));
    expect(k(10n)).toBe(k(BigInt(10)));
    expect(k({ when: d, tags: new Set(["x"]) })).toBe(k({ tags: new Set(["x"]), when: new Date(d.getTime()) }));
  });

  test("undefined, null, NaN and Infinity as arguments are distinct", () => {
    const keys = [k(undefined), k(null), k(NaN), k(Infinity), k(-Infinity)];
    expect(new Set(keys).size).toBe(5);
  });

  test("the fast path for primitives matches the general encoder", () => {
    expect(k("a", 1)).toBe(deriveKey("fn", ["a", 1, { toString: undefined }], 1024).replace(',{}]', "]"));
  });

  test("function, symbol and cyclic arguments cannot derive a key", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => k(() => 1)).toThrow(TypeError);
    expect(() => k(Symbol("s"))).toThrow(TypeError);
    expect(() => k(cyclic)).toThrow(TypeError);
  });

  test("a derived key longer than maxKeyLength is hashed", () => {
    const long = deriveKey("fn", ["x".repeat(100)], 50);
    expect(long).toMatch(/^fn:#[A-Za-z0-9_-]{43}$/);
    expect(deriveKey("fn", ["x".repeat(100)], 50)).toBe(long);
  });

  test("a cached function without key uses its name and these keys", async () => {
    const cache = new LayerCache();
    const f = cache.cached(async function findUser(id: string, opts: { full: boolean }) {
      return `${id}${opts.full}`;
    });
    expect(f.cacheKey("1", { full: true })).toBe('findUser:["1",{"full":true}]');
    await f("1", { full: true });
    expect(await cache.get('findUser:["1",{"full":true}]')).toBe("1true");
  });

  test("a cached function with a bad argument rejects without calling it", async () => {
    const cache = new LayerCache();
    let called = false;
    const f = cache.cached(async function g(_x: unknown) {
      called = true;
    });
    await expect(f(() => 1)).rejects.toThrow(TypeError);
    expect(called).toBe(false);
  });
});

describe("TC39 method decorator", () => {
  test("@cache.cached(options) caches a method in the cache's scope", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    let calls = 0;
    class Repo {
      prefix = "user";
      @users.cached({ key: (id: string) => `user:${id}` })
      async find(id: string) {
        calls++;
        return `${this.prefix}-${id}`;
      }
    }
    const repo = new Repo();
    expect(await repo.find("1")).toBe("user-1");
    expect(await repo.find("1")).toBe("user-1");
    expect(calls).toBe(1);
    expect(await users.get("user:1")).toBe("user-1");
    await (repo.find as unknown as { removeCached(id: string): Promise<void> }).removeCached("1");
    expect(await users.get("user:1")).toBeUndefined();
  });

  test("bare @cache.cached derives keys from the method name", async () => {
    const cache = new LayerCache();
    class Svc {
      @cache.cached
      async double(x: number) {
        return x * 2;
      }
    }
    expect(await new Svc().double(4)).toBe(8);
    expect(await cache.get("double:[4]")).toBe(8);
  });

  test("decorator options are validated when the decorator is created", () => {
    const cache = new LayerCache();
    expect(() => cache.cached({ ttl: "never" })).toThrow(/"ttl"/);
  });
});
