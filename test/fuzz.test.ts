import fc from "fast-check";
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, SerializationError, jsonSerializer } from "../src/index.js";
import { decodeMessage, encodeMessage, type BusMessage } from "../src/bus/codec.js";
import { decodeRecord, encodeRecord } from "../src/l2/envelope.js";
import { flush } from "./support/helpers.js";
import { MapStore } from "./support/map-store.js";

/**
 * Property-based tests (fast-check): random and hostile input through the public API, L2 and the
 * bus. On failure fast-check prints the seed and the shrunk counterexample; replay it with
 * `FUZZ_SEED=<seed> npx vitest run test/fuzz.test.ts`. `FUZZ_RUNS` raises the number of cases.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const params = { numRuns: RUNS, ...(process.env.FUZZ_SEED ? { seed: Number(process.env.FUZZ_SEED) } : {}) };

/** Fails instead of hanging: every public call must settle on its own (the clock is fake; the 10 s of real time only guard against a hang, with room for a busy machine). */
function settles<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)));
  return Promise.race([p, hang]).finally(() => clearTimeout(timer));
}

/** Runs `f`, turning a synchronous throw into a rejection, and reports how it ended. */
async function outcome(f: () => unknown): Promise<{ ok: true; value: unknown } | { ok: false; error: unknown }> {
  try {
    return { ok: true, value: await settles(Promise.resolve().then(f), "call") };
  } catch (error) {
    if (error instanceof Error && error.message.includes("did not settle")) throw error;
    return { ok: false, error };
  }
}

const isValidKey = (k: unknown, max = 1024): k is string => typeof k === "string" && k.length > 0 && k.length <= max && k.isWellFormed();

/** Keys: mostly strings (any code unit, lone surrogates included, some too long), some not strings at all. */
const anyKey: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: fc.string({ unit: "binary", maxLength: 40 }), weight: 4 },
  { arbitrary: fc.string({ unit: fc.constantFrom("\uD800", "\uDFFF", "a", ":", "/", "%", "|", "\u0000"), maxLength: 8 }), weight: 2 },
  { arbitrary: fc.integer({ min: 1020, max: 1030 }).map((n) => "x".repeat(n)), weight: 1 },
  { arbitrary: fc.anything(), weight: 2 },
  // Objects that throw when turned into text: error messages must not call into them.
  { arbitrary: fc.constantFrom<unknown>({ toString: 0 }, { [Symbol.toPrimitive]: () => { throw new Error("no"); } }, Object.create(null), Symbol("k")), weight: 1 },
);

function pair(o: Partial<ConstructorParameters<typeof LayerCache>[0]> = {}) {
  const clock = new FakeClock(1_000_000);
  const store = new MapStore(() => clock.now());
  const bus = new MemoryBus();
  const a = new LayerCache({ clock, l2: store, bus, ...o });
  const b = new LayerCache({ clock, l2: store, bus, ...o });
  return { clock, store, bus, a, b };
}

describe("fuzz: keys through the public API", () => {
  test("every operation accepts exactly the valid keys; anything else is a TypeError naming the key, and nothing else is lost", async () => {
    const { a, b } = pair();
    await a.set("sentinel", { kept: true });
    const ops = ["get", "set", "getOrSet", "remove", "removeLocal", "scope", "cached"] as const;
    await fc.assert(
      fc.asyncProperty(anyKey, fc.constantFrom(...ops), async (key, op) => {
        const r = await outcome(() => {
          if (op === "get") return a.get(key as string);
          if (op === "set") return a.set(key as string, 1);
          if (op === "getOrSet") return a.getOrSet(key as string, () => 2);
          if (op === "remove") return a.remove(key as string);
          if (op === "removeLocal") return a.removeLocal(key as string);
          if (op === "scope") return a.scope(key as string).set("k", 3);
          return a.cached((x: number) => x, { key: () => key as string })(4);
        });
        if (isValidKey(key)) {
          expect(r.ok, `${op}(${JSON.stringify(key)}) failed: ${r.ok ? "" : String(r.error)}`).toBe(true);
        } else {
          expect(r.ok, `${op} accepted an invalid key`).toBe(false);
          const error = (r as { error: unknown }).error;
          expect(error).toBeInstanceOf(TypeError);
          if (op !== "scope") expect(Object.is((error as { key?: unknown }).key, key)).toBe(true);
        }
        expect(await a.get("sentinel")).toEqual({ kept: true });
      }),
      params,
    );
    expect(await b.get("sentinel")).toEqual({ kept: true });
  });

  test("keys that differ only in characters that matter to the L2 layout never share a record", async () => {
    // ":" "/" "%" separate prefix, scope and key in L2; lone surrogates are refused (see above).
    const part = fc.string({ unit: fc.constantFrom("a", ":", "/", "%", "%3A", "%2F"), minLength: 1, maxLength: 5 });
    // Half the cases are built to collide under naive joining: "scope:key" split again at another ":".
    const resplit = fc.tuple(part, part, fc.nat()).map(([s, k, at]): [[string, string], [string, string]] => {
      const joined = `${s}:${k}`;
      const cuts = [...joined].flatMap((c, i) => (c === ":" && i > 0 && i < joined.length - 1 ? [i] : []));
      const cut = cuts[at % cuts.length]!;
      return [[s, k], [joined.slice(0, cut), joined.slice(cut + 1)]];
    });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.tuple(fc.tuple(part, part), fc.tuple(part, part)), resplit), async ([[s1, k1], [s2, k2]]) => {
        fc.pre(s1 !== s2 || k1 !== k2);
        const { a, b } = pair();
        await a.scope(s1).set(k1, "one");
        await a.scope(s2).set(k2, "two");
        // b has nothing in L1: both reads come from L2.
        expect(await b.scope(s1).get(k1)).toBe(s1 === s2 && k1 === k2 ? "two" : "one");
        expect(await b.scope(s2).get(k2)).toBe("two");
      }),
      params,
    );
  });
});

describe("fuzz: cached functions without a key function", () => {
  const hostile = fc.constantFrom<unknown>(
    { toJSON: () => { throw new Error("no"); } },
    { toJSON: () => { throw "not an error"; } },
    Object.defineProperty({}, "x", { enumerable: true, get: () => { throw new Error("getter"); } }),
    { toString: 0, valueOf: null },
    new Proxy({}, { ownKeys: () => { throw new Error("proxy"); } }),
  );
  const arg = fc.oneof(
    { arbitrary: fc.anything({ withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true, withSparseArray: true, withNullPrototype: true, withBoxedValues: true }), weight: 8 },
    { arbitrary: fc.string({ unit: "binary" }), weight: 2 },
    { arbitrary: hostile, weight: 1 },
  );

  test("any arguments: a derived key that is stable for the same arguments, or a TypeError — the function still works after", async () => {
    const cache = new LayerCache({ clock: new FakeClock(0) });
    let calls = 0;
    const f = cache.cached(function lookup(...args: unknown[]) {
      calls++;
      return args.length;
    });
    await fc.assert(
      fc.asyncProperty(fc.array(arg, { maxLength: 3 }), async (args) => {
        let key: string | undefined;
        try {
          key = f.cacheKey(...args);
        } catch (error) {
          expect(error).toBeInstanceOf(TypeError);
        }
        const r = await outcome(() => f(...args));
        if (key === undefined) {
          expect(!r.ok && r.error instanceof TypeError).toBe(true);
          return;
        }
        expect(isValidKey(key)).toBe(true);
        expect(f.cacheKey(...args)).toBe(key);
        expect(r.ok && r.value).toBe(args.length);
        const before = calls;
        expect(await f(...args)).toBe(args.length);
        expect(calls).toBe(before); // the second call is a hit on the same key
      }),
      params,
    );
    expect(await f("still", "fine")).toBe(2);
  });
});

describe("fuzz: values", () => {
  const value = fc.oneof(
    { arbitrary: fc.anything({ withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true, withSparseArray: true, withNullPrototype: true, withBoxedValues: true, withObjectString: true }), weight: 6 },
    { arbitrary: fc.constantFrom<unknown>(undefined, null, NaN, -0, Infinity, () => 1, Symbol("s"), { f: () => 1 }, [Symbol("x")]), weight: 1 },
    { arbitrary: fc.json().map((t) => JSON.parse(t) as unknown), weight: 2 },
  );

  test("set: stored in L1 as given; in L2 exactly as the serializer round-trips it, or a SerializationError and no L2 copy", async () => {
    const { a, b } = pair();
    let i = 0;
    await fc.assert(
      fc.asyncProperty(value, async (v) => {
        const key = `v${i++}`;
        await a.set(key, "previous");
        const r = await outcome(() => a.set(key, v));
        if (v === undefined) {
          expect(!r.ok && r.error instanceof TypeError).toBe(true);
          expect(await b.get(key)).toBe("previous");
          return;
        }
        expect(await a.get(key)).toBe(v);
        let encoded: string | undefined;
        try {
          encoded = jsonSerializer.serialize(v);
        } catch {
          encoded = undefined;
        }
        if (encoded === undefined) {
          expect(!r.ok && r.error instanceof SerializationError, String(!r.ok && r.error)).toBe(true);
          expect(await b.get(key)).toBeUndefined();
        } else {
          expect(r.ok, String(!r.ok && r.error)).toBe(true);
          expect(await b.get(key)).toEqual(jsonSerializer.deserialize(encoded));
        }
      }),
      params,
    );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test("getOrSet with any loader outcome: the caller gets the value or the loader's own error, and the cache keeps working", async () => {
    const { a } = pair({ failSafe: 0 });
    let i = 0;
    const behaviour = fc.oneof(
      value.map((v) => ({ kind: "return" as const, v })),
      value.map((v) => ({ kind: "resolve" as const, v })),
      value.map((v) => ({ kind: "throw" as const, v })),
      value.map((v) => ({ kind: "reject" as const, v })),
    );
    await fc.assert(
      fc.asyncProperty(behaviour, async (b) => {
        const key = `l${i++}`;
        const r = await outcome(() =>
          a.getOrSet(key, () => {
            if (b.kind === "return") return b.v;
            if (b.kind === "resolve") return Promise.resolve(b.v);
            if (b.kind === "throw") throw b.v;
            return Promise.reject(b.v);
          }),
        );
        if (b.kind === "return" || b.kind === "resolve") {
          expect(r.ok).toBe(true);
          expect((r as { value: unknown }).value).toBe(b.v);
        } else {
          expect(r.ok).toBe(false);
          expect(Object.is((r as { error: unknown }).error, b.v)).toBe(true);
        }
        expect(await a.getOrSet(`after-${key}`, () => "fine")).toBe("fine");
      }),
      params,
    );
  });
});

describe("fuzz: options", () => {
  const durationish = fc.oneof(
    fc.integer({ min: -5, max: 100_000 }),
    fc.double(),
    fc.constantFrom("1m", "30s", "500ms", "1h", "-5s", "", " ", "abc", "1e3", "Infinity", "10 minutes", "NaN", "0"),
    fc.anything(),
  );
  const names = ["ttl", "refresh", "maxStale", "failSafe", "hardTimeout", "softTimeout", "refreshAhead", "jitter", "maxEntries", "maxBytes", "prefix", "refreshConcurrency", "refreshCooldown", "maxKeyLength", "maxValueBytes", "busSecret", "logger", "l2", "bus", "serializer", "clock", "key", "name", "bogus", "__proto__", "constructor", "toString"];
  const optionValue = fc.oneof(durationish, fc.constantFrom("foreground", "background", 0.5, 2, -1, null, {}, [], true));
  const options = fc.dictionary(fc.constantFrom(...names), optionValue, { maxKeys: 4 });

  const tally = { accepted: 0, refused: 0 };
  const created = async (create: () => unknown, o: Record<string, unknown>, use: (made: unknown) => Promise<unknown>): Promise<void> => {
    let made: unknown;
    try {
      made = create();
      tally.accepted++;
    } catch (error) {
      tally.refused++;
      expect(error).toBeInstanceOf(TypeError);
      // An error about a value names the option (a plain object of options is given here).
      const option = (error as { option?: string }).option;
      if (option !== undefined) expect(Object.keys(o)).toContain(option);
      return;
    }
    // Accepted options must work: no late TypeError on a request (SPEC 3).
    await settles(Promise.resolve(use(made)), "first use");
  };

  test("new LayerCache(random options): a TypeError naming an option, or a cache that works", async () => {
    await fc.assert(
      fc.asyncProperty(options, async (o) => {
        const clock = new FakeClock(0);
        await created(
          () => new LayerCache({ clock, ...o } as never),
          o,
          async (c) => {
            const cache = c as LayerCache;
            expect(await cache.getOrSet("k", () => "v")).toBe("v");
            await cache.close();
          },
        );
      }),
      params,
    );
  });

  test("scope, cached and per-call options: a TypeError naming an option, or it works", async () => {
    const cache = new LayerCache({ clock: new FakeClock(0) });
    let i = 0;
    await fc.assert(
      fc.asyncProperty(options, fc.constantFrom("scope", "cached", "call"), async (o, level) => {
        const key = `o${i++}`;
        if (level === "scope") {
          await created(() => cache.scope(key, o as never), o, async (s) => expect(await (s as LayerCache).getOrSet("k", () => "v")).toBe("v"));
        } else if (level === "cached") {
          await created(
            () => cache.cached(function named(x: string) { return x; }, o as never),
            o,
            async (f) => {
              // A user-supplied `key` that is not a function is a TypeError at creation; a function is used as is.
              const r = await outcome(() => (f as (x: string) => Promise<string>)(key));
              if (!r.ok) expect(r.error).toBeInstanceOf(TypeError);
            },
          );
        } else {
          const r = await outcome(() => cache.getOrSet(key, () => "v", o as never));
          if (r.ok) expect(r.value).toBe("v");
          else {
            expect(r.error).toBeInstanceOf(TypeError);
            const option = (r.error as { option?: string }).option;
            if (option !== undefined) expect(Object.keys(o)).toContain(option);
          }
        }
        expect(await cache.getOrSet(`after-${key}`, () => "fine")).toBe("fine");
      }),
      params,
    );
    expect(tally.accepted).toBeGreaterThan(RUNS / 10);
    expect(tally.refused).toBeGreaterThan(RUNS / 10);
  });
});

describe("fuzz: L2 payloads", () => {
  const valid = (payload = '{"a":1}') => encodeRecord("g1", { born: 1_000_000, ttl: 60_000, maxStale: 0, failSafe: 300_000 }, payload);
  const numberish = fc.oneof(fc.integer(), fc.double(), fc.constantFrom("", "-", "NaN", "Infinity", "-1", "1e400", " 5", "0x10", "9".repeat(30)));
  const payload = fc.oneof(
    fc.json(),
    fc.string({ unit: "binary" }),
    fc.constantFrom(
      '{"__proto__":{"polluted":1}}',
      '{"constructor":{"prototype":{"polluted":1}}}',
      '{"\\u005f_proto__":{"polluted":1}}',
      '[{"__proto__":{"polluted":1}}]',
      '{"a":{"constructor":{"prototype":{"polluted":1}}}}',
      "{",
      "",
      "undefined",
    ),
  );
  const record = fc.oneof(
    fc.json().map((p) => valid(p)),
    fc.string({ unit: "binary", maxLength: 60 }),
    fc.tuple(fc.constantFrom("LC1", "LC2", "LC0", "lc1", ""), fc.string({ maxLength: 4 }), numberish, numberish, numberish, numberish, payload).map((f) => f.join("|")),
    // A valid record with one edit: a character replaced, inserted or removed, or the text cut.
    fc.tuple(payload, fc.nat(), fc.constantFrom("replace", "insert", "delete", "cut"), fc.string({ unit: "binary", minLength: 1, maxLength: 1 })).map(([p, at, edit, ch]) => {
      const text = valid(p);
      const i = at % text.length;
      if (edit === "replace") return text.slice(0, i) + ch + text.slice(i + 1);
      if (edit === "insert") return text.slice(0, i) + ch + text.slice(i);
      if (edit === "delete") return text.slice(0, i) + text.slice(i + 1);
      return text.slice(0, i);
    }),
  );

  test("get and getOrSet on any L2 text: a value, or a miss with an l2Corrupt event and the text gone — never a throw", async () => {
    const { a, store, clock } = pair();
    const seen = { corrupt: 0, decodable: 0, fresh: 0 };
    let corrupt = 0;
    a.on("l2Corrupt", () => corrupt++);
    let i = 0;
    await fc.assert(
      fc.asyncProperty(record, fc.boolean(), async (text, viaGetOrSet) => {
        const key = `p${i++}`;
        const full = `layercache::${key}`;
        store.poke(full, text);
        let decodable = true;
        let fresh: { value: unknown } | undefined;
        try {
          const rec = decodeRecord(text);
          if (rec.payload !== undefined) {
            const value = jsonSerializer.deserialize(rec.payload);
            if (rec.born <= clock.now() && clock.now() < rec.born + rec.times!.ttl) fresh = { value };
          }
        } catch {
          decodable = false;
        }
        seen[decodable ? (fresh ? "fresh" : "decodable") : "corrupt"]++;
        const before = corrupt;
        const r = await outcome(() => (viaGetOrSet ? a.getOrSet(key, () => "loaded") : a.get(key)));
        expect(r.ok, String(!r.ok && r.error)).toBe(true);
        if (!decodable) {
          expect(corrupt).toBe(before + 1);
          expect(store.data.get(full)?.record).not.toBe(text);
          expect((r as { value: unknown }).value).toBe(viaGetOrSet ? "loaded" : undefined);
        }
        if (fresh) expect((r as { value: unknown }).value).toEqual(fresh.value);
        expect(({} as Record<string, unknown>).polluted).toBeUndefined();
        expect(Object.prototype).not.toHaveProperty("polluted");
      }),
      params,
    );
    // The generator reaches every outcome, not only garbage.
    expect(seen.corrupt).toBeGreaterThan(RUNS / 10);
    expect(seen.fresh).toBeGreaterThan(RUNS / 20);
  });
});

describe("fuzz: bus messages", () => {
  const message: fc.Arbitrary<BusMessage> = fc.record(
    {
      from: fc.string({ minLength: 1, maxLength: 8 }),
      op: fc.constantFrom("remove", "clear", "update"),
      scope: fc.array(fc.string({ minLength: 1, maxLength: 4 }), { maxLength: 2 }),
      keys: fc.array(fc.string({ minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 3 }),
      gen: fc.string({ minLength: 1, maxLength: 6 }),
      at: fc.integer({ min: 0, max: 2_000_000 }),
    },
    { requiredKeys: ["from", "op", "scope", "keys", "at"] },
  );
  const secret = new TextEncoder().encode("s3cret");
  const edited = fc.tuple(message, fc.nat(), fc.string({ unit: "binary", minLength: 1, maxLength: 1 }), fc.boolean()).map(([m, at, ch, signed]) => {
    const text = encodeMessage(m, signed ? secret : undefined);
    const i = at % text.length;
    return { original: m, text: text.slice(0, i) + ch + text.slice(i + 1) };
  });

  test("the codec never throws, and with a secret accepts nothing but what was signed", () => {
    fc.assert(
      fc.property(fc.oneof(fc.anything(), fc.string({ unit: "binary" }), fc.json()), (junk) => {
        const d = decodeMessage(junk, secret, 1_000_000);
        if (typeof junk !== "string" || !junk.startsWith("[")) expect(d.ok).toBe(false);
      }),
      params,
    );
    fc.assert(
      fc.property(edited, ({ original, text }) => {
        const d = decodeMessage(text, secret, 1_000_000);
        // With one character changed, a message is accepted only if it still says exactly what was signed.
        if (d.ok) expect(encodeMessage(d.message)).toBe(encodeMessage(original));
      }),
      params,
    );
    fc.assert(
      fc.property(message, (m) => {
        const d = decodeMessage(encodeMessage(m, secret), secret, m.at);
        expect(d.ok && encodeMessage(d.message)).toBe(encodeMessage(m));
      }),
      params,
    );
  });

  test("random and forged messages on the channel of a cache with a secret: dropped, counted, nothing changes", async () => {
    const clock = new FakeClock(1_000_000);
    const bus = new MemoryBus();
    const cache = new LayerCache({ clock, bus, busSecret: "s3cret" });
    await cache.ready();
    const intruder = await bus.connect("layercache:bus", { onMessage() {}, onDisconnect() {}, onReconnect() {}, onError() {} });
    const users = cache.scope("users");
    await cache.set("a", 1);
    await users.set("b", 2);
    const forged = fc.oneof(
      fc.string({ unit: "binary" }),
      fc.json(),
      message.map((m) => encodeMessage({ ...m, at: clock.now() })),
      message.map((m) => encodeMessage({ ...m, at: clock.now() }, new TextEncoder().encode("wrong"))),
      fc.constantFrom(encodeMessage({ from: "x", op: "clear", scope: [], keys: [], at: 1_000_000 }), encodeMessage({ from: "x", op: "remove", scope: ["users"], keys: ["b"], at: 1_000_000 })),
    );
    await fc.assert(
      fc.asyncProperty(forged, async (text) => {
        const before = cache.stats().busMessagesDropped;
        await intruder.publish(text);
        await flush();
        expect(cache.stats().busMessagesDropped).toBe(before + 1);
        expect(await cache.get("a")).toBe(1);
        expect(await users.get("b")).toBe(2);
      }),
      params,
    );
    await intruder.close();
    await cache.close();
  });

  test("without a secret, malformed messages are dropped and counted and well-formed ones act only on what they name", async () => {
    const clock = new FakeClock(1_000_000);
    const bus = new MemoryBus();
    const cache = new LayerCache({ clock, bus });
    await cache.ready();
    const intruder = await bus.connect("layercache:bus", { onMessage() {}, onDisconnect() {}, onReconnect() {}, onError() {} });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string({ unit: "binary" }), fc.json(), edited.map((e) => e.text)), async (text) => {
        await cache.set("a", 1);
        const before = cache.stats().busMessagesDropped;
        await intruder.publish(text);
        await flush();
        const d = decodeMessage(text);
        expect(cache.stats().busMessagesDropped).toBe(before + (d.ok ? 0 : 1));
        const names = d.ok && (d.message.op === "clear" ? d.message.scope.length === 0 : d.message.scope.length === 0 && d.message.keys.includes("a"));
        if (!names) expect(await cache.get("a")).toBe(1);
      }),
      params,
    );
    await intruder.close();
    await cache.close();
  });
});

