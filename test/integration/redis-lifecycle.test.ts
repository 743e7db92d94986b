import { spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { afterEach, describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus } from "../../src/index.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { RedisServer } from "../support/servers.js";
import { MapStore } from "../support/map-store.js";
import { flush } from "../support/helpers.js";
import { BUS_KINDS, type BusKind } from "../support/redis-clients.js";

const root = resolve(import.meta.dirname, "..", "..");
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

/** Runs a close scenario in its own process (on the `bus` kind); resolves with its exit code once it exits by itself. */
function runScenario(name: string, url: string, onReady?: () => Promise<void>, bus: BusKind = "pubsub"): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(root, "test/support/close-scenario.ts"), name, url, bus], { cwd: root, stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", async (d) => {
    out += d.toString();
    if (onReady && out.includes("ready")) {
      const go = onReady;
      onReady = undefined;
      await go();
      child.stdin.end("go\n");
    }
  });
  const killer = setTimeout(() => child.kill("SIGKILL"), 40_000);
  return new Promise((resolve) =>
    child.on("exit", (code) => {
      clearTimeout(killer);
      resolve({ code, out });
    }),
  );
}

describe.each(BUS_KINDS)("close() releases what the cache opened (%s bus)", (bus) => {
  test("when close() is called while the connections are still opening", async () => {
    const server = await RedisServer.start();
    cleanup.push(() => server.stop());
    const r = await runScenario("close-while-opening", server.url, undefined, bus);
    expect(r).toEqual({ code: 0, out: "closed\n" });
  }, 60_000);

  test("after Redis died and the breaker opened", async () => {
    const server = await RedisServer.start();
    cleanup.push(() => server.stop());
    const r = await runScenario("close-after-breaker-opened", server.url, () => server.kill("SIGKILL"), bus);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/closed/);
  }, 60_000);

  test("while Redis hangs (SIGSTOP)", async () => {
    const server = await RedisServer.start();
    cleanup.push(() => server.stop());
    const r = await runScenario("close-while-hung", server.url, async () => server.pause(), bus);
    server.resume();
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/closed/);
  }, 60_000);
});

describe("L2 writes that could not land", () => {
  /** Two instances on one store, each with its own way to fail and its own clock. */
  function twoOnOneStore() {
    const clockA = new FakeClock(1_000_000);
    const clockB = new FakeClock(1_000_000 - 50); // B's clock runs 50 ms behind A's
    const shared = new MapStore(() => clockA.now());
    const viaA = Object.assign(Object.create(shared) as MapStore, { failing: false });
    viaA.get = async (k: string) => {
      if (viaA.failing) throw new Error("A cannot reach L2");
      return shared.get(k);
    };
    viaA.set = async (...args: Parameters<MapStore["set"]>) => {
      if (viaA.failing) throw new Error("A cannot reach L2");
      return shared.set(...args);
    };
    const bus = new MemoryBus();
    const a = new LayerCache({ clock: clockA, l2: viaA, bus });
    const b = new LayerCache({ clock: clockB, l2: shared, bus });
    return { clockA, clockB, shared, viaA, a, b };
  }

  test("a set that missed L2 is retried as a removal and never resurrects after a peer's remove", async () => {
    const { clockA, clockB, viaA, a, b } = twoOnOneStore();
    await Promise.all([a.ready(), b.ready()]);
    viaA.failing = true;
    await a.set("k", "set-by-a-during-outage");
    expect(a.stats().l2Pending).toBe(1);
    await b.set("k", "newer-by-b");
    await b.remove("k");
    clockA.advance(61_000); // tombstones have expired by now
    clockB.advance(61_000);
    viaA.failing = false;
    await clockA.advanceAsync(5_000); // the retry runs
    expect(a.stats().l2Pending).toBe(0);
    b.clearMemory();
    expect(await b.get("k")).toBeUndefined();
    expect(await b.getOrSet("k", async () => "from the database")).toBe("from the database");
  });

  test("a load's write-back that missed L2 is not retried (it is only a copy)", async () => {
    const { viaA, a } = twoOnOneStore();
    await a.ready();
    viaA.failing = true;
    expect(await a.getOrSet("c", async () => "loaded")).toBe("loaded");
    expect(a.stats().l2Pending).toBe(0);
  });

  test("a remove from an instance whose clock runs behind still lands", async () => {
    const { a, b } = twoOnOneStore();
    await Promise.all([a.ready(), b.ready()]);
    await a.set("k", "v1");
    await b.remove("k"); // B's clock says this happened 50 ms before A's set
    a.clearMemory();
    b.clearMemory();
    expect(await a.get("k")).toBeUndefined();
    expect(await b.get("k")).toBeUndefined();
  });

  test("two sets in the same millisecond: both instances end up with what L2 holds", async () => {
    const clock = new FakeClock(5_000);
    const store = new MapStore(() => clock.now());
    const bus = new MemoryBus();
    const a = new LayerCache({ clock, l2: store, bus });
    const b = new LayerCache({ clock, l2: store, bus });
    await Promise.all([a.ready(), b.ready()]);
    await Promise.all([a.set("k", "from-a"), b.set("k", "from-b")]);
    await flush();
    const inL2 = await a.scope("x").get("never"); // touch nothing; just let messages settle
    void inL2;
    const seen = [await a.get("k"), await b.get("k")];
    expect(seen[0]).toBe(seen[1]);
  });
});

describe("option checks", () => {
  test("a url that is not redis:// is a TypeError naming the option, at construction", () => {
    expect(() => new RedisStore({ url: "http://nope" })).toThrow(/"url"/);
    expect(() => new RedisBus({ url: "localhost:6379" })).toThrow(/"url"/);
    expect(() => new RedisStore({ url: "redis://127.0.0.1:6379" })).not.toThrow();
  });

  test("heartbeat must be positive; unknown options are refused", () => {
    expect(() => new RedisBus({ url: "redis://127.0.0.1:6379", heartbeat: 0 })).toThrow(/"heartbeat"/);
    expect(() => new RedisStore({ url: "redis://127.0.0.1:6379", timeout: "soon" })).toThrow(/"timeout"/);
    expect(() => new RedisStore({ url: "redis://x", bogus: 1 } as never)).toThrow(/"bogus"/);
    expect(() => new RedisStore({} as never)).toThrow(TypeError);
    expect(() => new RedisStore({ client: {} })).toThrow(TypeError);
  });

  test("timeout and circuitBreaker of the store and the bus: parsed, defaulted, and checked", () => {
    const url = "redis://127.0.0.1:6379";
    expect(new RedisStore({ url }).resilience).toEqual({ timeoutMs: 1000, breakerThreshold: 3, breakerCooldownMs: 5000 });
    expect(new RedisBus({ url }).resilience).toEqual({ timeoutMs: 1000, breakerThreshold: 3, breakerCooldownMs: 1000 });
    expect(new RedisBus({ url, timeout: "250ms", circuitBreaker: { threshold: 0, cooldown: "2s" } }).resilience).toEqual({ timeoutMs: 250, breakerThreshold: 0, breakerCooldownMs: 2000 });
    expect(() => new RedisBus({ url, timeout: -1 })).toThrow(/"timeout"/);
    expect(() => new RedisBus({ url, circuitBreaker: { threshold: 1.5 } })).toThrow(/"circuitBreaker.threshold"/);
    expect(() => new RedisBus({ url, circuitBreaker: { cooldown: "later" } })).toThrow(/"circuitBreaker.cooldown"/);
    expect(() => new RedisStore({ url, circuitBreaker: 3 as never })).toThrow(/"circuitBreaker"/);
  });
});
