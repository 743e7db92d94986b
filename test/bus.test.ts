import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, type Bus, type BusHandlers } from "../src/index.js";
import { BUS_VERSION, decodeMessage, encodeMessage } from "../src/bus/codec.js";
import { MapStore } from "./support/map-store.js";
import { flush } from "./support/helpers.js";
import { pairOnControlledBus } from "./support/buses.js";

function pair(extra: Record<string, unknown> = {}) {
  const bus = new MemoryBus();
  const a = new LayerCache({ bus, ...extra });
  const b = new LayerCache({ bus, ...extra });
  return { bus, a, b };
}

describe("MemoryBus propagation (SPEC 2)", () => {
  test("remove reaches the peer before it resolves", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.set("k", 1);
    await a.remove("k");
    expect(await b.get("k")).toBeUndefined();
    expect(b.stats()).toMatchObject({ peerInvalidations: 1, peerDropped: 1 });
  });

  test("set publishes a remove: peers drop their copy", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.set("k", "b's copy");
    await a.set("k", "a's value");
    expect(await b.get("k")).toBeUndefined();
    expect(await a.get("k")).toBe("a's value");
  });

  test("clear of the cache reaches peers and empties every scope there", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.set("x", 1);
    await b.scope("s").set("y", 2);
    await a.clear();
    expect(await b.get("x")).toBeUndefined();
    expect(await b.scope("s").get("y")).toBeUndefined();
  });

  test("scope clear reaches peers and touches only that scope", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.scope("users").set("1", 1);
    await b.scope("posts").set("1", 1);
    await b.set("1", 1);
    await a.scope("users").clear();
    expect(await b.scope("users").get("1")).toBeUndefined();
    expect(await b.scope("posts").get("1")).toBe(1);
    expect(await b.get("1")).toBe(1);
  });

  test("a scope remove does not touch the same key in another scope of the peer", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.scope("a").set("k", 1);
    await b.scope("b").set("k", 2);
    await b.set("k", 3);
    await a.scope("a").remove("k");
    expect([await b.scope("a").get("k"), await b.scope("b").get("k"), await b.get("k")]).toEqual([undefined, 2, 3]);
  });

  test("removeCached reaches peers", async () => {
    const { a, b } = pair();
    await a.ready();
    const fa = a.cached(async (id: string) => `A${id}`, { key: (id) => `u:${id}` });
    const fb = b.cached(async (id: string) => `B${id}`, { key: (id) => `u:${id}` });
    expect(await fb("1")).toBe("B1");
    await fa.removeCached("1");
    expect(await b.get("u:1")).toBeUndefined();
  });

  test("removeLocal and clearMemory tell nobody", async () => {
    const { a, b } = pair();
    await a.ready();
    await a.set("k", 1);
    await b.set("k", 2); // a drops its copy here
    await a.set("k", 1); // b drops its copy here
    await b.set("j", 2);
    a.removeLocal("k");
    a.clearMemory();
    expect(await b.get("j")).toBe(2);
    expect(b.stats().peerInvalidations).toBe(1);
  });

  test("without an L2, getOrSet publishes nothing (each instance owns its loads)", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.getOrSet("k", () => "b");
    await a.getOrSet("k", () => "a");
    expect(await b.get("k")).toBe("b");
    expect(b.stats().peerInvalidations).toBe(0);
  });

  test("with an L2, a load is published so peers drop older copies and re-read L2", async () => {
    const store = new MapStore();
    const { a, b } = pair({ l2: store });
    await a.ready();
    await b.set("k", "old");
    await a.remove("k");
    await b.getOrSet("k", () => "b-old"); // b holds its own copy
    a.removeLocal("k");
    await a.getOrSet("k", () => "ignored: L2 has b's value"); // L2 hit, no publish
    expect(b.stats().peerInvalidations).toBe(1);
    await a.remove("k");
    await a.getOrSet("k", () => "a-new");
    await flush();
    expect(await b.get("k")).toBe("a-new"); // dropped, then re-read from L2
  });

  test("own messages are ignored", async () => {
    const { a } = pair();
    await a.set("k", 1);
    await a.remove("j");
    expect(a.stats().peerInvalidations).toBe(0);
    expect(await a.get("k")).toBe(1);
  });

  test("three instances on one bus", async () => {
    const bus = new MemoryBus();
    const caches = [0, 1, 2].map(() => new LayerCache({ bus }));
    await Promise.all(caches.map((c) => c.ready()));
    for (const c of caches) await c.getOrSet("k", () => "v");
    await caches[0]!.remove("k");
    for (const c of caches) expect(await c.get("k")).toBeUndefined();
  });

  test("different prefixes on one MemoryBus do not hear each other", async () => {
    const bus = new MemoryBus();
    const a = new LayerCache({ bus, prefix: "app1" });
    const b = new LayerCache({ bus, prefix: "app2" });
    await b.set("k", 1);
    await a.remove("k");
    expect(await b.get("k")).toBe(1);
  });

  test("a closed instance leaves the bus", async () => {
    const { a, b } = pair();
    await a.ready();
    await b.ready();
    await b.close();
    await a.remove("k"); // nobody to deliver to; must not throw
  });
});

describe("message codec", () => {
  test("round trip; carries sender, op, scope and keys — never a value", () => {
    const text = encodeMessage({ from: "abc", op: "remove", scope: ["users"], keys: ["1", "2"], gen: "g1", at: 1234 });
    expect(JSON.parse(text)).toEqual([BUS_VERSION, "abc", "remove", ["users"], ["1", "2"], "g1", 1234]);
    expect(decodeMessage(text)).toEqual({ ok: true, message: { from: "abc", op: "remove", scope: ["users"], keys: ["1", "2"], gen: "g1", at: 1234 } });
  });

  test("signed messages verify with the secret and are refused without it or when forged", () => {
    const secret = new TextEncoder().encode("s3cret");
    const other = new TextEncoder().encode("guess");
    const signed = encodeMessage({ from: "abc", op: "clear", scope: [], keys: [], at: Date.now() }, secret);
    expect(decodeMessage(signed, secret).ok).toBe(true);
    expect(decodeMessage(signed, other)).toEqual({ ok: false, reason: "forged" });
    const unsigned = encodeMessage({ from: "abc", op: "clear", scope: [], keys: [], at: Date.now() });
    expect(decodeMessage(unsigned, secret)).toEqual({ ok: false, reason: "unsigned" });
    const tampered = signed.replace('"clear"', '"remove"');
    expect(decodeMessage(tampered, secret).ok).toBe(false);
  });

  test("a signed message far from the receiver's clock is refused as a replay", () => {
    const secret = new TextEncoder().encode("s3cret");
    const old = encodeMessage({ from: "abc", op: "clear", scope: [], keys: [], at: Date.now() - 6 * 60_000 }, secret);
    expect(decodeMessage(old, secret)).toEqual({ ok: false, reason: "replayed" });
    expect(decodeMessage(old).ok).toBe(true); // without a secret there is nothing to trust anyway
  });

  test.each([
    ["not json", "}{"],
    ["not an array", '{"v":1}'],
    ["too short", "[1,\"a\",\"remove\"]"],
    ["bad op", '[1,"a","drop",[],["k"],null,1]'],
    ["bad scope", '[1,"a","remove","users",["k"],null,1]'],
    ["bad keys", '[1,"a","remove",[],[1],null,1]'],
    ["no keys on remove", '[1,"a","remove",[],[],null,1]'],
    ["empty sender", '[1,"","remove",[],["k"],null,1]'],
    ["bad generation", '[1,"a","remove",[],["k"],5,1]'],
    ["no send time", '[1,"a","remove",[],["k"],null]'],
    ["too long", '[1,"a","remove",[],["k"],null,1,"sig","extra"]'],
  ])("malformed: %s", (_name, text) => {
    expect(decodeMessage(text)).toEqual({ ok: false, reason: "malformed" });
  });

  test("another version is refused as such", () => {
    expect(decodeMessage('[2,"a","remove",[],["k"],null,1]')).toEqual({ ok: false, reason: "version" });
  });
});

/** A bus whose raw channel the test can write to, as an attacker or a broken peer would. */
class TapBus implements Bus {
  handlers: BusHandlers[] = [];
  async connect(_channel: string, handlers: BusHandlers) {
    this.handlers.push(handlers);
    return { publish: async (m: string) => this.handlers.forEach((h) => h.onMessage(m)), close: async () => {} };
  }
  inject(text: string): void {
    this.handlers.forEach((h) => h.onMessage(text));
  }
  reconnect(): void {
    this.handlers.forEach((h) => h.onReconnect());
  }
}

describe("bad and forged bus messages (SPEC 6)", () => {
  test("malformed, other-version and forged messages are dropped and counted; nothing changes", async () => {
    const bus = new TapBus();
    const cache = new LayerCache({ bus, busSecret: "shared" });
    const dropped: string[] = [];
    cache.on("busMessageDropped", (e) => dropped.push(e.reason));
    await cache.set("k", 1);
    bus.inject("garbage");
    bus.inject('[2,"x","remove",[],["k"],null,1]');
    bus.inject(encodeMessage({ from: "x", op: "remove", scope: [], keys: ["k"], at: Date.now() })); // unsigned
    bus.inject(encodeMessage({ from: "x", op: "remove", scope: [], keys: ["k"], at: Date.now() }, new TextEncoder().encode("wrong")));
    expect(await cache.get("k")).toBe(1);
    expect(dropped).toEqual(["malformed", "version", "unsigned", "forged"]);
    expect(cache.stats().busMessagesDropped).toBe(4);
    // A correctly signed message is obeyed.
    bus.inject(encodeMessage({ from: "x", op: "remove", scope: [], keys: ["k"], at: Date.now() }, new TextEncoder().encode("shared")));
    expect(await cache.get("k")).toBeUndefined();
  });

  test("two instances with the same busSecret talk; one with another secret is ignored", async () => {
    const bus = new MemoryBus();
    const a = new LayerCache({ bus, busSecret: "s" });
    const b = new LayerCache({ bus, busSecret: "s" });
    const intruder = new LayerCache({ bus, busSecret: "not-s" });
    await Promise.all([a.ready(), b.ready(), intruder.ready()]);
    await b.set("k", 1);
    await intruder.remove("k");
    expect(await b.get("k")).toBe(1);
    expect(b.stats().busMessagesDropped).toBe(1);
    await a.remove("k");
    expect(await b.get("k")).toBeUndefined();
  });

  test("a bus reconnect marks L1 for revalidation: values from before the gap are not served as fresh", async () => {
    const bus = new TapBus();
    const cache = new LayerCache({ bus });
    const events: unknown[] = [];
    cache.on("busReconnect", (e) => events.push(e));
    await cache.set("k", "before-gap");
    await cache.scope("s").set("k", "before-gap");
    bus.reconnect();
    expect(events).toEqual([{ entries: 2 }]);
    expect(await cache.get("k")).toBeUndefined();
    expect(await cache.getOrSet("k", () => "revalidated")).toBe("revalidated");
    expect(await cache.get("k")).toBe("revalidated");
    // The old value is still a fail-safe fallback if revalidation fails.
    expect(await cache.scope("s").getOrSet("k", () => Promise.reject(new Error("down")))).toBe("before-gap");
  });
});

describe("publishing when the bus fails (SPEC 5)", () => {
  const setup = () => pairOnControlledBus({ timeoutMs: 100, breakerThreshold: 2, breakerCooldownMs: 500 });

  test("a failed invalidation is reported, queued, and republished once the bus works: the peer drops its copy then", async () => {
    const { clock, bus, a, b } = await setup();
    const errors: string[] = [];
    a.on("busError", (e) => errors.push(e.operation));
    await b.set("k", "old");
    bus.mode = "fail";
    await a.remove("k");
    expect(errors).toEqual(["publish"]);
    expect(a.stats().busPending).toBe(1);
    expect(await b.get("k")).toBe("old"); // not told yet
    bus.mode = "ok";
    await clock.advanceAsync(1_000);
    await flush();
    expect(a.stats().busPending).toBe(0);
    expect(await b.get("k")).toBeUndefined();
  });

  test("a hanging publish costs at most the bus timeout; after `threshold` failures the breaker stops waiting, and the queue goes out after its cooldown", async () => {
    const { clock, bus, a } = await setup();
    bus.mode = "hang";
    const settled = (p: Promise<unknown>) => {
      const s = { done: false };
      void p.then(() => (s.done = true));
      return s;
    };
    for (let i = 0; i < 2; i++) {
      const s = settled(a.remove(`k${i}`));
      await flush();
      expect(s.done).toBe(false);
      clock.advance(100); // the bus timeout
      await flush();
      expect(s.done).toBe(true);
    }
    const before = bus.publishes;
    const open = settled(a.remove("k2"));
    await flush();
    expect(open.done).toBe(true); // breaker open: queued, not waited on
    expect(bus.publishes).toBe(before);
    bus.mode = "ok";
    // After the cooldown the next retry (backoff at most 5 s) is the probe; it closes the breaker.
    for (let t = 0; t < 5_500; t += 250) await clock.advanceAsync(250);
    expect(a.stats().busPending).toBe(0);
    expect(bus.publishes).toBeGreaterThan(before);
  });
});
