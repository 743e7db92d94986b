import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, type Bus, type BusHandlers } from "../src/index.js";
import type { BusLimits, L2Limits } from "../src/backend.js";
import { BusLink } from "../src/bus/link.js";
import { decodeMessage } from "../src/bus/codec.js";
import { cutToBytes, overBytes } from "../src/shared/limits.js";
import { Reporter } from "../src/telemetry/reporter.js";
import { MapStore } from "./support/map-store.js";
import { flush } from "./support/helpers.js";

/**
 * Limits in the contracts: a store states its largest key and record, a bus its largest message,
 * and the cache keeps within them — hashed keys, L1-only records, split messages — without ever
 * counting a limit as a failure of the backend. The fakes declare the limits of real backends
 * (Memcached: 250-byte keys, 1 MB items; PostgreSQL NOTIFY: 8000-byte payloads) and fail the way
 * those servers do when a limit is crossed: with an ordinary error, which would trip the breaker.
 */

const bytes = (s: string): number => Buffer.byteLength(s);

/** A store with Memcached-like limits that rejects anything over them as a server would. */
class TightStore extends MapStore {
  readonly limits: L2Limits;
  largestKey = 0;
  largestRecord = 0;
  constructor(now: () => number, limits: L2Limits = { maxKeyBytes: 250, maxRecordBytes: 1_000_000 }) {
    super(now);
    this.limits = limits;
  }
  #check(key: string, record?: string): void {
    this.largestKey = Math.max(this.largestKey, bytes(key));
    if (bytes(key) > this.limits.maxKeyBytes!) throw new Error("CLIENT_ERROR key too long");
    if (record !== undefined) {
      this.largestRecord = Math.max(this.largestRecord, bytes(record));
      if (bytes(record) > this.limits.maxRecordBytes!) throw new Error("SERVER_ERROR object too large for cache");
    }
  }
  override get(key: string): Promise<string | undefined> {
    this.#check(key);
    return super.get(key);
  }
  override set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    this.#check(key, record);
    return super.set(key, record, ttlMs, ifGeneration);
  }
}

/** A bus with a NOTIFY-like payload limit; a message over it fails as the server would. It can also be made to fail. */
class TightBus implements Bus {
  readonly inner = new MemoryBus();
  readonly limits: BusLimits;
  readonly sizes: number[] = [];
  failing = false;
  constructor(maxMessageBytes = 8000) {
    this.limits = { maxMessageBytes };
  }
  async connect(channel: string, handlers: BusHandlers) {
    const conn = await this.inner.connect(channel, handlers);
    return {
      publish: (m: string): Promise<void> => {
        if (this.failing) return Promise.reject(new Error("connection lost"));
        this.sizes.push(bytes(m));
        if (bytes(m) > this.limits.maxMessageBytes!) return Promise.reject(new Error("payload string too long"));
        return conn.publish(m);
      },
      close: () => conn.close(),
    };
  }
}

function pair(extra: Record<string, unknown> = {}, limits?: L2Limits) {
  const clock = new FakeClock(1_000_000);
  const store = new TightStore(() => clock.now(), limits);
  const bus = new TightBus();
  const a = new LayerCache({ clock, l2: store, bus, prefix: "p", ...extra });
  const b = new LayerCache({ clock, l2: store, bus, prefix: "p", ...extra });
  const problems: string[] = [];
  for (const c of [a, b]) {
    c.on("l2Error", (e) => problems.push(`l2Error ${e.operation}: ${String(e.error)}`));
    c.on("l2CircuitOpen", () => problems.push("l2CircuitOpen"));
    c.on("busError", (e) => problems.push(`busError ${e.operation}: ${String(e.error)}`));
  }
  return { clock, store, bus, a, b, problems };
}

/** A key of `n` characters ending with `tail`. */
const long = (n: number, tail = ""): string => "k".repeat(n - tail.length) + tail;

describe("keys longer than the store's maxKeyBytes", () => {
  test("are stored under a hashed form within the limit and read back by another instance", async () => {
    const { store, a, b, problems } = pair();
    const key = long(600, ":end");
    await a.set(key, "v");
    expect(await b.get(key)).toBe("v");
    let calls = 0;
    expect(await a.getOrSet(`${key}2`, async () => `loaded${++calls}`)).toBe("loaded1");
    expect(await b.getOrSet(`${key}2`, async () => `loaded${++calls}`)).toBe("loaded1");
    expect(calls).toBe(1);
    await a.remove(key);
    expect(await b.get(key)).toBeUndefined();
    const stored = [...store.data.keys()];
    expect(stored).toHaveLength(2);
    for (const k of stored) {
      expect(bytes(k)).toBeLessThanOrEqual(250);
      // A readable head: the prefix, the (root) scope, the marker, the hash, then the start of the key.
      expect(k).toMatch(/^p:%#[A-Za-z0-9_-]{43}:kkkk/);
    }
    expect(store.largestKey).toBeLessThanOrEqual(250);
    expect(problems).toEqual([]);
  });

  test("keys within the limit are stored as they are; the hashed form keeps the scope readable", async () => {
    const { store, a } = pair();
    const fits = long(250 - "p::".length);
    await a.set(fits, 1);
    expect(store.data.has(`p::${fits}`)).toBe(true);
    await a.scope("users").scope("admins").set(long(300), 2);
    expect([...store.data.keys()].find((k) => k.startsWith("p:users/admins%#"))).toBeDefined();
  });

  test("two long keys sharing a long start do not share a record", async () => {
    const { store, a, b } = pair();
    const k1 = long(900, "-one");
    const k2 = long(900, "-two");
    await a.set(k1, 1);
    await a.set(k2, 2);
    expect(store.data.size).toBe(2);
    expect([await b.get(k1), await b.get(k2)]).toEqual([1, 2]);
    await b.remove(k1);
    expect([await a.get(k1), await a.get(k2)]).toEqual([undefined, 2]);
  });

  test("a key short in characters but long in UTF-8 bytes is hashed, and its head is cut between code points", async () => {
    const { store, a, b } = pair();
    const key = "😀".repeat(60) + "€".repeat(20); // 140 characters, 300 bytes
    await a.set(key, "euro");
    expect(await b.get(key)).toBe("euro");
    const [stored] = [...store.data.keys()];
    expect(bytes(stored!)).toBeLessThanOrEqual(250);
    expect(stored!.isWellFormed()).toBe(true);
    expect(Buffer.from(stored!, "utf8").toString("utf8")).toBe(stored);
  });

  test("cutting to a number of bytes never splits a character", () => {
    const text = "a" + "é" + "€" + "😀".repeat(3) + "z";
    for (let max = 0; max <= bytes(text) + 1; max++) {
      const cut = cutToBytes(text, max);
      expect(cut.isWellFormed()).toBe(true);
      expect(bytes(cut)).toBeLessThanOrEqual(max);
      expect(text.startsWith(cut)).toBe(true);
      // The longest such start: one more character would not fit.
      if (cut !== text) expect(bytes(text.slice(0, cut.length + (text.codePointAt(cut.length)! > 0xffff ? 2 : 1)))).toBeGreaterThan(max);
      expect(overBytes(text, max)).toBe(bytes(text) > max);
    }
  });

  test("no unhashed key can take a hashed key's place, even one spelled like it", async () => {
    const { store, a, b } = pair();
    await a.scope("users").set(long(400), "hashed");
    const hashed = [...store.data.keys()][0]!; // p:users%#<hash>:kkk...
    const [, scopeAndHash, head] = /^p:([^:]*):(.*)$/.exec(hashed)!;
    // The same text as a scope name and a key: the scope name is escaped, so it is another L2 key.
    await a.scope(scopeAndHash!).set(head!, "impostor");
    expect(store.data.size).toBe(2);
    expect(await b.scope("users").get(long(400))).toBe("hashed");
    expect(await b.scope(scopeAndHash!).get(head!)).toBe("impostor");
  });

  test("a long prefix and long scope names are cut too; the mapping is the same on every instance", async () => {
    const prefix = "app-".repeat(80); // 320 bytes: longer than the limit by itself
    const { store, a, b } = pair({ prefix });
    const scope = "tenant-".repeat(30);
    await a.scope(scope).set("x", 1);
    await a.scope(scope).set("y", 2);
    expect(store.data.size).toBe(2);
    for (const k of store.data.keys()) expect(bytes(k)).toBeLessThanOrEqual(250);
    expect([await b.scope(scope).get("x"), await b.scope(scope).get("y")]).toEqual([1, 2]);
  });
});

describe("records larger than the store's maxRecordBytes", () => {
  test("stay in L1 only with a valueTooLarge event, leave no outdated record behind, and never open the breaker", async () => {
    // maxValueBytes above the store's limit: the record limit is the one that bites.
    const { store, a, b, problems } = pair({ maxValueBytes: 10_000_000 });
    const tooLarge: unknown[] = [];
    a.on("valueTooLarge", (e) => tooLarge.push(e));
    await a.set("k", "small");
    expect(await b.get("k")).toBe("small");
    const big = "x".repeat(1_000_000);
    for (let i = 0; i < 20; i++) {
      await a.set("k", big + i);
      expect(await a.get("k")).toBe(big + i);
      // The old record was replaced (by a tombstone): b does not find the outdated "small".
      expect(await b.get("k")).toBeUndefined();
    }
    expect(await a.getOrSet("loaded", () => big)).toBe(big);
    expect(await b.get("loaded")).toBeUndefined();
    expect(tooLarge).toHaveLength(21);
    expect(tooLarge[0]).toMatchObject({ key: "k", layer: "l2", bytes: 1_000_003, limit: 1_000_000 - 256 });
    expect(a.stats().l2CircuitOpens).toBe(0);
    expect(store.largestRecord).toBeLessThanOrEqual(1_000_000);
    expect(problems).toEqual([]);
    // L2 works on for everything else.
    await a.set("ok", "fine");
    expect(await b.get("ok")).toBe("fine");
  });

  test("maxValueBytes still applies when it is the smaller limit", async () => {
    const { a, b } = pair({ maxValueBytes: 100 });
    const events: unknown[] = [];
    a.on("valueTooLarge", (e) => events.push(e));
    await a.set("big", "x".repeat(200));
    expect(await b.get("big")).toBeUndefined();
    expect(events).toMatchObject([{ key: "big", layer: "l2", limit: 100 }]);
  });

  test("a value measured in UTF-8: within the limit in characters, over it in bytes", async () => {
    const { a, b } = pair({}, { maxKeyBytes: 250, maxRecordBytes: 2_000 });
    const events: unknown[] = [];
    a.on("valueTooLarge", (e) => events.push(e));
    await a.set("k", "€".repeat(1_000)); // 1 002 characters of JSON, 3 002 bytes
    expect(await b.get("k")).toBeUndefined();
    expect(events).toMatchObject([{ bytes: 3_002, limit: 2_000 - 256 }]);
  });
});

describe("bus messages larger than the bus's maxMessageBytes", () => {
  async function busPair(extra: Record<string, unknown> = {}, maxMessageBytes = 8000) {
    const clock = new FakeClock(1_000_000);
    const bus = new TightBus(maxMessageBytes);
    const a = new LayerCache({ clock, bus, ...extra });
    const b = new LayerCache({ clock, bus, ...extra });
    await Promise.all([a.ready(), b.ready()]);
    const received: string[] = [];
    const errors: unknown[] = [];
    b.on("peerInvalidation", (e) => received.push(`${e.op} ${e.scope} ${e.keys.length}`));
    b.on("busMessageDropped", (e) => errors.push(e));
    a.on("busError", (e) => bus.failing || errors.push(e));
    return { clock, bus, a, b, received, errors };
  }

  test.each([
    ["unsigned", {}],
    ["signed", { busSecret: "s3cret" }],
  ])("a removal of 5 000 long keys queued while the bus was down reaches the peer in several messages, each within the limit (%s)", async (_, extra) => {
    const { clock, bus, a, b, received, errors } = await busPair(extra);
    const keys = Array.from({ length: 5_000 }, (_, i) => long(200, `:${i}`));
    for (const k of keys) await b.set(k, 1);
    bus.failing = true;
    for (const k of keys) await a.remove(k);
    expect(a.stats().busPending).toBe(1); // one scope, 5 000 keys
    bus.failing = false;
    bus.sizes.length = 0;
    for (let i = 0; i < 40 && a.stats().busPending > 0; i++) await clock.advanceAsync(500);
    await flush();
    expect(a.stats().busPending).toBe(0);
    expect(bus.sizes.length).toBeGreaterThan(100); // ~1 MB of keys in 8 000-byte messages
    expect(Math.max(...bus.sizes)).toBeLessThanOrEqual(8000);
    expect(Math.max(...bus.sizes)).toBeGreaterThan(7000); // filled, not one key per message
    expect(received.reduce((n, r) => n + Number(r.split(" ")[2]), 0)).toBe(5_000);
    for (const k of keys.slice(0, 10).concat(keys.slice(-10))) expect(await b.get(k)).toBeUndefined();
    expect(b.stats().entries).toBe(0);
    expect(errors).toEqual([]);
  });

  test("a key too long for any message becomes a clear of its scope: peers drop more, never less", async () => {
    const { a, b, received, errors } = await busPair({}, 600);
    const key = long(1_000);
    await b.scope("s").set(key, 1);
    await b.scope("s").set("other", 2);
    await b.set("root", 3);
    await a.scope("s").remove(key);
    expect(received).toEqual(["clear s 0"]);
    expect([await b.scope("s").get(key), await b.scope("s").get("other"), await b.get("root")]).toEqual([undefined, undefined, 3]);
    expect(errors).toEqual([]);
  });

  test("a scope too long for any message: the clear goes to the nearest enclosing scope that fits", async () => {
    const { a, b, received } = await busPair({ busSecret: "s" }, 600);
    const deep = a.scope("outer").scope("n".repeat(600));
    await b.scope("outer").scope("n".repeat(600)).set("k", 1);
    await b.scope("outer").set("sibling", 2);
    await b.scope("elsewhere").set("k", 3);
    await deep.remove("k");
    expect(received).toEqual(["clear outer 0"]);
    expect([await b.scope("outer").get("sibling"), await b.scope("elsewhere").get("k")]).toEqual([undefined, 3]);
  });

  test("a direct publish of many keys is split by bytes and by count (BusLink)", async () => {
    const clock = new FakeClock(1_000_000);
    const bus = new TightBus(8000);
    const got: string[][] = [];
    const report = new Reporter(undefined);
    const counters = report.counters;
    const link = new BusLink(bus, {
      channel: "c",
      id: "sender",
      secret: new TextEncoder().encode("k"),
      peer: { onRemove: () => {}, onUpdate: () => {}, onClear: () => {}, onTag: () => {}, onDisconnect: () => {}, onReconnect: () => {}, onCaughtUp: () => {} },
      report,
      clock,
    });
    const secret = new TextEncoder().encode("k");
    await bus.inner.connect("c", {
      onMessage: (m) => {
        const d = decodeMessage(m, secret, clock.now());
        if (d.ok) got.push(d.message.keys);
      },
      onDisconnect: () => {},
      onReconnect: () => {},
      onError: () => {},
    });
    await link.connect();
    const wide = Array.from({ length: 3_000 }, (_, i) => `é${"x".repeat(40)}${i}`);
    await link.publish("remove", ["scope"], wide, "gen.1");
    expect(got.flat()).toEqual(wide);
    expect(got.length).toBeGreaterThan(1);
    expect(Math.max(...bus.sizes)).toBeLessThanOrEqual(8000);
    got.length = 0;
    const narrow = Array.from({ length: 1_200 }, (_, i) => `${i}`);
    await link.publish("remove", [], narrow);
    expect(got.map((keys) => keys.length)).toEqual([500, 500, 200]);
    expect(counters.busErrors).toBe(0);
    await link.close();
  });
});

describe("declared limits are checked when the cache is created", () => {
  test.each([
    ["l2", { l2: Object.assign(new MapStore(), { limits: { maxKeyBytes: 10 } }) }],
    ["l2", { l2: Object.assign(new MapStore(), { limits: { maxRecordBytes: "1mb" } }) }],
    ["bus", { bus: Object.assign(new MemoryBus(), { limits: { maxMessageBytes: 100 } }) }],
    ["bus", { bus: Object.assign(new MemoryBus(), { limits: { maxMessageBytes: Number.NaN } }) }],
  ])("a store or bus declaring a limit too small to work with is a TypeError naming %s", (option, options) => {
    expect(() => new LayerCache(options as never)).toThrow(new RegExp(`option "${option}" declares limits\\.`));
  });

  test("no limits, or Infinity, mean none", async () => {
    const store = Object.assign(new MapStore(), { limits: { maxKeyBytes: Infinity } });
    const cache = new LayerCache({ l2: store, bus: new MemoryBus() });
    await cache.set(long(1_000), 1);
    expect([...store.data.keys()]).toEqual([`layercache::${long(1_000)}`]);
    await cache.close();
  });
});
