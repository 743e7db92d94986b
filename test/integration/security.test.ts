import { afterAll, describe, expect, inject, test } from "vitest";
import { Redis } from "ioredis";
import { FakeClock, LayerCache } from "../../src/index.js";
import { decodeMessage, encodeMessage } from "../../src/bus/codec.js";
import { encodeRecord } from "../../src/l2/envelope.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { eventually, PATIENT, rawClientClosedAfterAll, uniquePrefix } from "../support/redis-clients.js";

/**
 * Hostile neighbours on a shared redis-server: someone publishing on our channel without the
 * secret, someone writing prototype-pollution payloads into our keys, another application (prefix)
 * and another scope using the same key names.
 */
const url = inject("redisUrl");
const raw = rawClientClosedAfterAll(url);
const opened: { close(): Promise<unknown> }[] = [];
afterAll(async () => {
  for (const o of opened.reverse()) await o.close();
});

function instance(prefix: string, extra: Record<string, unknown> = {}): LayerCache {
  const client = new Redis(url);
  const cache = new LayerCache({ prefix, l2: new RedisStore({ client, ...PATIENT }), bus: new RedisBus({ client, ...PATIENT }), ...extra });
  opened.push({ close: () => client.quit() }, cache);
  return cache;
}

/** Waits until `cache` has processed everything published on its channel so far. */
async function barrier(from: LayerCache, to: LayerCache): Promise<void> {
  const key = `barrier-${Math.random()}`;
  await to.set(key, 1); // a set publishes a "remove"; `to` ignores its own message
  await from.getOrSet(key, () => 0);
  await to.set(key, 2);
  await eventually(async () => (await from.get(key)) === 2);
}

describe("HMAC-signed bus", () => {
  test("messages from a client without the secret change nothing, and a captured message cannot be replayed later", async () => {
    const prefix = uniquePrefix();
    const clock = new FakeClock(Date.now());
    const options = { busSecret: "correct horse", clock, ttl: "1h" };
    const [a, b] = [instance(prefix, options), instance(prefix, options)];
    await Promise.all([a.ready(), b.ready()]);
    const sniffer = new Redis(url);
    opened.push({ close: () => sniffer.quit() });
    const captured: string[] = [];
    await sniffer.subscribe(`${prefix}:bus`);
    sniffer.on("message", (_channel: string, text: string) => captured.push(text));

    await b.set("k", "kept");
    await b.scope("s").set("k", "kept");
    await b.set("r", "first");
    expect(await a.get("k")).toBe("kept");
    expect(await a.scope("s").get("k")).toBe("kept");
    expect(await a.get("r")).toBe("first");
    const invalidations: unknown[] = [];
    a.on("peerInvalidation", (e) => invalidations.push(e));

    // A legitimate message to learn from: its signature must not fit any other content.
    const namesR = (t: string): boolean => {
      const d = decodeMessage(t);
      return d.ok && d.message.keys.includes("r");
    };
    await b.remove("r");
    await eventually(() => captured.some(namesR));
    await eventually(async () => (await a.get("r")) === undefined);
    invalidations.length = 0;
    const legit = captured.find(namesR)!;
    const parsed = JSON.parse(legit) as unknown[];

    const now = clock.now();
    const attacks = [
      encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: now }),
      encodeMessage({ from: "intruder", op: "clear", scope: [], keys: [], at: now }),
      encodeMessage({ from: "intruder", op: "update", scope: ["s"], keys: ["k"], gen: "x", at: now }),
      encodeMessage({ from: "intruder", op: "remove", scope: [], keys: ["k"], at: now }, new TextEncoder().encode("guess")),
      // The captured signature on other keys, another scope, or another operation.
      JSON.stringify([...parsed.slice(0, 4), ["k"], ...parsed.slice(5)]),
      JSON.stringify([...parsed.slice(0, 3), ["s"], ...parsed.slice(4)]),
      JSON.stringify([parsed[0], parsed[1], "clear", ...parsed.slice(3)]),
      "garbage",
      "[1]",
      "x".repeat(100_000),
    ];
    for (const text of attacks) await raw.publish(`${prefix}:bus`, text);
    await raw.publish(`${prefix}:bus`, Buffer.from([0xff, 0xfe, 0x00, 0xc3]));
    await eventually(() => a.stats().busMessagesDropped >= attacks.length + 1);
    expect(a.stats().busMessagesDropped).toBe(attacks.length + 1);
    expect(invalidations).toEqual([]);
    expect(await a.get("k")).toBe("kept");
    expect(await a.scope("s").get("k")).toBe("kept");

    // Six minutes later (the window is five), the captured message is refused as a replay.
    await b.set("r", "again");
    await eventually(async () => (await a.get("r")) === "again");
    clock.advance(6 * 60_000);
    const reasons: string[] = [];
    a.on("busMessageDropped", (e) => reasons.push(e.reason));
    await raw.publish(`${prefix}:bus`, legit);
    await eventually(() => reasons.length === 1);
    expect(reasons).toEqual(["replayed"]);
    expect(await a.get("r")).toBe("again");

    // And the real peer still gets through.
    await b.remove("k");
    await eventually(async () => (await a.get("k")) === undefined);
  });
});

describe("prototype pollution", () => {
  const payloads = [
    '{"__proto__":{"polluted":"yes"},"ok":1}',
    '{"constructor":{"prototype":{"polluted":"yes"}},"ok":1}',
    '{"\\u005f\\u005fproto\\u005f\\u005f":{"polluted":"yes"},"ok":1}',
    '{"\\u0063onstructor":{"prototype":{"polluted":"yes"}},"ok":1}',
    '{"ok":1,"nested":[{"__proto__":{"polluted":"yes"}},{"a":{"constructor":{"prototype":{"polluted":"yes"}}}}]}',
  ];

  test.each(payloads)("%s written into L2 by someone else is inert", async (payload) => {
    const prefix = uniquePrefix();
    const cache = instance(prefix);
    const record = encodeRecord("g", { born: Date.now(), ttl: 60_000, maxStale: 0, failSafe: 0 }, payload);
    await raw.set(`${prefix}::k`, record);
    await raw.set(`${prefix}:s:k`, record);
    const getUser = cache.cached(async (id: string) => ({ id }), { key: (id) => id });
    const reads = [await cache.get("k"), await cache.getOrSet("k", () => ({ ok: 0 })), await cache.scope("s").get("k"), await getUser("k")];
    for (const v of reads) {
      const o = v as Record<string, unknown>;
      expect(o.ok).toBe(1);
      expect(Object.getPrototypeOf(o)).toBe(Object.prototype);
      expect(Object.keys(o)).not.toContain("__proto__");
      expect(o.polluted).toBeUndefined();
      expect(JSON.stringify(v)).not.toContain("polluted");
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty("polluted");
  });

  test("keys, scope names and bus messages named __proto__ / constructor are ordinary names", async () => {
    const prefix = uniquePrefix();
    const [a, b] = [instance(prefix), instance(prefix)];
    for (const name of ["__proto__", "constructor", "prototype", "hasOwnProperty", "toString"]) {
      await a.set(name, `root ${name}`);
      await a.scope(name).set(name, `scoped ${name}`);
      expect(await b.get(name)).toBe(`root ${name}`);
      expect(await b.scope(name).get(name)).toBe(`scoped ${name}`);
      await a.scope(name).remove(name);
      await eventually(async () => (await b.scope(name).get(name)) === undefined);
      expect(await b.get(name)).toBe(`root ${name}`);
    }
    await raw.publish(`${prefix}:bus`, encodeMessage({ from: "x", op: "clear", scope: ["__proto__", "constructor"], keys: [], at: Date.now() }));
    await raw.publish(`${prefix}:bus`, encodeMessage({ from: "x", op: "remove", scope: ["__proto__"], keys: ["__proto__"], at: Date.now() }));
    await barrier(b, a);
    expect(await b.get("__proto__")).toBe("root __proto__");
    expect(Object.prototype).not.toHaveProperty("polluted");
  });
});

const at = (c: LayerCache, path: string[]) => path.reduce<LayerCache | ReturnType<LayerCache["scope"]>>((s, n) => s.scope(n), c);

describe("two applications (prefixes) on one Redis", () => {
  // Pairs that would collide if prefix, scope and key were simply joined with ":".
  const pairs: [string, string, string[], string[]][] = [
    ["app", "app:s", ["s"], []],
    ["app", "app:", [], []],
    ["a:b", "a", [], ["b"]],
    ["a%3Ab", "a:b", [], []],
    ["a/b", "a", [], ["b"]],
    ["app", "app:bus", [], []],
  ];

  test.each(pairs)("%j and %j never see each other's keys or messages", async (p1, p2, scope1, scope2) => {
    const base = uniquePrefix();
    const [one, onePeer, two] = [instance(`${base}${p1}`), instance(`${base}${p1}`), instance(`${base}${p2}`)];
    const heard: unknown[] = [];
    onePeer.on("peerInvalidation", (e) => e.keys.every((k) => k.startsWith("barrier-")) || heard.push(e));
    await at(one, scope1).set("k", "one");
    expect(await at(onePeer, scope1).get("k")).toBe("one");
    // The other application sees nothing under any of the names involved...
    for (const path of [scope1, scope2, [], ["s"], ["b"]]) expect(await at(two, path).get("k")).toBeUndefined();
    // ...and its writes and invalidations of the same names reach nothing of the first: not its
    // L2 records, not its instances' L1 (no message crosses over).
    await at(two, scope2).set("k", "two");
    await at(two, scope1).remove("k");
    await two.clear();
    await barrier(onePeer, one);
    expect(heard).toEqual([]);
    expect(await at(onePeer, scope1).get("k")).toBe("one");
    onePeer.clearMemory();
    expect(await at(onePeer, scope1).get("k")).toBe("one");
    expect(await at(two, scope2).get("k")).toBe(scope1.join("/") === scope2.join("/") ? undefined : "two");
  });
});

describe("scopes", () => {
  // Names chosen so that naive "scope:key" joining would make them the same L2 key.
  const cases: [string[], string, string[], string][] = [
    [["users"], "1", ["admins"], "1"],
    [[], "users:1", ["users"], "1"],
    [["a", "b"], "k", ["a/b"], "k"],
    [["a"], "b:k", ["a:b"], "k"],
    [["a:"], "k", ["a"], ":k"],
    [["%3A"], "k", [":"], "k"],
    [["a"], "k", ["a", "a"], "k"],
  ];

  test.each(cases)("scope %j key %j and scope %j key %j are separate in L1, L2 and on the bus", async (s1, k1, s2, k2) => {
    const prefix = uniquePrefix();
    const [a, b] = [instance(prefix), instance(prefix)];
    await at(a, s1).set(k1, "first");
    expect(await at(b, s2).get(k2)).toBeUndefined();
    await at(a, s2).set(k2, "second");
    // b reads both from L2 (its L1 has neither).
    expect(await at(b, s1).get(k1)).toBe("first");
    expect(await at(b, s2).get(k2)).toBe("second");
    await at(a, s2).remove(k2);
    await eventually(async () => (await at(b, s2).get(k2)) === undefined);
    expect(await at(b, s1).get(k1)).toBe("first");
    expect(await at(a, s1).get(k1)).toBe("first");
  });

  test("clearing a scope drops that scope (and scopes nested in it) on every instance, nothing else", async () => {
    const prefix = uniquePrefix();
    const [a, b] = [instance(prefix), instance(prefix)];
    const names = [["a"], ["a", "b"], ["ab"], ["a/b"], ["a:b"], []];
    // Without an L2 copy (removed underneath), only L1 could answer: that is what clear must drop.
    for (const path of names) {
      await at(a, path).set("k", path.join("|"));
      expect(await at(b, path).get("k")).toBe(path.join("|"));
    }
    await raw.del(await raw.keys(`${prefix}:*`));
    await a.scope("a").clear();
    await eventually(async () => (await b.scope("a").get("k")) === undefined);
    expect(await b.scope("a").scope("b").get("k")).toBeUndefined();
    for (const path of [["ab"], ["a/b"], ["a:b"], []]) expect(await at(b, path).get("k")).toBe(path.join("|"));
  });
});
