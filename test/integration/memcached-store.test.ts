import { afterAll, afterEach, describe, expect, inject, test } from "vitest";
import { LayerCache, MemoryBus } from "../../src/index.js";
import { MemcachedClient, MemcachedStore } from "../../src/backends/memcached/index.js";
import { exptime } from "../../src/backends/memcached/ttl.js";
import { wireKey } from "../../src/backends/memcached/keys.js";
import { encodeRecord } from "../../src/l2/envelope.js";
import { MemcachedServer, metaCommands } from "../support/memcached-server.js";
import { uniquePrefix } from "../support/redis-clients.js";

/**
 * MemcachedStore on a real memcached: what the contract suite does not say — Memcached's TTL
 * rules, keys Memcached cannot take as they are, items over its size limit, several servers, and
 * the options.
 */
const servers = inject("memcachedServer");
const DAY = 24 * 3600_000;
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

/** Two caches sharing one memcached (`servers`) and one in-process bus, with everything that went wrong collected. */
async function pair(options: { servers?: string | string[]; maxItemSize?: number; maxValueBytes?: number } = {}) {
  const prefix = uniquePrefix();
  const bus = new MemoryBus();
  const problems: string[] = [];
  const make = () => {
    const cache = new LayerCache({
      prefix,
      bus,
      l2: new MemcachedStore({ servers: options.servers ?? servers, ...(options.maxItemSize ? { maxItemSize: options.maxItemSize } : {}) }),
      ...(options.maxValueBytes ? { maxValueBytes: options.maxValueBytes } : {}),
    });
    cache.on("l2Error", (e) => problems.push(`l2Error ${e.operation}: ${String(e.error)}`));
    cache.on("l2CircuitOpen", () => problems.push("l2CircuitOpen"));
    cache.on("l2Corrupt", (e) => problems.push(`l2Corrupt ${e.key}`));
    cleanup.push(() => cache.close());
    return cache;
  };
  const [a, b] = [make(), make()];
  await Promise.all([a.ready(), b.ready()]);
  return { prefix, a, b, problems };
}

/** The record stored under a cache key of the root scope, read with raw meta commands (`flags` added). */
async function rawRecord(address: string, storeKey: string, flags = ""): Promise<string> {
  const k = wireKey(storeKey);
  return metaCommands(address, `mg ${k.token} v${flags}${k.base64 ? " b" : ""}\r\n`);
}

describe("lifetimes in Memcached's units", () => {
  test("milliseconds become whole seconds rounded up plus one (never 0, which is 'never'); over 30 days a Unix time; Infinity 0", () => {
    const now = Date.UTC(2026, 0, 1);
    const nowS = now / 1000;
    expect(exptime(1, now)).toBe(2);
    expect(exptime(0.4, now)).toBe(2);
    expect(exptime(999, now)).toBe(2);
    expect(exptime(1000, now)).toBe(2);
    expect(exptime(1001, now)).toBe(3);
    expect(exptime(2 * 60_000 + 0.5, now)).toBe(122);
    expect(exptime(30 * DAY - 1000, now)).toBe(30 * 24 * 3600); // the last relative value
    expect(exptime(30 * DAY, now)).toBe(nowS + 30 * 24 * 3600 + 1); // one more second: absolute
    expect(exptime(400 * DAY, now)).toBe(nowS + 400 * 24 * 3600 + 1);
    expect(exptime(Infinity, now)).toBe(0);
    // Past what a signed 32-bit Unix time holds (2038): kept forever rather than cut short.
    expect(exptime(20 * 365 * DAY, now)).toBe(0);
  });

  test("a record with a ttl over 30 days lives that long on the server (not a 1970 date that expires it at once)", async () => {
    const { prefix, a, b, problems } = await pair();
    await a.set("31d", "month", { ttl: "31d", failSafe: 0 });
    await a.set("400d", "year", { ttl: "400d", failSafe: 0 });
    await a.set("2s", "short", { ttl: 1500, maxStale: 0, failSafe: 0 });
    expect(await b.get("31d")).toBe("month");
    expect(await b.get("400d")).toBe("year");
    for (const key of ["31d", "400d"]) {
      // The physical lifetime is the longest window: ttl + maxStale + failSafe, as the record says.
      const reply = await rawRecord(servers, `${prefix}::${key}`, " t");
      const [ttl, maxStale, failSafe] = /^LC1\|[^|]+\|\d+\|(\d+)\|(\d+)\|(\d+)\|/m.exec(reply)!.slice(1).map(Number) as [number, number, number];
      const lifetime = (ttl + maxStale + failSafe) / 1000;
      expect(lifetime).toBeGreaterThan(30 * 24 * 3600);
      const left = Number(/ t(\d+)/.exec(reply)?.[1]);
      expect(left, reply).toBeGreaterThanOrEqual(lifetime - 60);
      expect(left, reply).toBeLessThanOrEqual(lifetime + 60);
    }
    const short = Number(/ t(\d+)/.exec(await rawRecord(servers, `${prefix}::2s`, " t"))?.[1]);
    expect(short).toBeGreaterThanOrEqual(2); // 1.5 s is never cut to 1 s (nor to 0: "never")
    expect(problems).toEqual([]);
  });
});

describe("keys Memcached cannot take as they are", () => {
  const KEYS = [
    "plain",
    "with space",
    "line\nbreak\ttab\r\u0000nul",
    "ünïcødé 键 🔑",
    "é".repeat(90), // 180 bytes: base64
    "é".repeat(120), // 240 bytes: over base64's room, a digest
    "🔑".repeat(60) + "x", // 241 bytes, after the prefix over 250: hashed by the cache
    "x".repeat(1000), // hashed by the cache
    "x".repeat(999) + "y", // differs from the previous one only at its end
    "YSBi", // the base64 of "a b": another key
    "a b",
  ];

  test("every key is shared by two instances, removed across them, and distinct from the others", async () => {
    const { a, b, problems } = await pair();
    for (const [i, key] of KEYS.entries()) await a.set(key, i);
    for (const [i, key] of KEYS.entries()) expect(await b.get(key), JSON.stringify(key)).toBe(i);
    for (const key of KEYS.filter((_, i) => i % 2 === 0)) await b.remove(key);
    for (const [i, key] of KEYS.entries()) expect(await a.get(key), JSON.stringify(key)).toBe(i % 2 === 0 ? undefined : i);
    // Read from L2 alone, as a fresh instance would.
    a.clearMemory();
    expect(await Promise.all(KEYS.map((k) => a.get(k)))).toEqual(KEYS.map((_, i) => (i % 2 === 0 ? undefined : i)));
    expect(problems).toEqual([]);
  });

  test("a key with a lone surrogate (the cache refuses them; a store may be used alone) has its own item", async () => {
    const store = new MemcachedStore({ servers });
    cleanup.push(() => store.close());
    const rec = (n: string) => encodeRecord("g1", { born: 1, ttl: 60_000, maxStale: 0, failSafe: 0 }, n);
    const [lone, replaced] = ["k\uD800", "k\uFFFD"];
    await store.set(lone, rec("lone"), 60_000);
    await store.set(replaced, rec("replaced"), 60_000);
    expect(await store.get(lone)).toBe(rec("lone"));
    expect(await store.get(replaced)).toBe(rec("replaced"));
  });
});

describe("items over Memcached's size limit", () => {
  test("a value over the item limit stays in L1 with a valueTooLarge event, no L2 error; one under it is shared", async () => {
    const { a, b, problems } = await pair({ maxValueBytes: 4 * 1024 * 1024 });
    const tooLarge: number[] = [];
    a.on("valueTooLarge", (e) => tooLarge.push(e.bytes));
    const big = "x".repeat(1024 * 1024);
    const fits = "y".repeat(1024 * 1024 - 1024);
    await a.set("big", big);
    await a.set("fits", fits);
    expect(await a.get("big")).toBe(big);
    expect(await b.get("big")).toBeUndefined();
    expect(await b.get("fits")).toBe(fits);
    expect(tooLarge).toHaveLength(1);
    expect(problems).toEqual([]);
  });

  test("with a server started with -I 2m and maxItemSize 2 MiB, a 1.5 MiB value is shared", async () => {
    const server = await MemcachedServer.start({ maxItemSize: "2m" });
    cleanup.push(() => server.stop());
    const { a, b, problems } = await pair({ servers: server.address, maxItemSize: 2 * 1024 * 1024, maxValueBytes: 4 * 1024 * 1024 });
    const value = "z".repeat(1.5 * 1024 * 1024);
    await a.set("k", value);
    expect(await b.get("k")).toBe(value);
    expect(problems).toEqual([]);
  });

  test("a maxItemSize larger than the server's: the refused record is an error of that write alone, the breaker stays closed", async () => {
    const { a, b, problems } = await pair({ maxItemSize: 2 * 1024 * 1024, maxValueBytes: 4 * 1024 * 1024 });
    await a.set("small", "before");
    await a.set("k", "old");
    await a.set("k", "x".repeat(1.5 * 1024 * 1024)); // refused by the server: the old record becomes a tombstone
    expect(problems.filter((p) => p.startsWith("l2Error"))).toHaveLength(1);
    expect(problems).not.toContain("l2CircuitOpen");
    expect(await b.get("k")).toBeUndefined(); // never the old value
    expect(await b.get("small")).toBe("before");
  });
});

describe("several servers", () => {
  const extra: MemcachedServer[] = [];
  afterAll(async () => {
    await Promise.all(extra.map((s) => s.stop()));
  });

  test("keys spread over every server, each key on one; an instance listing the servers in another order finds them", async () => {
    extra.push(...(await Promise.all([MemcachedServer.start(), MemcachedServer.start()])));
    const all = [servers, ...extra.map((s) => s.address)];
    const { prefix, a, problems } = await pair({ servers: all });
    const keys = Array.from({ length: 120 }, (_, i) => `k${i}`);
    await Promise.all(keys.map((k, i) => a.set(k, i)));
    const holders = await Promise.all(
      all.map(async (address) => {
        const held = await Promise.all(keys.map(async (k) => (await rawRecord(address, `${prefix}::${k}`)).startsWith("VA")));
        return held.filter(Boolean).length;
      }),
    );
    for (const n of holders) expect(n).toBeGreaterThan(10);
    expect(holders.reduce((x, y) => x + y)).toBe(keys.length);
    const other = new LayerCache({ prefix, l2: new MemcachedStore({ servers: [...all].reverse().join(",") }) });
    cleanup.push(() => other.close());
    expect(await Promise.all(keys.map((k) => other.get(k)))).toEqual(keys.map((_, i) => i));
    expect(problems).toEqual([]);
  });
});

describe("options", () => {
  test("bad options are a TypeError naming the option", () => {
    const bad: [unknown, RegExp][] = [
      [{ servers, url: "memcached://x" }, /"url" is not a MemcachedStore option/],
      [{}, /"client" or `servers` must be given/],
      [{ servers, client: new MemcachedClient({ servers }) }, /"client" or `servers` must be given/],
      [{ client: {} }, /"client" must be a MemcachedClient/],
      [{ servers: [] }, /"servers" must be/],
      [{ servers: "host:port:x" }, /"servers" has "host:port:x"/],
      [{ servers: "h:70000" }, /"servers" has/],
      [{ servers: ["a:1", "a:1"] }, /"servers" names a:1 twice/],
      [{ servers: [1] }, /"servers" must be "host:port" strings or \{ host, port \}/],
      [{ servers: [{ host: "a", port: "1" }] }, /"servers" has \{ host: "a", port: "1" \}/],
      [{ servers: [{ host: "a", prot: 1 }] }, /"servers\[\].prot" is not a server option/],
      [{ servers, maxItemSize: 100 }, /"maxItemSize" must be/],
      [{ servers, timeout: -1 }, /"timeout"/],
      [{ servers, circuitBreaker: { treshold: 1 } }, /"circuitBreaker.treshold"/],
      [null, /needs options/],
    ];
    for (const [options, message] of bad) expect(() => new MemcachedStore(options as never), JSON.stringify(options)).toThrow(message);
    for (const [options, message] of bad) expect(() => new MemcachedStore(options as never)).toThrow(TypeError);
    expect(() => new MemcachedClient({ servers, retries: 1 } as never)).toThrow(/"retries" is not a MemcachedClient option/);
  });

  test("accepted forms of servers, and the limits declared", () => {
    expect(new MemcachedClient({ servers: "a, b:1,[::1]:11212, memcached://c:2" }).servers).toEqual(["a:11211", "b:1", "[::1]:11212", "c:2"]);
    expect(new MemcachedClient({ servers: [{ host: "a" }, { host: "::1", port: 2 }, "b:3"] }).servers).toEqual(["a:11211", "[::1]:2", "b:3"]);
    expect(new MemcachedStore({ servers }).limits).toEqual({ maxKeyBytes: 250, maxRecordBytes: 1024 * 1024 - 512 });
    expect(new MemcachedStore({ servers, maxItemSize: 4 * 1024 * 1024 }).limits.maxRecordBytes).toBe(4 * 1024 * 1024 - 512);
    expect(new MemcachedStore({ servers, timeout: "250ms", circuitBreaker: { threshold: 2, cooldown: "1s" } }).resilience).toEqual({ timeoutMs: 250, breakerThreshold: 2, breakerCooldownMs: 1000 });
  });

  test("a client passed in is not closed by the store; one the store made is", async () => {
    const client = new MemcachedClient({ servers });
    cleanup.push(() => client.close());
    const store = new MemcachedStore({ client });
    await store.connect();
    await store.close();
    expect(await client.get(`${uniquePrefix()}:none`)).toBeUndefined();
    const own = new MemcachedStore({ servers });
    await own.connect();
    await own.close();
    await expect(own.get("k")).rejects.toThrow(/closed/);
  });
});
