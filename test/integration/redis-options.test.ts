import { describe, expect, test } from "vitest";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";

/**
 * The nested `circuitBreaker` option of RedisStore and RedisBus: a misspelled name is a TypeError
 * naming its full path (it used to be ignored, leaving the default silently in place), and only a
 * plain object is accepted. Constructing does not connect, so no server is needed.
 */
const url = "redis://127.0.0.1:6379";

const classes = [
  ["RedisStore", (cb: unknown) => new RedisStore({ url, circuitBreaker: cb as never })],
  ["RedisBus", (cb: unknown) => new RedisBus({ url, circuitBreaker: cb as never })],
] as const;

describe.each(classes)("%s circuitBreaker", (_name, make) => {
  test.each([
    [{ treshold: 0 }, "circuitBreaker.treshold"],
    [{ coolDown: "10s" }, "circuitBreaker.coolDown"],
    [{ threshold: 2, cooldown: "1s", timeout: "1s" }, "circuitBreaker.timeout"],
    [{ Threshold: 1 }, "circuitBreaker.Threshold"],
  ])("unknown name %o: a TypeError naming %s", (cb, path) => {
    let error: unknown;
    try {
      make(cb);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TypeError);
    expect((error as Error).message).toContain(`"${path}"`);
    expect((error as Error).message).toMatch(/known: threshold, cooldown/);
    expect((error as TypeError & { option: string }).option).toBe(path);
  });

  test.each([
    ["an array", [3]],
    ["a Map", new Map([["threshold", 1]])],
    ["a class instance", new (class Settings { threshold = 1; })()],
    ["a Date", new Date()],
    ["a string", "3"],
    ["a number", 3],
    ["null", null],
  ])("%s is not accepted", (_what, cb) => {
    expect(() => make(cb)).toThrow(TypeError);
    expect(() => make(cb)).toThrow(/"circuitBreaker" must be a plain object/);
  });

  test("plain objects with known names (or none) are accepted", () => {
    expect(make(undefined).resilience).toMatchObject({ breakerThreshold: 3 });
    expect(make({}).resilience).toMatchObject({ breakerThreshold: 3 });
    expect(make({ threshold: 0 }).resilience).toMatchObject({ breakerThreshold: 0 });
    expect(make({ threshold: 5, cooldown: "10s" }).resilience).toMatchObject({ breakerThreshold: 5, breakerCooldownMs: 10_000 });
    expect(make({ threshold: undefined, cooldown: undefined }).resilience).toMatchObject({ breakerThreshold: 3 });
    expect(make(Object.assign(Object.create(null) as object, { threshold: 1 })).resilience).toMatchObject({ breakerThreshold: 1 });
  });
});
