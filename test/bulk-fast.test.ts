import { tracingChannel } from "node:diagnostics_channel";
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, diagnosticChannels } from "../src/index.js";
import { MemoryStore } from "../src/l2/memory.js";
import { namespaceOf } from "../src/api/scope.js";
import { deferred, flush, gated, type Deferred } from "./support/helpers.js";

/**
 * getOrSetMany's lean path (keys that miss L1 with nobody loading them: one multi-key L2 read, no
 * flight per key) under what can happen while that read is under way.
 */

/**
 * A MemoryStore that counts its reads and can hold the answer of its next `getMany` — read at
 * once, delivered when released (a reply on its way while the cache goes on; a batch of one key is
 * a `get`) — or of its next `set`.
 */
class HoldingStore extends MemoryStore {
  gets = 0;
  getManys = 0;
  failing = false;
  /** Reads after this many (counted by `reads`) fail. */
  readsBeforeFailing = Infinity;
  #heldRead: Deferred<void> | undefined;
  #readsToHold = 0;
  #heldWrite: Deferred<void> | undefined;

  holdNextRead(): Deferred<void> {
    return this.holdRead(1);
  }

  /** Holds the answer of the `nth` read from now (1: the next). */
  holdRead(nth: number): Deferred<void> {
    this.#readsToHold = nth;
    return (this.#heldRead = deferred<void>());
  }

  holdNextWrite(): Deferred<void> {
    return (this.#heldWrite = deferred<void>());
  }

  /** The keys of each read, in order (a `get` is a read of one key). */
  readKeys: string[][] = [];

  override async get(key: string) {
    this.gets++;
    this.readKeys.push([key]);
    if (this.failing || this.reads > this.readsBeforeFailing) throw new Error("store down");
    return this.#deliver(await super.get(key));
  }

  override async getMany(keys: string[]) {
    this.getManys++;
    this.readKeys.push([...keys]);
    if (this.failing || this.reads > this.readsBeforeFailing) throw new Error("store down");
    return this.#deliver(await super.getMany(keys));
  }

  async #deliver<T>(read: T): Promise<T> {
    if (this.#heldRead === undefined || --this.#readsToHold > 0) return read;
    const held = this.#heldRead;
    this.#heldRead = undefined;
    await held.promise;
    return read;
  }

  override async set(key: string, record: string, ttlMs: number, ifGeneration?: string) {
    if (this.failing) throw new Error("store down");
    const held = this.#heldWrite;
    this.#heldWrite = undefined;
    if (held !== undefined) await held.promise;
    return super.set(key, record, ttlMs, ifGeneration);
  }

  get reads(): number {
    return this.gets + this.getManys;
  }
}

/** Two instances on one L2 and one bus; `a`'s L1 is cold for the keys `warm` wrote through `b`. */
async function pair(warm: Record<string, unknown> = {}, o: { resilience?: object; tags?: string[] } = {}) {
  const clock = new FakeClock(1_000_000);
  const store = new HoldingStore({ clock });
  if (o.resilience) Object.defineProperty(store, "resilience", { value: o.resilience });
  const bus = new MemoryBus();
  const a = new LayerCache({ clock, l2: store, bus });
  const b = new LayerCache({ clock, l2: store, bus });
  for (const [k, v] of Object.entries(warm)) await b.set(k, v, o.tags ? { tags: o.tags } : undefined);
  await flush();
  return { clock, store, a, b };
}

/** A loadMany that records its calls and returns `v:<key>`. */
function recorder() {
  const calls: string[][] = [];
  const fn = async (keys: string[]) => {
    calls.push([...keys]);
    return keys.map((k) => `v:${k}`);
  };
  return { fn, calls };
}

describe("getOrSetMany: L2 hits without a flight per key", () => {
  test("L2 hits are answered from one read, fill L1 and count as L2 hits (counters and events)", async () => {
    const { store, a } = await pair({ k1: "one", k2: "two", k3: "three" });
    const { fn, calls } = recorder();
    const hits: string[] = [];
    a.on("hit", (e) => hits.push(`${e.key}:${e.layer}`));
    const before = store.reads;
    const stats = a.stats();
    expect(await a.getOrSetMany(["k1", "k2", "k1", "k3"], fn)).toEqual(["one", "two", "one", "three"]);
    expect(store.reads - before).toBe(1);
    expect(calls).toEqual([]);
    expect(hits).toEqual(["k1:l2", "k2:l2", "k1:l2", "k3:l2"]);
    expect(a.stats().l2Hits - stats.l2Hits).toBe(4);
    expect(a.stats().hits - stats.hits).toBe(4);
    // Now in L1: no L2 read at all.
    expect(await a.getOrSetMany(["k3", "k1"], fn)).toEqual(["three", "one"]);
    expect(store.reads - before).toBe(1);
    expect(hits.slice(4)).toEqual(["k3:l1", "k1:l1"]);
  });

  test("a remove while the read is under way: the key is not taken from that read, it is read again and loaded", async () => {
    const { store, a, b } = await pair({ k1: "old1", k2: "old2" });
    const { fn, calls } = recorder();
    const held = store.holdNextRead();
    const p = a.getOrSetMany(["k1", "k2"], fn);
    await flush();
    await a.remove("k1");
    held.resolve();
    expect(await p).toEqual(["v:k1", "old2"]);
    expect(calls).toEqual([["k1"]]);
    expect(await a.get("k1")).toBe("v:k1"); // the load started after the remove: written back
    expect(await b.get("k1")).toBe("v:k1");
  });

  test("a peer's set while the read is under way: the key is read again and gets the new value", async () => {
    const { store, a, b } = await pair({ k1: "old1", k2: "old2" });
    const { fn, calls } = recorder();
    const held = store.holdNextRead();
    const p = a.getOrSetMany(["k1", "k2"], fn);
    await flush();
    await b.set("k1", "new1");
    await flush();
    held.resolve();
    expect(await p).toEqual(["new1", "old2"]);
    expect(calls).toEqual([]);
    expect(await a.get("k1")).toBe("new1");
  });

  test("a peer's remove in a scope that holds nothing but the read reaches it (the read keeps the scope attached)", async () => {
    const { store, a, b } = await pair();
    await b.scope("s").set("k", "old");
    const { fn, calls } = recorder();
    const held = store.holdNextRead();
    const p = a.scope("s").getOrSetMany(["k"], fn);
    await flush();
    await b.scope("s").remove("k");
    await flush();
    held.resolve();
    expect(await p).toEqual(["v:k"]);
    expect(calls).toEqual([["k"]]);
  });

  test.each([
    ["declared by the call", { tags: ["t"] }],
    ["carried by the value only", undefined],
  ])("removeByTag while the read is under way (tags %s): the tagged value read is not served", async (_, options) => {
    const { store, a, b } = await pair({ t1: "old" }, { tags: ["t"] });
    await b.set("u1", "untagged");
    const { fn, calls } = recorder();
    const held = store.holdNextRead();
    const p = a.getOrSetMany(["t1", "u1"], fn, options);
    await flush();
    await b.removeByTag("t");
    await flush();
    held.resolve();
    expect(await p).toEqual(["v:t1", "untagged"]);
    expect(calls).toEqual([["t1"]]);
  });

  test("removeByTag while the tags of a value read are checked, and a load of another key ends meanwhile: the tag's fence holds", async () => {
    const { store, a } = await pair({ t1: "old" }, { tags: ["t"] });
    const { fn, calls } = recorder();
    const held = store.holdRead(2); // the record is read, then its tag: that second read is held
    const p = a.getOrSetMany(["t1"], fn);
    await flush();
    await a.removeByTag("t");
    expect(await a.getOrSet("other", async () => "loaded")).toBe("loaded"); // a flight of the scope starts and ends
    held.resolve();
    expect(await p).toEqual(["v:t1"]);
    expect(calls).toEqual([["t1"]]);
  });

  test("tagged values whose tags the call does not name: those tags are read once, in one read, for all the keys", async () => {
    const { store, a, b } = await pair({ t1: "one", t2: "two", t3: "three" }, { tags: ["t", "u"] });
    await b.set("x", "untagged");
    const { fn, calls } = recorder();
    store.readKeys = [];
    expect(await a.getOrSetMany(["t1", "x", "t2", "t3"], fn)).toEqual(["one", "untagged", "two", "three"]);
    expect(calls).toEqual([]);
    expect(store.readKeys.length).toBe(2); // the records, then the tags they carry
    expect(store.readKeys[0]!.length).toBe(4);
    expect(store.readKeys[1]!.length).toBe(2); // "t" and "u" once each, not once per value
    // The check still holds: after removeByTag("u") none of them is a value.
    await b.removeByTag("u");
    await flush();
    expect(await a.getOrSetMany(["t1", "x", "t2"], fn)).toEqual(["v:t1", "untagged", "v:t2"]);
    expect(calls).toEqual([["t1", "t2"]]);
  });

  test("the tags the call does not name cannot be read (L2 failing then): the tagged values are not served unchecked", async () => {
    const { store, a, b } = await pair({ t1: "one", t2: "two" }, { tags: ["t"] });
    await b.set("x", "untagged");
    const { fn, calls } = recorder();
    store.readsBeforeFailing = store.reads + 1; // the records are read; the read of their tags fails
    expect(await a.getOrSetMany(["t1", "x", "t2"], fn)).toEqual(["v:t1", "untagged", "v:t2"]);
    expect(calls).toEqual([["t1", "t2"]]);
  });

  test("a call naming some of the tags: only the others are read, once", async () => {
    const { store, a, b } = await pair({ t1: "one", t2: "two" }, { tags: ["t", "u"] });
    const { fn, calls } = recorder();
    store.readKeys = [];
    expect(await a.getOrSetMany(["t1", "t2"], fn, { tags: ["t"] })).toEqual(["one", "two"]);
    expect(calls).toEqual([]);
    expect(store.readKeys.map((k) => k.length)).toEqual([3, 1]); // the records and "t" together, then "u"
    await b.removeByTag("u");
    await flush();
    expect(await a.getOrSetMany(["t1", "t2"], fn, { tags: ["t"] })).toEqual(["v:t1", "v:t2"]);
  });

  test("a clear while the read is under way: nothing is taken from it, every key is read again", async () => {
    const { store, a } = await pair({ k1: "one", k2: "two" });
    const { fn } = recorder();
    const held = store.holdNextRead();
    const p = a.getOrSetMany(["k1", "k2"], fn);
    await flush();
    const before = store.reads;
    await a.clear();
    held.resolve();
    expect(await p).toEqual(["one", "two"]); // L2 is untouched by clear: read again there
    expect(store.reads - before).toBe(1);
  });

  test("a key being loaded is joined; the others are read from L2; loadMany is not called", async () => {
    const { a } = await pair({ h: "in-l2" });
    const g = gated<string>();
    const running = a.getOrSet("j", g.loader);
    await g.started;
    const { fn, calls } = recorder();
    const p = a.getOrSetMany(["j", "h"], fn);
    await flush();
    g.release("loaded-once");
    expect(await p).toEqual(["loaded-once", "in-l2"]);
    expect(await running).toBe("loaded-once");
    expect(calls).toEqual([]);
    expect(g.calls).toBe(1);
  });

  test("a load of a missing key started by another caller while the read is under way is joined, not repeated", async () => {
    const { store, a } = await pair();
    const { fn, calls } = recorder();
    const held = store.holdNextRead();
    const p = a.getOrSetMany(["m"], fn);
    await flush();
    const g = gated<string>();
    const other = a.getOrSet("m", g.loader);
    await g.started;
    held.resolve();
    await flush();
    g.release("theirs");
    expect(await p).toEqual(["theirs"]);
    expect(await other).toBe("theirs");
    expect(calls).toEqual([]);
  });

  test("a corrupt record among hits: a miss (reported, replaced), loaded; the others are hits; still one read", async () => {
    const { store, a } = await pair({ k1: "one", k2: "two", k3: "three" });
    const full = [...store.records.keys()].find((k) => k.endsWith(":k2"))!;
    store.records.set(full, { record: "LC1|garbage", expires: Infinity });
    const corrupt: string[] = [];
    a.on("l2Corrupt", (e) => corrupt.push(e.key));
    const { fn, calls } = recorder();
    const before = store.reads;
    expect(await a.getOrSetMany(["k1", "k2", "k3"], fn)).toEqual(["one", "v:k2", "three"]);
    expect(corrupt).toEqual(["k2"]);
    expect(calls).toEqual([["k2"]]);
    expect(store.reads - before).toBe(1);
    expect(store.records.get(full)!.record).toMatch(/^LC1\|[^|]+\|\d+\|/); // the loaded value, written over the tombstone
  });

  test("a write of this instance under way: its key waits for it and reads what it left", async () => {
    const { store, a } = await pair({ x: "x0" });
    const held = store.holdNextWrite();
    const setting = a.set("w", "written");
    a.removeLocal("w");
    const { fn, calls } = recorder();
    const p = a.getOrSetMany(["w", "x"], fn);
    await flush();
    held.resolve();
    await setting;
    expect(await p).toEqual(["written", "x0"]);
    expect(calls).toEqual([]);
  });

  test("a removal of this instance still waiting to reach L2: the old record there is a miss, and the key is loaded", async () => {
    const { store, a } = await pair({ k: "old", j: "kept" }, { resilience: { timeoutMs: 0, breakerThreshold: 0 } });
    store.failing = true;
    await a.remove("k"); // L1 dropped; the tombstone waits for a retry
    store.failing = false;
    expect(a.stats().l2Pending).toBe(1);
    const { fn, calls } = recorder();
    expect(await a.getOrSetMany(["k", "j"], fn)).toEqual(["v:k", "kept"]);
    expect(calls).toEqual([["k"]]);
  });

  test("L2 failing: one failed read, then ONE loadMany call — no key reads L2 again; with the breaker open, no read at all", async () => {
    const { store, a } = await pair({}, { resilience: { timeoutMs: 0, breakerThreshold: 1, breakerCooldownMs: 60_000 } });
    const errors: string[] = [];
    a.on("l2Error", (e) => errors.push(e.operation));
    store.failing = true;
    const { fn, calls } = recorder();
    const before = store.reads;
    expect(await a.getOrSetMany(["f1", "f2"], fn)).toEqual(["v:f1", "v:f2"]);
    expect(store.reads - before).toBe(1);
    expect(calls).toEqual([["f1", "f2"]]);
    expect(errors[0]).toBe("get");
    a.clearMemory();
    const shorted = a.stats().l2ShortCircuits;
    expect(await a.getOrSetMany(["f1", "f2", "f3"], fn)).toEqual(["v:f1", "v:f2", "v:f3"]);
    expect(store.reads - before).toBe(1); // the breaker is open: the store is not called
    expect(a.stats().l2ShortCircuits).toBeGreaterThan(shorted);
    expect(calls).toEqual([["f1", "f2"], ["f1", "f2", "f3"]]);
  });

  test("with a subscriber on the getOrSet channel, every key is traced as a getOrSet", async () => {
    const { a } = await pair({ k1: "one" });
    const started: string[] = [];
    const tc = tracingChannel(diagnosticChannels.getOrSet);
    const handlers = {
      start: (c: unknown) => started.push((c as { key: string }).key),
      end() {},
      asyncStart() {},
      asyncEnd() {},
      error() {},
    };
    tc.subscribe(handlers);
    try {
      const { fn } = recorder();
      expect(await a.getOrSetMany(["k1", "k2"], fn)).toEqual(["one", "v:k2"]);
    } finally {
      tc.unsubscribe(handlers);
    }
    expect(started).toEqual(["k1", "k2"]);
  });

  test("getMany: L1, then one L2 read; a remove while it is under way: what was read is returned, not kept in L1", async () => {
    const { store, a } = await pair({ k1: "one", k2: "two", k3: "three" });
    expect(await a.get("k3")).toBe("three"); // now in L1
    const hits: string[] = [];
    a.on("hit", (e) => hits.push(`${e.key}:${e.layer}`));
    const held = store.holdNextRead();
    const before = store.reads;
    const p = a.getMany(["k1", "k2", "k3", "none"]);
    await flush();
    a.removeLocal("k1");
    held.resolve();
    expect(await p).toEqual(["one", "two", "three", undefined]);
    expect(store.reads - before).toBe(1);
    expect(hits).toEqual(["k3:l1", "k1:l2", "k2:l2"]);
    expect(a.stats().entries).toBe(2); // k2 and k3: k1 was not filled from the fenced read
    expect(await a.getMany(["k1", "k2"])).toEqual(["one", "two"]);
    expect(store.reads - before).toBe(2);
  });

  test("single reads and bulk reads of one tick share one store call; past 256 keys a bulk read takes more", async () => {
    const warm = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, i]));
    const { store, a } = await pair(warm);
    const { fn, calls } = recorder();
    const keys = Object.keys(warm);
    let before = store.reads;
    const [one, many, two] = await Promise.all([a.get("k299"), a.getOrSetMany(keys.slice(0, 10), fn), a.getOrSet("k298", async () => "no")]);
    expect([one, many, two]).toEqual([299, keys.slice(0, 10).map((_, i) => i), 298]);
    expect(store.reads - before).toBe(1);
    a.clearMemory();
    before = store.reads;
    expect(await a.getOrSetMany(keys, fn)).toEqual(keys.map((_, i) => i));
    expect(store.reads - before).toBe(2);
    expect(await a.getMany(["k0", "k299", "none"])).toEqual([0, 299, undefined]);
    expect(calls).toEqual([]);
  });

  test("no bulk read is left behind: while it runs it keeps its scope attached; after, fences go and the scope is reclaimed", async () => {
    const { store, a } = await pair({});
    const tmp = a.scope("tmp");
    const ns = namespaceOf(tmp);
    await a.scope("tmp").set("k1", "one");
    tmp.clearMemory();
    expect(ns.attached).toBe(false);
    const { fn } = recorder();
    const held = store.holdNextRead();
    const p = tmp.getOrSetMany(["k1", "k2"], fn);
    await flush();
    expect(ns.attached).toBe(true);
    expect(ns.bulkReads?.size).toBe(1);
    tmp.removeLocal("k2");
    expect(ns.keyFences?.get("k2")).toBeGreaterThan(0);
    held.resolve();
    expect(await p).toEqual(["one", "v:k2"]);
    expect(ns.bulkReads).toBeUndefined();
    expect(ns.keyFences).toBeUndefined();
    expect(ns.tagFences).toBeUndefined();
    tmp.clearMemory();
    expect(ns.attached).toBe(false);
  });

  test("bulk reads that overlap for ever do not let the key fences grow for ever", async () => {
    const { store, a } = await pair({});
    const ns = namespaceOf(a);
    const { fn } = recorder();
    let held = store.holdNextRead();
    let p = a.getOrSetMany(["r0"], fn);
    await flush();
    for (let round = 1; round <= 4; round++) {
      for (let i = 0; i < 1500; i++) a.removeLocal(`gone:${round}:${i}`);
      // The next read starts before the previous one ends: the scope always has one running.
      const nextHeld = store.holdNextRead();
      const next = a.getOrSetMany([`r${round}`], fn);
      await flush();
      held.resolve();
      expect(await p).toEqual([`v:r${round - 1}`]);
      expect(ns.bulkReads?.size).toBe(1);
      expect(ns.keyFences!.size).toBeLessThanOrEqual(3000);
      held = nextHeld;
      p = next;
    }
    held.resolve();
    await p;
    expect(ns.keyFences).toBeUndefined();
  });
});
