import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache } from "../src/index.js";
import { parseDuration } from "../src/api/options.js";

describe("durations", () => {
  test.each([
    [500, 500],
    ["500ms", 500],
    ["30s", 30_000],
    ["5m", 300_000],
    ["1h", 3_600_000],
    ["1d", 86_400_000],
    ["1.5h", 5_400_000],
    [0, 0],
  ])("%j is %d ms", (input, expected) => {
    expect(parseDuration("ttl", input, true)).toBe(expected);
  });

  test.each([[-1], ["-5s"], ["soon"], [""], [NaN], [null], [{}], [true]])("%j is refused with a TypeError naming the option", (input) => {
    expect(() => new LayerCache({ ttl: input as never })).toThrow(TypeError);
    expect(() => new LayerCache({ ttl: input as never })).toThrow(/"ttl"/);
  });

  test("Infinity is a valid ttl (never expires) but not a valid jitter", () => {
    expect(() => new LayerCache({ ttl: Infinity })).not.toThrow();
    expect(() => new LayerCache({ jitter: Infinity })).toThrow(/"jitter"/);
  });
});

describe("validation at creation", () => {
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ["unknown option", { ttll: "1m" }, /"ttll"/],
    ["refresh value", { refresh: "sometimes" }, /"refresh"/],
    ["background without positive ttl", { refresh: "background", ttl: 0 }, /"refresh"/],
    ["background with infinite ttl", { refresh: "background", ttl: Infinity }, /"refresh"/],
    ["refreshAhead above 1", { refreshAhead: 1.5 }, /"refreshAhead"/],
    ["refreshAhead below 0", { refreshAhead: -0.1 }, /"refreshAhead"/],
    ["refreshAhead as string", { refreshAhead: "0.5" }, /"refreshAhead"/],
    ["negative failSafe", { failSafe: -1 }, /"failSafe"/],
    ["unparsable hardTimeout", { hardTimeout: "fast" }, /"hardTimeout"/],
    ["negative softTimeout", { softTimeout: "-1s" }, /"softTimeout"/],
    ["maxStale", { maxStale: "x" }, /"maxStale"/],
    ["maxEntries zero", { maxEntries: 0 }, /"maxEntries"/],
    ["maxEntries fraction", { maxEntries: 1.5 }, /"maxEntries"/],
    ["maxBytes negative", { maxBytes: -1 }, /"maxBytes"/],
    ["prefix empty", { prefix: "" }, /"prefix"/],
    ["refreshConcurrency zero", { refreshConcurrency: 0 }, /"refreshConcurrency"/],
    ["refreshCooldown", { refreshCooldown: "later" }, /"refreshCooldown"/],
    ["maxKeyLength", { maxKeyLength: -3 }, /"maxKeyLength"/],
    ["maxValueBytes", { maxValueBytes: "1mb" }, /"maxValueBytes"/],
    ["serializer", { serializer: { serialize: () => "" } }, /"serializer"/],
    ["clock", { clock: {} }, /"clock"/],
    ["busSecret", { busSecret: "" }, /"busSecret"/],
    ["l2", { l2: {} }, /"l2"/],
    ["bus", { bus: {} }, /"bus"/],
  ];
  test.each(bad)("cache: %s", (_name, options, message) => {
    expect(() => new LayerCache(options as never)).toThrow(TypeError);
    expect(() => new LayerCache(options as never)).toThrow(message);
  });

  test("scope options are checked when the scope is created", () => {
    const cache = new LayerCache();
    expect(() => cache.scope("s", { ttl: "nope" })).toThrow(/"ttl"/);
    expect(() => cache.scope("s", { l2: {} } as never)).toThrow(/"l2".*cache-level/);
    expect(() => cache.scope("s", { refresh: "background", ttl: 0 })).toThrow(TypeError);
    expect(() => cache.scope("s", { bogus: 1 } as never)).toThrow(/"bogus"/);
  });

  test("cached-function options are checked when it is created", () => {
    const cache = new LayerCache();
    const fn = async function f() {
      return 1;
    };
    expect(() => cache.cached(fn, { ttl: -5 })).toThrow(/"ttl"/);
    expect(() => cache.cached(fn, { maxEntries: 5 } as never)).toThrow(/"maxEntries"/);
    expect(() => cache.cached(fn, { key: "k" } as never)).toThrow(/"key"/);
    expect(() => cache.cached(fn, { refreshAhead: 2 })).toThrow(/"refreshAhead"/);
  });

  test("inherited settings are checked together: a scope that turns on background with the cache's infinite ttl fails", () => {
    const cache = new LayerCache({ ttl: Infinity });
    expect(() => cache.scope("s", { refresh: "background" })).toThrow(/"refresh"/);
    expect(() => cache.scope("s", { refresh: "background", ttl: "1m" })).not.toThrow();
  });

  test("a bad per-call option rejects that call only", async () => {
    const cache = new LayerCache();
    await expect(cache.getOrSet("k", () => 1, { ttl: "bad" })).rejects.toThrow(/"ttl"/);
    await expect(cache.set("k", 1, { maxEntries: 3 } as never)).rejects.toThrow(TypeError);
    expect(await cache.getOrSet("k", () => 2)).toBe(2);
  });

  test("options: undefined fields mean 'inherit'; non-object options are refused", () => {
    expect(() => new LayerCache({ ttl: undefined })).not.toThrow();
    expect(() => new LayerCache("1m" as never)).toThrow(TypeError);
  });
});

describe("field-by-field inheritance: cache → scope → cached function → call", () => {
  test("each level overrides only what it sets", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "10s", failSafe: 0 });
    const scope = cache.scope("s", { ttl: "20s" });
    let n = 0;
    const fn = scope.cached(async function compute() {
      return ++n;
    });
    const fnShort = scope.cached(async function computeShort() {
      return ++n;
    }, { ttl: "5s" });

    await scope.getOrSet("a", async () => ++n); // ttl 20s from the scope
    await cache.getOrSet("b", async () => ++n); // ttl 10s from the cache
    await scope.getOrSet("c", async () => ++n, { ttl: "1s" }); // call wins
    await fn(); // 20s
    await fnShort(); // 5s
    clock.advance(1_000);
    expect(await scope.get("c")).toBeUndefined();
    expect(await scope.get("a")).toBe(1);
    clock.advance(4_000); // t = 5s
    expect(await scope.get(fnShort.cacheKey())).toBeUndefined();
    expect(await scope.get(fn.cacheKey())).toBe(4);
    clock.advance(5_000); // t = 10s
    expect(await cache.get("b")).toBeUndefined();
    expect(await scope.get("a")).toBe(1);
    clock.advance(10_000); // t = 20s
    expect(await scope.get("a")).toBeUndefined();
  });

  test("nested scopes inherit from their parent scope", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "10s" });
    const inner = cache.scope("outer", { ttl: "1h" }).scope("inner");
    await inner.set("k", 1);
    clock.advance(60_000);
    expect(await inner.get("k")).toBe(1);
  });

  test("maxStale defaults to the effective ttl of the level that resolves it", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background" });
    const scope = cache.scope("s", { ttl: "10s" }); // maxStale = 10s here
    await scope.getOrSet("k", async () => "old");
    clock.advance(15_000); // stale, inside 10s + 10s
    let calls = 0;
    const v = await scope.getOrSet("k", async () => {
      calls++;
      return "new";
    });
    expect(v).toBe("old");
  });
});
