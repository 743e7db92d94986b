import fc from "fast-check";
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, cachedOf } from "../src/index.js";
import { deriveKey } from "../src/api/cached.js";
import type { L2Store } from "../src/l2/contract.js";
import { MapStore } from "./support/map-store.js";

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

  test("cachedOf(instance.method) gives the decorated method's removeCached and cacheKey, typed", async () => {
    const cache = new LayerCache();
    let calls = 0;
    class Repo {
      @cache.cached({ key: (id: string) => `user:${id}` })
      async find(id: string) {
        return `${id}:${++calls}`;
      }
    }
    const repo = new Repo();
    expect(await repo.find("1")).toBe("1:1");
    expect(cachedOf(repo.find).cacheKey("1")).toBe("user:1");
    await cachedOf(repo.find).removeCached("1");
    expect(await repo.find("1")).toBe("1:2");
    const plain = cache.cached(async (x: number) => x, { name: "plain" });
    expect(cachedOf(plain)).toBe(plain);
    expect(() => cachedOf(async () => 1)).toThrow(/cachedOf\(\) needs a function made by cache\.cached/);
    expect(() => cachedOf(null as never)).toThrow(TypeError);
  });
});

/**
 * What TypeScript emits under `experimentalDecorators` (NestJS projects): the decorator is called
 * with (prototype or constructor, name, descriptor) and its descriptor is defined on the class.
 * Compiled by tsc for real under both settings in test/package.test.ts.
 */
function legacyDecorate(target: object, name: string, decorator: (t: object, k: string, d: PropertyDescriptor) => unknown): void {
  const descriptor = Object.getOwnPropertyDescriptor(target, name)!;
  const result = decorator(target, name, descriptor);
  Object.defineProperty(target, name, (result as PropertyDescriptor | undefined) ?? descriptor);
}

describe("experimentalDecorators method decorator", () => {
  test("@cache.cached(options) and bare @cache.cached, on instance and static methods", async () => {
    const cache = new LayerCache();
    const users = cache.scope("users");
    let calls = 0;
    class Repo {
      prefix = "user";
      async find(id: string) {
        calls++;
        return `${this.prefix}-${id}`;
      }
      async double(x: number) {
        calls++;
        return x * 2;
      }
      static async square(x: number) {
        return x * x;
      }
    }
    legacyDecorate(Repo.prototype, "find", users.cached({ key: (id: string) => `user:${id}` }) as never);
    legacyDecorate(Repo.prototype, "double", cache.cached as never);
    legacyDecorate(Repo, "square", cache.cached({ name: "sq" }) as never);
    const repo = new Repo();
    expect(await repo.find("1")).toBe("user-1");
    expect(await repo.find("1")).toBe("user-1");
    expect(await users.get("user:1")).toBe("user-1");
    await cachedOf(repo.find).removeCached("1");
    expect(await users.get("user:1")).toBeUndefined();
    expect(await repo.double(4)).toBe(8);
    expect(await cache.get("double:[4]")).toBe(8);
    expect(await Repo.square(3)).toBe(9);
    expect(await cache.get("sq:[3]")).toBe(9);
    expect(calls).toBe(2);
  });

  test("on an accessor it is a TypeError naming the member", () => {
    const cache = new LayerCache();
    class Svc {
      get value() {
        return 1;
      }
    }
    expect(() => legacyDecorate(Svc.prototype, "value", cache.cached({ name: "v" }) as never)).toThrow(/decorates class methods only \(value is an accessor\)/);
    expect(() => legacyDecorate(Svc.prototype, "value", cache.cached as never)).toThrow(TypeError);
  });
});

/** An L2 that, like Redis, keeps keys as UTF-8: a lone surrogate becomes U+FFFD on the way. */
function utf8Store(): L2Store {
  const inner = new MapStore();
  return {
    get: (key) => inner.get(key.toWellFormed()),
    set: (key, record, ttlMs, ifGeneration) => inner.set(key.toWellFormed(), record, ttlMs, ifGeneration),
  };
}

/** What `Engine.checkKey` accepts (README "Bad input"). */
const isKey = (k: string, max: number) => typeof k === "string" && k.length > 0 && k.length <= max && k.isWellFormed();

describe("names of cached functions are checked like keys (issue 5)", () => {
  test("two cached functions named with different lone surrogates cannot share one L2 record", async () => {
    const l2 = utf8Store();
    const a = new LayerCache({ l2 });
    const b = new LayerCache({ l2 });
    // Before the fix both were created, and `b` read the price `a` had cached ("price\uFFFD:["x"] in L2).
    expect(() => a.cached(async (_id: string) => 1, { name: "price\uD800" })).toThrow(TypeError);
    expect(() => b.cached(async (_id: string) => 2, { name: "price\uDBFF" })).toThrow(/"name"/);
    expect(() => b.cached(async (_id: string) => 2, { name: "\uDC00price" })).toThrow(/"name".*lone surrogate/);
    // Well-formed names (a surrogate pair included) stay apart.
    const pa = a.cached(async (_id: string) => 1, { name: "price\u{1F4B0}" });
    const pb = b.cached(async (_id: string) => 2, { name: "price\u{1F4B5}" });
    expect(await pa("x")).toBe(1);
    expect(await pb("x")).toBe(2);
    await a.close();
    await b.close();
  });

  test("a function's own name is checked when it derives the keys, and `name` or `key` replaces it", () => {
    const cache = new LayerCache();
    const fn = { async ["price\uD800"](id: string) { return id; } }["price\uD800"];
    expect(fn.name).toBe("price\uD800");
    expect(() => cache.cached(fn)).toThrow(/"name".*function's name/);
    expect(() => cache.cached(fn, { name: "price" })).not.toThrow();
    expect(() => cache.cached(fn, { key: (id) => `price:${id}` })).not.toThrow();
    // A bad `name` option is refused even when `key` makes the keys.
    expect(() => cache.cached(fn, { key: (id) => `price:${id}`, name: "p\uDBFF" })).toThrow(/"name"/);
    expect(() => cache.cached(async (x: number) => x, { name: 5 as never })).toThrow(/"name"/);
  });

  test("decorators: a bad `name` fails when the decorator is made, a bad method name when the class is defined", () => {
    const cache = new LayerCache();
    expect(() => cache.cached({ name: "m\uD800" })).toThrow(/"name"/);
    const define = () => {
      class Svc {
        @cache.cached
        async ["get\uD800"](x: number) {
          return x;
        }
      }
      return Svc;
    };
    expect(define).toThrow(/"name".*method name/);
    class Named {
      @cache.cached({ name: "get" })
      async ["get\uD800"](x: number) {
        return x;
      }
    }
    expect(new Named()).toBeDefined();
  });

  test("every derived key passes the rules of keys: lone surrogates in arguments are escaped by JSON", async () => {
    const cache = new LayerCache();
    let calls = 0;
    const f = cache.cached(async function find(..._args: unknown[]) {
      return ++calls;
    });
    const hostile: unknown[][] = [
      ["\uD800"],
      ["\uDBFF", "\uDC00x"],
      [{ ["k\uD800"]: "v\uDFFF", nested: ["\uD83D"] }],
      [new Map([["\uD800", new Set(["\uDC00"])]])],
      ["x".repeat(6000) + "\uD800"], // long strings take another escaping path in the encoder
    ];
    for (const args of hostile) {
      const key = f.cacheKey(...args);
      expect(key.isWellFormed()).toBe(true);
      expect(() => cache.removeLocal(key)).not.toThrow();
    }
    // Two arguments that differ only in their lone surrogate keep two keys (UTF-8 would merge them unescaped).
    expect(f.cacheKey("\uD800")).not.toBe(f.cacheKey("\uDBFF"));
    expect(await f("\uD800")).toBe(1);
    expect(await f("\uDBFF")).toBe(2);
    expect(await f("\uD800")).toBe(1);
  });

  test("fuzz: any name and arguments, any maxKeyLength: the derived key is a valid key", () => {
    const caches = new Map<number, LayerCache>();
    const cacheFor = (max: number) => caches.get(max) ?? caches.set(max, new LayerCache({ maxKeyLength: max, prefix: "p" })).get(max)!;
    const name = fc.string({ unit: "binary", minLength: 1, maxLength: 80 }).filter((n) => n.isWellFormed());
    const args = fc.array(fc.anything({ stringUnit: "binary", withMap: true, withSet: true, withDate: true, withBigInt: true, withNullPrototype: true }), { maxLength: 4 });
    fc.assert(
      fc.property(name, args, fc.integer({ min: 1, max: 200 }), (n, a, max) => {
        const cache = cacheFor(max);
        const f = cache.cached(async (..._x: unknown[]) => 1, { name: n });
        let key: string;
        try {
          key = f.cacheKey(...a);
        } catch (error) {
          expect(error).toBeInstanceOf(TypeError); // an argument that has no key (none expected here)
          return;
        }
        expect(isKey(key, max)).toBe(true);
        expect(() => cache.removeLocal(key)).not.toThrow();
        expect(f.cacheKey(...a)).toBe(key);
      }),
      { numRuns: 500 },
    );
  });
});

describe("shortened derived keys fit maxKeyLength (issue 6)", () => {
  const longName = "fetchTheCustomerAccountSummaryById";

  test("the reported case: maxKeyLength 32, a 34-character name", async () => {
    const cache = new LayerCache({ maxKeyLength: 32 });
    let calls = 0;
    const f = cache.cached(
      { async fetchTheCustomerAccountSummaryById(id: string) { return `${id}${++calls}`; } }.fetchTheCustomerAccountSummaryById,
    );
    const key = f.cacheKey("a");
    expect(key.length).toBeLessThanOrEqual(32); // was 79
    expect(await f("a")).toBe("a1");
    await cache.remove(key); // rejected with a TypeError before the fix
    expect(await f("a")).toBe("a2");
    await f.removeCached("a");
    expect(await f("a")).toBe("a3");
  });

  test("for every maxKeyLength 1..200 and many name lengths: fits, and remove(cacheKey(x)) is removeCached(x)", async () => {
    const names = [1, 2, 10, 30, 41, 43, 44, 45, 46, 60, 150, 199, 200, 201, 400].map((n) => "n".repeat(n - 1) + "z");
    const argsList: unknown[][] = [["a"], ["x".repeat(300)], [{ id: 1, tags: new Set(["t"]) }]];
    for (let max = 1; max <= 200; max++) {
      const cache = new LayerCache({ maxKeyLength: max, prefix: "p" });
      for (const name of names) {
        let calls = 0;
        const f = cache.cached(async (..._a: unknown[]) => ++calls, { name });
        for (const args of argsList) {
          // Below ~12 characters, keys of different arguments may share the few hash characters left.
          cache.clearMemory();
          const key = f.cacheKey(...args);
          expect(isKey(key, max), `max ${max}, name length ${name.length}: ${key}`).toBe(true);
          expect(f.cacheKey(...args)).toBe(key); // stable
          const before = calls;
          await f(...args);
          expect(calls).toBe(before + 1);
          await f(...args);
          expect(calls).toBe(before + 1);
          await cache.remove(key);
          await f(...args);
          expect(calls).toBe(before + 2);
          await f.removeCached(...args);
          expect(await cache.get(key)).toBeUndefined();
          await f(...args);
          expect(calls).toBe(before + 3);
        }
      }
    }
  });

  test("the forms: name:[args] when it fits, then name:#hash, then a cut name, then the hash alone", () => {
    const h = "[A-Za-z0-9_-]";
    expect(deriveKey("f", ["a"], 1024)).toBe('f:["a"]');
    expect(deriveKey("f", ["x".repeat(100)], 60)).toMatch(new RegExp(`^f:#${h}{43}$`));
    const cut = deriveKey(longName, ["a".repeat(30)], 60);
    expect(cut).toMatch(new RegExp(`^fetchTheCustome:#${h}{43}$`));
    expect(cut).toHaveLength(60);
    const k = (max: number) => deriveKey(longName, ["a"], max); // 40 characters unshortened
    expect(k(40)).toBe('fetchTheCustomerAccountSummaryById:["a"]');
    expect(k(39)).toMatch(new RegExp(`^${h}{39}$`));
    expect(deriveKey("f", ["a".repeat(50)], 46)).toMatch(new RegExp(`^f:#${h}{43}$`));
    expect(deriveKey(longName, ["a".repeat(50)], 46)).toMatch(new RegExp(`^f:#${h}{43}$`));
    expect(deriveKey(longName, ["a".repeat(50)], 45)).toMatch(new RegExp(`^${h}{43}$`));
    expect(k(32)).toMatch(new RegExp(`^${h}{32}$`));
    expect(k(1)).toMatch(new RegExp(`^${h}$`));
    // The hash alone is the same hash, cut; the cut name form carries it whole.
    expect(k(39).startsWith(k(32))).toBe(true);
  });

  test("two long names sharing a prefix (or one name a prefix of the other) never share a key", () => {
    const other = "fetchTheCustomerAccountSummaryByEmail";
    for (let max = 12; max <= 200; max++) {
      for (const args of [["a"], ["x".repeat(200)]]) {
        expect(deriveKey(longName, args, max)).not.toBe(deriveKey(other, args, max));
        expect(deriveKey(longName, args, max)).not.toBe(deriveKey(longName.slice(0, 20), args, max));
        expect(deriveKey(longName, args, max)).not.toBe(deriveKey(longName, ["b"], max));
      }
    }
    // A name of exactly the cut length does not meet the cut form of a longer one.
    expect(deriveKey("fetchTheCustome", ["a".repeat(50)], 60)).not.toBe(deriveKey(longName, ["a".repeat(50)], 60));
  });

  test("a name is never cut inside a surrogate pair", () => {
    const name = "ab\u{1F4B0}".repeat(30);
    for (let max = 1; max <= 200; max++) {
      const key = deriveKey(name, ["a"], max);
      expect(isKey(key, max), `max ${max}: ${key}`).toBe(true);
    }
  });
});
