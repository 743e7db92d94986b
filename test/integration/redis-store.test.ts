import { describe, expect, inject, test } from "vitest";
import { FakeClock, LayerCache, SerializationError } from "../../src/index.js";
import { CLIENT_KINDS, closedAfterAll, eventually, rawClientClosedAfterAll, uniquePrefix, wire } from "../support/redis-clients.js";
import { gated } from "../support/helpers.js";

const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);

describe.each(CLIENT_KINDS)("RedisStore with %s", (kind) => {
  const open = closedAfterAll();

  async function pair(extra: Record<string, unknown> = {}) {
    const prefix = uniquePrefix();
    const wa = await wire(kind, url);
    const wb = await wire(kind, url);
    open.wirings.push(wa, wb);
    const a = new LayerCache({ prefix, l2: wa.store, bus: wa.bus, ...extra });
    const b = new LayerCache({ prefix, l2: wb.store, bus: wb.bus, ...extra });
    open.caches.push(a, b);
    await Promise.all([a.ready(), b.ready()]);
    return { a, b, prefix };
  }

  test("one instance's value serves the other through L2", async () => {
    const { a, b } = await pair();
    let calls = 0;
    expect(await a.getOrSet("k", async () => `v${++calls}`)).toBe("v1");
    expect(await b.getOrSet("k", async () => `v${++calls}`)).toBe("v1");
    expect(calls).toBe(1);
    await a.set("s", { n: 1 });
    expect(await b.get("s")).toEqual({ n: 1 });
  });

  test("keys carry the prefix and the scope; the physical expiry is the longest window", async () => {
    const { a, prefix } = await pair({ ttl: "10s", failSafe: "2m", maxStale: "30s" });
    await a.set("k", 1);
    await a.scope("users").set("u:1", 2);
    const keys = (await raw.keys(`${prefix}:*`)).sort();
    expect(keys).toEqual([`${prefix}::k`, `${prefix}:users:u:1`]);
    const pttl = await raw.pttl(`${prefix}::k`);
    expect(pttl).toBeGreaterThan(125_000);
    expect(pttl).toBeLessThanOrEqual(130_000);
    expect(await raw.get(`${prefix}::k`)).toMatch(/^LC1\|[^|]+\|\d+\|10000\|30000\|120000\|1$/);
  });

  test("remove reaches L2 and the peer; clear leaves L2 untouched", async () => {
    const { a, b } = await pair();
    await a.set("k", 1);
    expect(await b.get("k")).toBe(1);
    await a.remove("k");
    await eventually(async () => (await b.get("k")) === undefined);
    await a.set("j", 1);
    expect(await b.get("j")).toBe(1);
    await a.clear();
    expect(await b.get("j")).toBe(1); // dropped from b's L1 (eventually), then re-read from L2
  });

  test("corrupt payloads, other versions and non-envelopes are misses, removed, and reported", async () => {
    const { a, prefix } = await pair();
    const corrupt: string[] = [];
    a.on("l2Corrupt", (e) => corrupt.push(e.key));
    await raw.set(`${prefix}::x`, "plain text");
    await raw.set(`${prefix}::y`, "LC2|g|1|2|3|4|{}");
    await raw.set(`${prefix}::z`, `LC1|g|${Date.now()}|100000|0|0|{not json`);
    for (const k of ["x", "y", "z"]) expect(await a.get(k)).toBeUndefined();
    expect(corrupt).toEqual(["x", "y", "z"]);
    expect(await raw.get(`${prefix}::x`)).toMatch(/^LC1\|[^|]+\|\d+\|-$/); // replaced by a tombstone
    expect(await a.getOrSet("x", async () => "ok")).toBe("ok");
  });

  test("prototype-pollution payloads are inert", async () => {
    const { a, prefix } = await pair();
    await raw.set(`${prefix}::p`, `LC1|g|${Date.now()}|100000|0|0|{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}},"ok":true}`);
    const v = (await a.get("p")) as Record<string, unknown>;
    expect(v).toEqual({ ok: true });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test("unserializable and too-large values stay in L1", async () => {
    const { a, b, prefix } = await pair({ maxValueBytes: 64 });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(a.set("c", cyclic)).rejects.toBeInstanceOf(SerializationError);
    expect(await a.get("c")).toBe(cyclic);
    await a.set("big", "x".repeat(100));
    expect(await a.get("big")).toBe("x".repeat(100));
    expect(await b.get("big")).toBeUndefined();
    expect(await raw.get(`${prefix}::big`)).toMatch(/\|-$/);
  });

  test("a load that started before a set on the other instance does not write back (conditional write)", async () => {
    const { a, b, prefix } = await pair();
    const load = gated<string>();
    const p = b.getOrSet("k", load.loader, { hardTimeout: 0 }); // held across a set: no timeout
    await load.started;
    await a.set("k", "newer");
    load.release("older");
    expect(await p).toBe("older");
    expect(await raw.get(`${prefix}::k`)).toMatch(/\|"newer"$/);
    await eventually(async () => (await b.get("k")) === "newer");
  });

  test("the L1 copy filled from L2 keeps the remaining lifetime", async () => {
    const clock = new FakeClock();
    const { a, b } = await pair({ clock, ttl: "10s" });
    await a.set("k", "v");
    clock.advance(7_000);
    expect(await b.get("k")).toBe("v");
    clock.advance(3_000);
    expect(await b.get("k")).toBeUndefined();
  });
});
