import { Writable } from "node:stream";
import { Console } from "node:console";
import pino from "pino";
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, type L2Store } from "../src/index.js";
import { LOG_REPEAT_WINDOW_MS } from "../src/telemetry/logger.js";
import { flush } from "./support/helpers.js";

/** A stream that keeps every line written to it. */
function lineSink(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  let rest = "";
  const stream = new Writable({
    write(chunk, _enc, done) {
      const text = rest + String(chunk);
      const parts = text.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
      done();
    },
  });
  return { stream, lines };
}

/** An L2 whose every call fails, as during an outage (the cache's breaker is on top of it). */
function downStore(): L2Store {
  const fail = () => Promise.reject(Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:6379"), { code: "ECONNREFUSED" }));
  return { get: fail, set: fail };
}

/** n keys loaded, then past their ttl, then read while every refresh fails the same way. */
async function failingRefreshes(cache: LayerCache, clock: FakeClock, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await cache.getOrSet(`k${i}`, async () => i);
  clock.advance(2_000);
  for (let i = 0; i < n; i++) {
    await cache.getOrSet(`k${i}`, async () => {
      throw new Error("database unavailable");
    });
  }
  await flush();
}

describe("logs: one line per event, structured fields, levels per kind of event (SPEC 12)", () => {
  test("pino: one JSON line per event with event, scope, key, operation and error { type, message, code }", async () => {
    const { stream, lines } = lineSink();
    const logger = pino({ level: "debug" }, stream);
    const cache = new LayerCache({ l2: downStore(), logger, ttl: "1s" });
    await cache.scope("users").set("u1", 1).catch(() => {});
    await cache.close();
    await flush();
    const records = lines.map((l) => JSON.parse(l) as Record<string, any>);
    const failure = records.find((r) => r.event === "l2Error")!;
    expect(failure).toMatchObject({ level: 40, event: "l2Error", operation: "set", key: "u1", scope: "users", msg: "layercache: L2 operation failed" });
    expect(failure.error).toEqual({ type: "Error", message: "connect ECONNREFUSED 127.0.0.1:6379", code: "ECONNREFUSED" });
    // Every line is one record: no stack, nothing spread over several lines.
    for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
    expect(lines.join("\n")).not.toMatch(/\n\s+at /);
  });

  test("console: each event is one line of text (message, then the fields as JSON), never an object dump or a stack", async () => {
    const out = lineSink();
    const err = lineSink();
    const logger = new Console({ stdout: out.stream, stderr: err.stream });
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, logger, ttl: "1s", refresh: "background", maxStale: "1h" });
    await failingRefreshes(cache, clock, 1);
    await cache.close();
    await flush();
    const all = [...out.lines, ...err.lines];
    expect(all).toHaveLength(1);
    expect(err.lines[0]).toMatch(/^layercache: background refresh failed; keeping the stale value \{.*\}$/);
    const fields = JSON.parse(err.lines[0]!.slice(err.lines[0]!.indexOf("{")));
    expect(fields).toEqual({ event: "refreshFailure", key: "k0", scope: "", error: { type: "Error", message: "database unavailable" } });
  });

  test("levels: failures warn, an opened breaker is an error, recovery is info", async () => {
    const seen: [string, string][] = [];
    const logger = Object.fromEntries((["debug", "info", "warn", "error"] as const).map((level) => [level, (f: { event: string }) => seen.push([level, f.event])]));
    let down = true;
    const store: L2Store = {
      get: async () => (down ? Promise.reject(new Error("down")) : null),
      set: async () => (down ? Promise.reject(new Error("down")) : true),
    };
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, l2: store, logger });
    for (let i = 0; i < 20; i++) await cache.get(`k${i}`);
    down = false;
    for (let i = 0; i < 10 && !seen.some(([, e]) => e === "l2CircuitClose"); i++) {
      await clock.advanceAsync(30_000);
      await cache.get("probe");
      await flush();
    }
    await cache.close();
    expect(seen).toContainEqual(["warn", "l2Error"]);
    expect(seen).toContainEqual(["error", "l2CircuitOpen"]);
    expect(seen).toContainEqual(["info", "l2CircuitClose"]);
  });
});

describe("logs: repeated identical failures are throttled with a count", () => {
  test("50 identical failures in a window: the first line at once, then one line with repeated: 49", async () => {
    const lines: Record<string, any>[] = [];
    const logger = { warn: (f: object, msg?: string) => lines.push({ ...f, msg }) };
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, logger, ttl: "1s", refresh: "background", maxStale: "1h", refreshCooldown: "1h" });
    await failingRefreshes(cache, clock, 50);
    expect(cache.stats().refreshFailures).toBe(50);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ event: "refreshFailure", key: "k0" });
    clock.advance(LOG_REPEAT_WINDOW_MS);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ event: "refreshFailure", key: "k49", repeated: 49, windowMs: LOG_REPEAT_WINDOW_MS, msg: "layercache: background refresh failed; keeping the stale value (repeated 49 times)" });
    // A window with no repeat ends the throttle: the next failure is written at once.
    clock.advance(LOG_REPEAT_WINDOW_MS);
    expect(lines).toHaveLength(2);
    await cache.close();
  });

  test("a failure that differs (another error) is not held back by another's window; close writes what is still held", async () => {
    const lines: Record<string, any>[] = [];
    const logger = { warn: (f: object, msg?: string) => lines.push({ ...f, msg }) };
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, logger, ttl: "1s", refresh: "background", maxStale: "1h", refreshCooldown: "1h" });
    for (const k of ["a", "b", "c"]) await cache.getOrSet(k, async () => k);
    clock.advance(2_000);
    for (const [k, why] of [["a", "timeout"], ["b", "timeout"], ["c", "refused"]] as const) {
      await cache.getOrSet(k, async () => {
        throw new Error(why);
      });
    }
    await flush();
    expect(lines.map((l) => [l.key, l.error.message])).toEqual([["a", "timeout"], ["c", "refused"]]);
    await cache.close();
    expect(lines.map((l) => [l.key, l.repeated])).toEqual([["a", undefined], ["c", undefined], ["b", 1]]);
    expect(clock.pendingTimers).toBe(0);
  });

  test("a listener that throws is logged as an error line of its own and the read goes on", async () => {
    const lines: Record<string, any>[] = [];
    const cache = new LayerCache({ logger: { error: (f: object) => lines.push(f) } });
    cache.on("miss", () => {
      throw new TypeError("listener bug");
    });
    expect(await cache.get("k")).toBeUndefined();
    expect(lines).toEqual([{ event: "listenerError", listenerOf: "miss", error: { type: "TypeError", message: "listener bug" } }]);
  });
});
