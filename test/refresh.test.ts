import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache } from "../src/index.js";
import { deferred, flush } from "./support/helpers.js";

function setup(extra: Record<string, unknown> = {}) {
  const clock = new FakeClock(0);
  const cache = new LayerCache({ clock, ttl: "10s", refresh: "background", ...extra });
  const events: string[] = [];
  for (const e of ["refreshStart", "refreshSuccess", "refreshFailure", "refreshSkipped", "staleHit"] as const) cache.on(e, () => events.push(e));
  return { clock, cache, events };
}

describe("background refresh (SPEC 4.2)", () => {
  test("inside the stale window the stale value is served at once and one refresh replaces it", async () => {
    const { clock, cache, events } = setup();
    await cache.getOrSet("k", async () => "v1");
    clock.advance(10_000); // t0 + ttl: stale
    const gate = deferred<string>();
    let calls = 0;
    const loader = (): Promise<string> => {
      calls++;
      return gate.promise;
    };
    expect(await cache.getOrSet("k", loader)).toBe("v1");
    expect(await cache.getOrSet("k", loader)).toBe("v1");
    expect(calls).toBe(1);
    gate.resolve("v2");
    await flush();
    expect(await cache.getOrSet("k", loader)).toBe("v2");
    expect(calls).toBe(1);
    expect(events).toEqual(["staleHit", "refreshStart", "staleHit", "refreshSuccess"]);
    expect(cache.stats()).toMatchObject({ staleHits: 2, refreshStarts: 1, refreshSuccesses: 1 });
  });

  test("a successful refresh resets the clocks", async () => {
    const { clock, cache } = setup();
    await cache.getOrSet("k", async () => "v1");
    clock.advance(15_000);
    await cache.getOrSet("k", async () => "v2");
    await flush();
    clock.advance(9_999); // fresh for 10 s from the refresh (t = 15 s)
    expect(await cache.get("k")).toBe("v2");
  });

  test("at t0 + ttl + maxStale a read is a foreground load: no data older than ttl + maxStale is served", async () => {
    const { clock, cache } = setup({ maxStale: "5s" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(14_999);
    const gate = deferred<string>();
    expect(await cache.getOrSet("k", () => gate.promise)).toBe("v1"); // starts a refresh that is still running
    clock.advance(1); // t = 15 s = t0 + ttl + maxStale
    let resolved: unknown;
    // The caller waits: it joins the key's running load (single flight) instead of getting v1.
    const waiting = cache.getOrSet("k", async () => "unused").then((v) => (resolved = v));
    await flush();
    expect(resolved).toBeUndefined();
    gate.resolve("v2");
    await waiting;
    expect(resolved).toBe("v2");
  });

  test("past the stale window with no refresh running, the caller waits for the loader", async () => {
    const { clock, cache } = setup({ maxStale: "5s", failSafe: 0 });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(15_000);
    expect(await cache.getOrSet("k", async () => "v2")).toBe("v2");
  });

  test("the refresh pool is bounded: when full, refreshes are skipped, not queued", async () => {
    const { clock, cache, events } = setup({ refreshConcurrency: 2 });
    for (const k of ["a", "b", "c"]) await cache.getOrSet(k, async () => `${k}1`);
    clock.advance(11_000);
    const gates = [deferred<string>(), deferred<string>(), deferred<string>()];
    let calls = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    const make = (i: number) => async (): Promise<string> => {
      calls++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        return await gates[i]!.promise;
      } finally {
        inFlight--;
      }
    };
    expect(await cache.getOrSet("a", make(0))).toBe("a1");
    expect(await cache.getOrSet("b", make(1))).toBe("b1");
    expect(await cache.getOrSet("c", make(2))).toBe("c1"); // pool full: skipped
    await flush();
    expect(calls).toBe(2);
    expect(cache.stats().refreshSkips).toBe(1);
    expect(events.filter((e) => e === "refreshSkipped")).toHaveLength(1);
    gates[0]!.resolve("a2");
    gates[1]!.resolve("b2");
    await flush();
    expect(cache.stats().refreshing).toBe(0);
    // Nothing was queued for "c": the next read tries again.
    expect(calls).toBe(2);
    gates[2]!.resolve("c2");
    expect(await cache.getOrSet("c", make(2))).toBe("c1");
    await flush();
    expect(calls).toBe(3);
    expect(await cache.get("c")).toBe("c2");
    expect(maxInFlight).toBeLessThanOrEqual(2);
  });

  test("a failed refresh keeps the stale value, emits, and cools the key down", async () => {
    const { clock, cache, events } = setup({ refreshCooldown: "30s", maxStale: "1h" });
    const warnings: unknown[] = [];
    const logged = new LayerCache({ clock, ttl: "10s", refresh: "background", maxStale: "1h", logger: { warn: (f: object) => warnings.push(f) } });
    for (const c of [cache, logged]) await c.getOrSet("k", async () => "v1");
    clock.advance(11_000);
    let calls = 0;
    const failing = async (): Promise<string> => {
      calls++;
      throw new Error("backend down");
    };
    expect(await cache.getOrSet("k", failing)).toBe("v1");
    expect(await logged.getOrSet("k", failing)).toBe("v1");
    await flush();
    expect(warnings.length).toBeGreaterThan(0);
    expect(events).toContain("refreshFailure");
    // In cooldown: stale served, no new attempt.
    clock.advance(29_000);
    expect(await cache.getOrSet("k", failing)).toBe("v1");
    await flush();
    expect(calls).toBe(2);
    expect(events.filter((e) => e === "refreshSkipped")).toHaveLength(1);
    // After the cooldown, the next read tries again.
    clock.advance(1_000);
    expect(await cache.getOrSet("k", async () => "v2")).toBe("v1");
    await flush();
    expect(await cache.get("k")).toBe("v2");
  });

  test("refresh errors never reach the caller; only a foreground load can fail", async () => {
    const { clock, cache } = setup({ failSafe: 0, maxStale: "5s" });
    await cache.getOrSet("k", async () => "v1");
    clock.advance(12_000);
    await expect(cache.getOrSet("k", async () => Promise.reject(new Error("x")))).resolves.toBe("v1");
    await flush();
    clock.advance(10_000); // past the stale window
    await expect(cache.getOrSet("k", async () => Promise.reject(new Error("now it shows")))).rejects.toThrow("now it shows");
  });

  test("refresh counts its own time: a refresh that finishes after a remove does not write back", async () => {
    const { clock, cache } = setup();
    await cache.getOrSet("k", async () => "v1");
    clock.advance(11_000);
    const gate = deferred<string>();
    expect(await cache.getOrSet("k", () => gate.promise)).toBe("v1");
    await cache.remove("k");
    gate.resolve("v2-from-before-remove");
    await flush();
    expect(await cache.get("k")).toBeUndefined();
  });

  test("stale entries count toward maxEntries", async () => {
    const { clock, cache } = setup({ maxEntries: 3 });
    for (const k of ["a", "b", "c"]) await cache.set(k, k);
    clock.advance(11_000);
    await cache.set("d", "d");
    expect(cache.stats().entries).toBe(3);
    expect(cache.stats().evictions).toBe(1);
  });
});

describe("refreshAhead (SPEC 3)", () => {
  test("a read after refreshAhead × ttl starts a background refresh while serving the fresh value", async () => {
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "10s", refreshAhead: 0.8 });
    await cache.getOrSet("k", async () => "v1");
    let calls = 0;
    const loader = async (): Promise<string> => `v${++calls + 1}`;
    clock.advance(7_999);
    expect(await cache.getOrSet("k", loader)).toBe("v1");
    await flush();
    expect(calls).toBe(0);
    clock.advance(1);
    expect(await cache.getOrSet("k", loader)).toBe("v1");
    await flush();
    expect(calls).toBe(1);
    expect(await cache.getOrSet("k", loader)).toBe("v2");
    clock.advance(9_999);
    expect(await cache.get("k")).toBe("v2");
  });
});
