import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, SerializationError } from "../src/index.js";
import { MapStore } from "./support/map-store.js";
import { deferred, flush } from "./support/helpers.js";

/**
 * The engine's L2 path against our own in-process store, under a fake clock. The same behaviours
 * are tested against a real redis-server in test/integration.
 */
function two(extra: Record<string, unknown> = {}) {
  const clock = new FakeClock(1_000_000);
  const store = new MapStore(() => clock.now());
  const bus = new MemoryBus();
  const a = new LayerCache({ clock, l2: store, bus, ...extra });
  const b = new LayerCache({ clock, l2: store, bus, ...extra });
  return { clock, store, a, b };
}

describe("L2 through the engine", () => {
  test("one instance's load serves the other", async () => {
    const { a, b } = two();
    let calls = 0;
    const load = async (): Promise<string> => `v${++calls}`;
    expect(await a.getOrSet("k", load)).toBe("v1");
    expect(await b.getOrSet("k", load)).toBe("v1");
    expect(await b.get("k")).toBe("v1");
    expect(calls).toBe(1);
  });

  test("an L1 copy filled from L2 keeps the remaining lifetime", async () => {
    const { clock, a, b } = two({ ttl: "10s" });
    await a.set("k", "v");
    clock.advance(7_000);
    expect(await b.get("k")).toBe("v");
    clock.advance(2_999);
    expect(await b.get("k")).toBe("v");
    clock.advance(1);
    expect(await b.get("k")).toBeUndefined();
  });

  test("keys carry the prefix and the scope", async () => {
    const { store, a } = two({ prefix: "app" });
    await a.set("k", 1);
    await a.scope("users").scope("vip").set("k", 2);
    await a.scope("a:b").set("k", 3);
    expect([...store.data.keys()].sort()).toEqual(["app::k", "app:a%3Ab:k", "app:users/vip:k"]);
  });

  test("the physical expiry in L2 is the end of the longest window", async () => {
    const { store, clock, a } = two({ ttl: "10s", failSafe: "1m", maxStale: "20s" });
    await a.set("k", 1);
    expect(store.data.get("layercache::k")!.expires - clock.now()).toBe(70_000);
  });

  test("remove reaches L2 before the peers are told", async () => {
    const { a, b } = two();
    await a.set("k", 1);
    expect(await b.get("k")).toBe(1);
    await a.remove("k");
    expect(await b.get("k")).toBeUndefined();
  });

  test("clear leaves L2 untouched: peers re-read it", async () => {
    const { a, b } = two();
    await a.set("k", 1);
    await b.get("k");
    await a.clear();
    expect(await b.get("k")).toBe(1);
  });

  test("a load that started before a remove on a peer does not write to L2", async () => {
    const { a, b } = two();
    const gate = deferred<string>();
    const p = b.getOrSet("k", () => gate.promise);
    await flush();
    await a.set("k", "newer");
    gate.resolve("older");
    expect(await p).toBe("older");
    expect(await a.get("k")).toBe("newer");
    a.clearMemory();
    expect(await a.get("k")).toBe("newer");
  });

  test("a conditional write loses to a set that happened while the load ran, even if the bus missed it", async () => {
    const clock = new FakeClock(0);
    const store = new MapStore(() => clock.now());
    const a = new LayerCache({ clock, l2: store }); // no bus at all
    const b = new LayerCache({ clock, l2: store });
    const events: unknown[] = [];
    b.on("loadDiscarded", (e) => events.push(e.reason));
    const gate = deferred<string>();
    const p = b.getOrSet("k", () => gate.promise);
    await flush();
    await a.set("k", "newer");
    gate.resolve("older");
    expect(await p).toBe("older");
    expect(events).toEqual(["conflict"]);
    expect(await b.get("k")).toBe("newer");
  });

  test("corrupt payloads, other versions and non-envelopes are misses, removed, and reported", async () => {
    const { store, a } = two();
    const corrupt: unknown[] = [];
    a.on("l2Corrupt", (e) => corrupt.push(e.key));
    store.poke("layercache::x", "not an envelope");
    store.poke("layercache::y", "LC9|g|1|2|3|4|{}");
    store.poke("layercache::z", "LC1|g|1|1000000000|0|0|{not json");
    for (const k of ["x", "y", "z"]) expect(await a.get(k)).toBeUndefined();
    expect(corrupt).toEqual(["x", "y", "z"]);
    expect(await a.getOrSet("x", () => "recovered")).toBe("recovered");
    expect(a.stats().l2Corrupt).toBe(3);
  });

  test("prototype-pollution payloads are inert", async () => {
    const { store, a } = two();
    store.poke("layercache::p", `LC1|g|${Date.now()}|1000000000|0|0|{"__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}},"ok":1}`);
    const v = (await a.get("p")) as Record<string, unknown>;
    expect(v).toEqual({ ok: 1 });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
  });

  test("a value the serializer cannot encode: set rejects, L1 keeps it, L2 drops the old value, peers are told", async () => {
    const { a, b } = two();
    await a.set("k", "old");
    expect(await b.get("k")).toBe("old");
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(a.set("k", cyclic)).rejects.toBeInstanceOf(SerializationError);
    expect(await a.get("k")).toBe(cyclic);
    expect(await b.get("k")).toBeUndefined();
    await a.set("other", 1);
    expect(await b.get("other")).toBe(1);
  });

  test("a loaded value the serializer cannot encode stays in L1 and is reported", async () => {
    const { a, b } = two();
    const errors: unknown[] = [];
    a.on("l2Error", (e) => errors.push(e.operation));
    const fn = (): number => 1;
    expect(await a.getOrSet("k", () => ({ fn }))).toEqual({ fn });
    expect(await a.get("k")).toEqual({ fn });
    expect(await b.get("k")).toBeUndefined();
    expect(errors).toEqual(["serialize"]);
  });

  test("a value larger than maxValueBytes stays in L1 only, with an event", async () => {
    const { a, b } = two({ maxValueBytes: 100 });
    const events: unknown[] = [];
    a.on("valueTooLarge", (e) => events.push(e));
    await a.set("big", "x".repeat(200));
    expect(await a.get("big")).toBe("x".repeat(200));
    expect(await b.get("big")).toBeUndefined();
    expect(events).toMatchObject([{ key: "big", layer: "l2", limit: 100 }]);
    expect(await a.getOrSet("big2", () => "y".repeat(200))).toBe("y".repeat(200));
    expect(await b.get("big2")).toBeUndefined();
  });

  test("when L2 fails, reads fall back to L1 and the loader, and nothing throws", async () => {
    const { store, a } = two();
    const errors: string[] = [];
    a.on("l2Error", (e) => errors.push(e.operation));
    await a.set("k", 1);
    store.failing = true;
    expect(await a.get("k")).toBe(1);
    expect(await a.getOrSet("new", () => "loaded")).toBe("loaded");
    await a.set("k2", 2);
    await a.remove("k");
    expect(await a.get("k2")).toBe(2);
    expect(errors.length).toBeGreaterThan(0);
  });

  test("L2 back before a queued removal landed: the instance that removed the key does not read the old record back", async () => {
    const { store, a } = two();
    await a.set("k", "old");
    await a.set("j", "old");
    store.failing = true;
    await a.remove("k"); // L2 unreachable: the removal is queued
    await a.set("j", "new"); // likewise; L1 has the new value
    expect(a.stats().l2Pending).toBe(2);
    store.failing = false; // back, but the queue has not retried yet
    expect(await a.get("k")).toBeUndefined();
    a.removeLocal("j");
    expect(await a.get("j")).toBeUndefined();
    expect(await a.getOrSet("k", () => "loaded")).toBe("loaded");
  });

  test("background mode: a stale value found in L2 is served at once while a refresh runs", async () => {
    const { clock, a, b } = two({ ttl: "10s", refresh: "background" });
    await a.getOrSet("k", async () => "v1");
    clock.advance(12_000);
    const gate = deferred<string>();
    expect(await b.getOrSet("k", () => gate.promise)).toBe("v1");
    gate.resolve("v2");
    await flush();
    expect(await b.get("k")).toBe("v2");
    expect(await a.getOrSet("k", async () => "unused")).toBe("v2");
  });

  test("a refresh adopts a newer value another instance already wrote to L2 instead of loading", async () => {
    const { clock, a, b } = two({ ttl: "10s", refresh: "background" });
    await a.getOrSet("k", async () => "v1");
    await b.get("k");
    clock.advance(11_000);
    expect(await a.getOrSet("k", async () => "v2")).toBe("v1");
    await flush();
    let calls = 0;
    expect(await b.getOrSet("k", async () => `b${++calls}`)).toBe("v2"); // b's stale hit... or L2 hit after a's publish
    await flush();
    expect(calls).toBe(0);
    expect(await b.get("k")).toBe("v2");
  });
});

/**
 * A store on a pool of connections keeps no order of its own: a write may land after a later one,
 * and a read may overtake a write still under way. The cache keeps one instance's calls of a key in
 * order itself, so every store gets this without having to provide it.
 */
describe("one instance's L2 calls of a key stay in order on a store that reorders them", () => {
  /** Each write waits for the gate handed out for it; reads answer at once. */
  class ReorderingStore extends MapStore {
    readonly gates: (() => void)[] = [];
    override set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
      const d = deferred<void>();
      this.gates.push(() => d.resolve());
      return d.promise.then(() => super.set(key, record, ttlMs, ifGeneration));
    }
  }

  test("a set and the remove right after it land in call order, even when the store would finish the remove first", async () => {
    const clock = new FakeClock(1_000_000);
    const store = new ReorderingStore(() => clock.now());
    const a = new LayerCache({ clock, l2: store });
    const set = a.set("k", "old");
    const removed = a.remove("k");
    await flush();
    // The store releases the remove's write first if it was sent; the set's write after it.
    for (const open of [...store.gates].reverse()) open();
    await flush();
    for (const open of store.gates.splice(0)) open();
    await Promise.all([set, removed]);
    await flush();
    for (const open of store.gates.splice(0)) open();
    await flush();
    const fresh = new LayerCache({ clock, l2: store });
    expect(await fresh.get("k")).toBeUndefined();
  });

  test("a read asked for while a remove of the key is on its way waits for it: the removed value is not read back into L1", async () => {
    const clock = new FakeClock(1_000_000);
    const store = new ReorderingStore(() => clock.now());
    const a = new LayerCache({ clock, l2: store });
    const b = new LayerCache({ clock, l2: store });
    const set = b.set("k", "old");
    await flush();
    for (const open of store.gates.splice(0)) open();
    await set;
    await a.ready();
    const removed = a.remove("k");
    const read = a.get("k");
    await flush();
    for (const open of store.gates.splice(0)) open();
    await removed;
    expect(await read).toBeUndefined();
    expect(await a.get("k")).toBeUndefined();
  });
});
