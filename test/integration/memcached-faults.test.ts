import { afterEach, describe, expect, test } from "vitest";
import { LayerCache, MemoryBus } from "../../src/index.js";
import { MemcachedClient, MemcachedStore } from "../../src/backends/memcached/index.js";
import { wireKey } from "../../src/backends/memcached/keys.js";
import { MemcachedServer, metaCommands } from "../support/memcached-server.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Faults on a memcached of the test's own: SIGKILL and restart under load, SIGSTOP/SIGCONT (a
 * hang), one of several servers down. Waits are bounded polls; nothing asserts on speed beyond
 * "does not hang" (generous bounds).
 */
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

async function startServer(): Promise<MemcachedServer> {
  const server = await MemcachedServer.start();
  cleanup.push(() => server.stop());
  return server;
}

/** Two caches on `servers` sharing an in-process bus, with short timeouts and a quick breaker. */
async function pair(servers: string | string[]) {
  const prefix = uniquePrefix();
  const bus = new MemoryBus();
  const make = () => {
    const cache = new LayerCache({ prefix, bus, l2: new MemcachedStore({ servers, timeout: "300ms", circuitBreaker: { threshold: 2, cooldown: "300ms" } }) });
    cleanup.push(() => cache.close());
    return cache;
  };
  const [a, b] = [make(), make()];
  await Promise.all([a.ready(), b.ready()]);
  return { prefix, a, b };
}

async function rawGet(address: string, storeKey: string): Promise<string> {
  const k = wireKey(storeKey);
  return metaCommands(address, `mg ${k.token} v${k.base64 ? " b" : ""}\r\n`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("memcached killed and restarted under load", () => {
  test("no call fails; afterwards L2 serves again and holds no value older than the source's", async () => {
    const server = await startServer();
    const { prefix, a, b } = await pair(server.address);
    const db = new Map<string, number>();
    const errors: string[] = [];
    let stop = false;
    let ops = 0;
    // Four workers, each with keys of its own (so each key's operations are sequential), on both caches.
    const work = async (w: number) => {
      for (let i = 0; i < 5000 && !stop; i++) {
        const key = `w${w}:k${i % 5}`;
        const cache = i % 2 === 0 ? a : b;
        const version = (db.get(key) ?? 0) + 1;
        try {
          switch (i % 3) {
            case 0:
              db.set(key, version);
              await cache.set(key, version);
              break;
            case 1:
              db.set(key, version);
              await cache.remove(key);
              break;
            default:
              await cache.getOrSet(key, async () => db.get(key) ?? 0);
          }
        } catch (error) {
          errors.push(String(error));
        }
        ops++;
        await sleep(2);
      }
    };
    const running = Promise.all([0, 1, 2, 3].map(work));
    await sleep(400);
    await server.kill();
    await sleep(700);
    await server.restart();
    await sleep(700);
    stop = true;
    await running;
    expect(errors).toEqual([]);
    expect(ops).toBeGreaterThan(100);
    await eventually(async () => a.stats().l2Pending === 0 && b.stats().l2Pending === 0, 15_000);
    await eventually(async () => {
      await a.set("after", 1);
      return (await rawGet(server.address, `${prefix}::after`)).startsWith("VA");
    }, 15_000);
    // From L2 alone: each key holds its latest value or nothing (a write that missed L2 became a removal), never an older one.
    a.clearMemory();
    for (const [key, version] of db) {
      const got = await a.get(key);
      expect(got === undefined || got === version, `${key}: ${String(got)}, source ${version}`).toBe(true);
    }
  }, 60_000);
});

describe("memcached hangs (SIGSTOP) and resumes (SIGCONT)", () => {
  test("a request on the hung server fails after its timeout; after the resume replies match their requests again", async () => {
    const server = await startServer();
    const client = new MemcachedClient({ servers: server.address, timeout: "300ms" });
    cleanup.push(() => client.close());
    await client.set("k1", "one", 60);
    await client.set("k2", "two", 60);
    await server.paused();
    try {
      const started = Date.now();
      await expect(client.get("k1")).rejects.toThrow(/no reply within 300 ms/);
      await expect(client.set("k1", "uno", 60)).rejects.toThrow(/no reply within 300 ms/);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      server.resume();
    }
    // The abandoned get and set are answered first on the same connection and dropped; the set ran.
    await eventually(async () => (await client.get("k2").catch(() => undefined)) === "two", 10_000);
    expect(await client.get("k1")).toBe("uno");
  }, 30_000);

  test("callers get L1, the loader or a timeout, never a hang; a set that timed out runs first after the resume, then its retried removal", async () => {
    const server = await startServer();
    const { prefix, a, b } = await pair(server.address);
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    await server.paused();
    try {
      const started = Date.now();
      const results = await Promise.all([b.get("k"), a.getOrSet("other", async () => "loaded"), a.set("k", "v2"), a.remove("x")]);
      expect(results.slice(0, 2)).toEqual(["v1", "loaded"]);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      server.resume();
    }
    await eventually(async () => a.stats().l2Pending === 0, 15_000);
    expect(await rawGet(server.address, `${prefix}::k`)).toMatch(/\|-\r\n/); // a tombstone, not v2
    expect(await a.get("k")).toBe("v2"); // a's L1
    expect(await b.get("k")).toBeUndefined(); // b was told to drop v1, and L2 has no v2 to give
    a.clearMemory();
    expect(await a.get("k")).toBeUndefined();
  }, 30_000);
});

describe("one of two servers down", () => {
  test("keys of the live server are still served from L2 (breaker off, one key per read); keys of the dead one go to the loader, without waiting", async () => {
    const [s1, s2] = await Promise.all([startServer(), startServer()]);
    const { prefix, a } = await pair([s1.address, s2.address]);
    const keys = Array.from({ length: 30 }, (_, i) => `k${i}`);
    for (const [i, k] of keys.entries()) await a.set(k, i);
    const onFirst = await Promise.all(keys.map(async (k) => (await rawGet(s1.address, `${prefix}::${k}`)).startsWith("VA")));
    expect(onFirst.filter(Boolean).length).toBeGreaterThan(0);
    expect(onFirst.filter((x) => !x).length).toBeGreaterThan(0);
    await s2.kill();
    // One breaker guards the whole store (and a multi-key read fails as a whole): with it on, a run
    // of failures on the dead server's keys would stop L2 for the live one's too for a while.
    const c = new LayerCache({ prefix, l2: new MemcachedStore({ servers: [s1.address, s2.address], timeout: "300ms", circuitBreaker: { threshold: 0 } }) });
    cleanup.push(() => c.close());
    const started = Date.now();
    const got: unknown[] = [];
    for (const k of keys) got.push(await c.getOrSet(k, async () => "loaded"));
    expect(Date.now() - started).toBeLessThan(5_000);
    for (const [i, v] of got.entries()) expect(v, keys[i]).toBe(onFirst[i] ? i : "loaded");
    await s2.restart();
    await eventually(async () => {
      await c.set("back", 1);
      c.clearMemory();
      return (await c.get("back")) === 1;
    }, 15_000);
  }, 30_000);
});
