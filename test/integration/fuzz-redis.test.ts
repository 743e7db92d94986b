import fc from "fast-check";
import { describe, expect, inject, test } from "vitest";
import { LayerCache } from "../../src/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { encodeRecord } from "../../src/l2/envelope.js";
import { BUS_KINDS, closedAfterAll, eventually, rawClientClosedAfterAll, sendRaw, uniquePrefix, wire, type BusKind, type ClientKind } from "../support/redis-clients.js";

/**
 * The L2 and bus fuzzers of test/fuzz.test.ts again, through a real redis-server and both client
 * libraries: bytes that are not UTF-8, mutated records, and junk on the channel. The seed is drawn
 * per run (or `FUZZ_SEED`) and named in every failure: replay with
 * `FUZZ_SEED=<seed> npx vitest run test/integration/fuzz-redis.test.ts`.
 */
const url = inject("redisUrl");
const RUNS = Math.max(25, Math.floor(Number(process.env.FUZZ_RUNS ?? 300) / 4));
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const params = { numRuns: RUNS, seed: SEED };
const replay = `FUZZ_SEED=${SEED}`;
const raw = rawClientClosedAfterAll(url);
const { caches, wirings } = closedAfterAll();

async function instance(kind: ClientKind, prefix: string, extra: Record<string, unknown> = {}, bus: BusKind = "pubsub"): Promise<LayerCache> {
  const w = await wire(kind, url, bus);
  wirings.push(w);
  const cache = new LayerCache({ prefix, l2: w.store, bus: w.bus, ...extra });
  caches.push(cache);
  await cache.ready();
  return cache;
}

const valid = (payload: string) => encodeRecord("g1", { born: Date.now(), ttl: 60_000, maxStale: 0, failSafe: 0 }, payload);
const stored = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  fc.string({ unit: "binary", maxLength: 64 }),
  fc.tuple(fc.json(), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 3 })).map(([p, at, bytes]) => {
    const text = Buffer.from(valid(p));
    const i = at % text.length;
    return Buffer.concat([text.subarray(0, i), Buffer.from(bytes), text.subarray(i + 1)]);
  }),
  fc.json().map(valid),
);

describe.each(["ioredis", "node-redis"] as const)("fuzz through redis-server with %s", (kind) => {
  test("any bytes under a key: get and getOrSet never throw; a value or a miss", async () => {
    const prefix = uniquePrefix();
    const cache = await instance(kind, prefix);
    let corrupt = 0;
    cache.on("l2Corrupt", () => corrupt++);
    let i = 0;
    await fc.assert(
      fc.asyncProperty(stored, fc.boolean(), async (bytes, viaGetOrSet) => {
        const key = `p${i++}`;
        await raw.set(`${prefix}::${key}`, bytes);
        const before = corrupt;
        const value = viaGetOrSet ? await cache.getOrSet(key, () => "loaded") : await cache.get(key);
        if (value === undefined || value === "loaded") {
          // A miss is a corrupt record (event, record replaced) or a valid one that is not fresh.
          const after = await raw.getBuffer(`${prefix}::${key}`);
          if (corrupt > before) expect(after?.equals(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes))).not.toBe(true);
        }
      }),
      params,
    );
    expect(corrupt, replay).toBeGreaterThan(0);
    expect(Object.prototype).not.toHaveProperty("polluted");
  }, 60_000);

  test.each(BUS_KINDS)("junk and forged messages on the channel of a cache with a secret: all dropped and counted (%s)", async (bus) => {
    const prefix = uniquePrefix();
    const cache = await instance(kind, prefix, { busSecret: "s" }, bus);
    await cache.set("k", "kept");
    const junk = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
      fc.string({ unit: "binary" }),
      fc.json(),
      fc.constantFrom(encodeMessage({ from: "x", op: "clear", scope: [], keys: [], at: Date.now() })),
    );
    const sent = fc.sample(junk, params);
    for (const m of sent) await sendRaw(raw, bus, prefix, m);
    await eventually(() => cache.stats().busMessagesDropped === sent.length, 10_000).catch((e: Error) => {
      throw new Error(`${e.message}: ${cache.stats().busMessagesDropped} of ${sent.length} dropped (${replay})`);
    });
    expect(await cache.get("k"), replay).toBe("kept");
  }, 60_000);
});
