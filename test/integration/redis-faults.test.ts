import { afterEach, describe, expect, test } from "vitest";
import { Redis } from "ioredis";
import { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { RedisServer } from "../support/servers.js";
import { BUS_KINDS, busOf, eventually, uniquePrefix, type BusKind } from "../support/redis-clients.js";

/**
 * Faults on a real redis-server of the test's own: SIGKILL and restart, SIGSTOP/SIGCONT (a hang),
 * CLIENT KILL of normal connections. Waits are bounded polls; nothing asserts on speed.
 */
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

async function setup(bus: BusKind = "pubsub") {
  const server = await RedisServer.start();
  cleanup.push(() => server.stop());
  const prefix = uniquePrefix();
  const make = () => {
    const client = new Redis(server.url, { maxRetriesPerRequest: 1 });
    client.on("error", () => {});
    cleanup.push(async () => client.disconnect());
    const cache = new LayerCache({
      prefix,
      l2: new RedisStore({ client, timeout: "200ms", circuitBreaker: { threshold: 2, cooldown: "300ms" } }),
      bus: busOf(bus, { client }, { heartbeat: "200ms", timeout: "1s" }),
    });
    cleanup.push(() => cache.close());
    return cache;
  };
  const a = make();
  const b = make();
  await Promise.all([a.ready(), b.ready()]);
  const raw = new Redis(server.url, { maxRetriesPerRequest: 1, lazyConnect: true });
  raw.on("error", () => {});
  cleanup.push(async () => raw.disconnect());
  return { server, prefix, a, b, raw };
}

describe.each(BUS_KINDS)("Redis killed and restarted (%s bus)", (bus) => {
  test("reads fall back to L1 and the loader; writes that missed L2 become removals there, so nobody reads the old value", async () => {
    const { server, prefix, a, b, raw } = await setup(bus);
    const events: string[] = [];
    a.on("l2CircuitOpen", () => events.push("open"));
    a.on("l2CircuitClose", () => events.push("close"));
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");

    await server.kill("SIGKILL");
    expect(await b.get("k")).toBe("v1"); // L1 keeps serving
    expect(await a.getOrSet("fresh", async () => "from-loader")).toBe("from-loader");
    await a.set("k", "v2"); // L1 now; L2 and bus later
    await a.set("gone", "x");
    await a.remove("gone");
    for (let i = 0; i < 5; i++) await a.getOrSet(`miss${i}`, async () => i);
    await eventually(() => events.includes("open"));
    expect(a.stats().l2Pending).toBeGreaterThan(0);
    expect(await a.get("k")).toBe("v2");

    await server.restart();
    await raw.connect();
    await eventually(async () => a.stats().l2Pending === 0 && a.stats().busPending === 0, 15_000);
    expect(events).toContain("close");
    // The set that missed L2 is retried as a removal: a late value could overwrite a newer one.
    expect(await raw.get(`${prefix}::k`)).toMatch(/\|-$/);
    expect(await raw.get(`${prefix}::gone`)).toMatch(/\|-$/);
    // Both instances revalidate once their bus hears again (a peer may have invalidated keys in the
    // gap): b never serves v1 again, and a does not keep serving v2 past the gap unchecked. They
    // reload from the source of truth.
    await eventually(async () => (await a.get("k")) === undefined, 15_000);
    await eventually(async () => (await b.get("k")) === undefined, 15_000);
    expect(await b.getOrSet("k", async () => "v2 from the database")).toBe("v2 from the database");
  }, 60_000);
});

describe("Redis hangs (SIGSTOP) and resumes (SIGCONT)", () => {
  test("no request waits on the hung server beyond the timeout; everything recovers after", async () => {
    const { server, prefix, a, b, raw } = await setup();
    await raw.connect();
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    const deaf: string[] = [];
    b.on("busDisconnect", () => deaf.push("disconnect"));
    b.on("busReconnect", () => deaf.push("reconnect"));

    server.pause();
    try {
      const results = await Promise.all([
        b.get("k"),
        a.getOrSet("other", async () => "loaded"),
        a.getOrSet("other2", async () => "loaded2"),
        a.set("k", "v2"),
        a.remove("x"),
      ]);
      expect(results.slice(0, 3)).toEqual(["v1", "loaded", "loaded2"]);
      await eventually(() => deaf.includes("disconnect"), 10_000); // the heartbeat noticed the silence
    } finally {
      server.resume();
    }
    await eventually(() => deaf.includes("reconnect"), 15_000);
    await eventually(async () => a.stats().l2Pending === 0, 15_000);
    // The hung SET ran after the resume, then the queued removal after it (one connection, in order).
    expect(await raw.get(`${prefix}::k`)).toMatch(/\|-$/);
    await eventually(async () => (await b.get("k")) === undefined, 15_000);
  }, 60_000);
});

describe("a hung server's cost to callers (separate L2 and bus connections, default timeouts)", () => {
  test("each remove waits one timeout (1 s) at most, and the breakers' probes are nobody's request", async () => {
    const server = await RedisServer.start();
    cleanup.push(() => server.stop());
    const cache = new LayerCache({ prefix: uniquePrefix(), l2: new RedisStore({ url: server.url }), bus: new RedisBus({ url: server.url }) });
    cleanup.push(() => cache.close());
    await cache.ready();
    await cache.set("k", 1);
    server.pause();
    const waits: number[] = [];
    try {
      // 8 s of removes, one every 400 ms: before the fix the first ones took L2 timeout + bus
      // timeout (2 s), and every few seconds a breaker's half-open probe was one of them (1 s).
      for (let i = 0; i < 20; i++) {
        const started = performance.now();
        await cache.remove(`k${i}`);
        waits.push(performance.now() - started);
        await new Promise((r) => setTimeout(r, 400));
      }
    } finally {
      server.resume();
    }
    console.log(`remove waits during the hang (ms): ${waits.map((w) => Math.round(w)).join(" ")}`);
    // Bound: one timeout plus generous scheduling slack, well under the two timeouts of before.
    expect(Math.max(...waits), waits.map((w) => Math.round(w)).join(" ")).toBeLessThan(1_800);
    // After the first removes opened the breakers, none waits for a probe.
    expect(waits.slice(6).filter((w) => w > 500), waits.map((w) => Math.round(w)).join(" ")).toEqual([]);
    await eventually(async () => cache.stats().l2Pending === 0 && cache.stats().busPending === 0, 20_000);
  }, 60_000);
});

describe.each(BUS_KINDS)("connections killed (CLIENT KILL TYPE normal, %s bus)", (bus) => {
  test("operations go on and the cache keeps working", async () => {
    const { a, b, raw } = await setup(bus);
    await raw.connect();
    await a.set("k", "v1");
    await raw.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes");
    for (let i = 0; i < 20; i++) await a.getOrSet(`k${i}`, async () => i);
    await eventually(async () => {
      await a.set("k", "v2");
      return (await b.get("k")) === "v2";
    }, 15_000);
  }, 60_000);
});

describe("Redis hangs (SIGSTOP) and resumes, Streams bus", () => {
  test("the heartbeat notices the silence; after the resume the reader catches up instead of repairing", async () => {
    const { server, prefix, a, b, raw } = await setup("streams");
    await raw.connect();
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    await b.getOrSet("held", async () => "b's own");
    const deaf: string[] = [];
    b.on("busDisconnect", () => deaf.push("disconnect"));
    b.on("busReconnect", () => deaf.push("reconnect"));
    b.on("busCaughtUp", () => deaf.push("caughtUp"));

    server.pause();
    try {
      const results = await Promise.all([b.get("k"), a.getOrSet("other", async () => "loaded"), a.set("k", "v2")]);
      expect(results.slice(0, 2)).toEqual(["v1", "loaded"]);
      await eventually(() => deaf.includes("disconnect"), 10_000);
    } finally {
      server.resume();
    }
    await eventually(() => deaf.includes("caughtUp"), 15_000);
    expect(deaf).not.toContain("reconnect");
    await eventually(async () => a.stats().l2Pending === 0 && a.stats().busPending === 0, 15_000);
    expect(await raw.get(`${prefix}::k`)).toMatch(/\|-$/);
    await eventually(async () => (await b.get("k")) === undefined, 15_000);
    expect(await b.get("held")).toBe("b's own"); // no repair: still fresh in L1
  }, 60_000);
});
