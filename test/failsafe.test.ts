import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, LoadTimeoutError } from "../src/index.js";
import { deferred, flush } from "./support/helpers.js";

const fail = (msg = "backend down") => async (): Promise<never> => {
  throw new Error(msg);
};

describe("fail-safe (SPEC 4.3)", () => {
  test("a failed load returns a value no older than ttl + failSafe instead of the error", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m", failSafe: "5m" });
    const events: string[] = [];
    cache.on("staleHit", (e) => events.push(e.reason));
    await cache.getOrSet("k", async () => "v1");
    clock.advance(60_000 + 299_999); // just inside ttl + failSafe
    expect(await cache.getOrSet("k", fail())).toBe("v1");
    expect(events).toEqual(["failSafe"]);
    expect(cache.stats().failSafeHits).toBe(1);
  });

  test("past ttl + failSafe the error reaches the caller", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m", failSafe: "5m" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(360_000);
    await expect(cache.getOrSet("k", fail("down"))).rejects.toThrow("down");
  });

  test("failSafe: 0 turns it off", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m", failSafe: 0 });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(61_000);
    await expect(cache.getOrSet("k", fail("down"))).rejects.toThrow("down");
  });

  test("the fallback is kept for a short throttle: a down backend is not called on every read", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m", refreshCooldown: "30s" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(61_000);
    let calls = 0;
    const failing = async (): Promise<string> => {
      calls++;
      throw new Error("down");
    };
    expect(await cache.getOrSet("k", failing)).toBe("v1");
    expect(await cache.getOrSet("k", failing)).toBe("v1");
    clock.advance(29_999);
    expect(await cache.getOrSet("k", failing)).toBe("v1");
    expect(calls).toBe(1);
    clock.advance(1); // throttle over: tried again
    expect(await cache.getOrSet("k", async () => "v2")).toBe("v2");
  });

  test("the throttle never serves beyond ttl + failSafe", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m", failSafe: "10s", refreshCooldown: "1h" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(65_000);
    expect(await cache.getOrSet("k", fail())).toBe("v1");
    clock.advance(5_000); // t = 70 s = ttl + failSafe
    await expect(cache.getOrSet("k", fail("gone"))).rejects.toThrow("gone");
  });

  test("a set or remove ends the throttle", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1m" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(61_000);
    expect(await cache.getOrSet("k", fail())).toBe("v1");
    await cache.remove("k");
    expect(await cache.getOrSet("k", async () => "v2")).toBe("v2");
  });
});

describe("hardTimeout (SPEC 3, 4.3)", () => {
  test("the loader's signal is aborted and the load fails with LoadTimeoutError", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, hardTimeout: "5s" });
    let signal: AbortSignal | undefined;
    const p = cache.getOrSet("k", ({ signal: s }) => {
      signal = s;
      return new Promise<string>(() => {});
    });
    await flush();
    clock.advance(4_999);
    expect(signal!.aborted).toBe(false);
    clock.advance(1);
    expect(signal!.aborted).toBe(true);
    expect(signal!.reason).toBeInstanceOf(LoadTimeoutError);
    await expect(p).rejects.toBeInstanceOf(LoadTimeoutError);
  });

  test("a timed-out load falls back to the fail-safe value", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", hardTimeout: "2s" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(1_500);
    const p = cache.getOrSet("k", () => new Promise<string>(() => {}));
    await flush();
    clock.advance(2_000);
    expect(await p).toBe("v1");
  });

  test("default hardTimeout is 5 s; 0 turns it off", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock });
    const slow = deferred<string>();
    const p = cache.getOrSet("a", () => new Promise<string>(() => {}));
    const q = cache.getOrSet("b", () => slow.promise, { hardTimeout: 0 });
    await flush();
    clock.advance(5_000);
    await expect(p).rejects.toBeInstanceOf(LoadTimeoutError);
    clock.advance(60_000);
    slow.resolve("late but fine");
    expect(await q).toBe("late but fine");
  });

  test("a cached function is timed out the same way", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, hardTimeout: "1s" });
    const slow = cache.cached(async function slow(): Promise<string> {
      return new Promise<string>(() => {});
    });
    const p = slow();
    await flush();
    clock.advance(1_000);
    await expect(p).rejects.toBeInstanceOf(LoadTimeoutError);
  });
});

describe("softTimeout (SPEC 3, 4.3)", () => {
  test("with a stale value, it is returned once the loader has run softTimeout; the load goes on and writes back", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", softTimeout: "100ms" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(2_000);
    const slow = deferred<string>();
    const p = cache.getOrSet("k", () => slow.promise);
    await flush();
    clock.advance(100);
    expect(await p).toBe("v1");
    slow.resolve("v2");
    await flush();
    expect(await cache.get("k")).toBe("v2");
  });

  test("without a stale value the caller waits for the loader", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, softTimeout: "100ms" });
    const slow = deferred<string>();
    let done = false;
    const p = cache.getOrSet("k", () => slow.promise).then((v) => {
      done = true;
      return v;
    });
    await flush();
    clock.advance(1_000);
    await flush();
    expect(done).toBe(false);
    slow.resolve("v1");
    expect(await p).toBe("v1");
  });

  test("a load that fails after the soft timeout answered keeps the fallback and logs", async () => {
    const clock = new FakeClock(0);
    const warnings: unknown[] = [];
    const cache = new LayerCache({ clock, ttl: "1s", softTimeout: "100ms", logger: { warn: (f: object) => warnings.push(f) } });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(2_000);
    const slow = deferred<string>();
    const p = cache.getOrSet("k", () => slow.promise);
    await flush();
    clock.advance(100);
    expect(await p).toBe("v1");
    slow.reject(new Error("late failure"));
    await flush();
    expect(warnings.length).toBe(1);
  });
});

describe("the loader's signal", () => {
  test("a loader that looks at its signal only after the hard timeout finds it aborted", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, hardTimeout: "1s" });
    const gate = deferred<void>();
    let seen: AbortSignal | undefined;
    const p = cache.getOrSet("k", async (ctx) => {
      await gate.promise;
      seen = ctx.signal;
      return "late";
    });
    await flush();
    clock.advance(1_000);
    await expect(p).rejects.toBeInstanceOf(LoadTimeoutError);
    gate.resolve();
    await flush();
    expect(seen?.aborted).toBe(true);
    expect(seen?.reason).toBeInstanceOf(LoadTimeoutError);
  });
});
