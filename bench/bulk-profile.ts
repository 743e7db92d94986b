/**
 * Where the time of benchmark 9 goes: 100 keys, L1 cold (one entry), L2 warm. Times, per call of
 * 100 keys, the raw MGET of the same keys (ioredis, no layercache: the floor both paths share),
 * `getOrSetMany`, 100 parallel `getOrSet` and `getMany` — on Redis, and on the in-memory store
 * (no round trip: CPU per key only).
 *
 *   npx tsx bench/bulk-profile.ts [redis-url]      (without a url it starts a redis-server)
 *
 * Each number: median over rounds of the mean time per call (µs), tasks in rotating order.
 */
import { performance } from "node:perf_hooks";
import { Redis } from "ioredis";
import { LayerCache } from "../src/index.js";
import { MemoryStore } from "../src/testing.js";
import { RedisStore } from "../src/backends/redis/index.js";
import { RedisServer } from "../test/support/servers.js";
import { median, rng } from "./lib.js";

const N = 10_000;
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const ROUNDS = Number(process.env.ROUNDS ?? 7);
const CALLS = Number(process.env.CALLS ?? 400);

type Task = () => Promise<unknown>;

async function time(tasks: Record<string, Task>): Promise<Record<string, number>> {
  const names = Object.keys(tasks);
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (const n of names) for (let i = 0; i < 50; i++) await tasks[n]!(); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    for (let j = 0; j < names.length; j++) {
      const n = names[(j + r) % names.length]!;
      const t = tasks[n]!;
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) await t();
      samples[n]!.push(((performance.now() - t0) * 1000) / CALLS);
    }
  }
  return Object.fromEntries(names.map((n) => [n, median(samples[n]!)]));
}

function picker(seed: number): () => string[] {
  const random = rng(seed);
  const picks = Array.from({ length: 100 * 512 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  return () => picks.slice((cursor = (cursor + 100) % picks.length), cursor + 100);
}

async function measure(label: string, cache: LayerCache, raw: ((keys: string[]) => Promise<unknown>) | undefined): Promise<void> {
  for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => cache.set(`key:${i + j}`, { ...VALUE, id: i + j })));
  const next = picker(9);
  const loader = async () => VALUE;
  const loadMany = async (keys: string[]) => keys.map(() => VALUE);
  const check = (values: unknown[]) => {
    if (values.length !== 100 || values.some((v) => v === undefined)) throw new Error("expected 100 L2 hits");
  };
  const tasks: Record<string, Task> = {
    getOrSetMany: async () => check(await cache.getOrSetMany(next(), loadMany)),
    "100 × getOrSet": async () => check(await Promise.all(next().map((k) => cache.getOrSet(k, loader)))),
    getMany: async () => check(await cache.getMany(next())),
  };
  if (raw) tasks["raw MGET (floor)"] = async () => check((await raw(next().map((k) => `s9p::${k}`))) as unknown[]);
  const r = await time(tasks);
  const many = r.getOrSetMany!;
  const par = r["100 × getOrSet"]!;
  console.log(`\n${label}: µs per call of 100 keys (median of ${ROUNDS} rounds × ${CALLS} calls)`);
  console.table(Object.fromEntries(Object.entries(r).map(([n, us]) => [n, { "µs/call": us.toFixed(0), "µs/key": (us / 100).toFixed(2) }])));
  console.log(`ratio getOrSetMany ÷ 100 × getOrSet (keys/s): ${(par / many).toFixed(2)}×`);
  if (raw) {
    const floor = r["raw MGET (floor)"]!;
    console.log(`above the raw MGET: getOrSetMany +${(many - floor).toFixed(0)} µs, 100 × getOrSet +${(par - floor).toFixed(0)} µs`);
    console.log(`best possible ratio if getOrSetMany cost nothing above the MGET: ${(par / floor).toFixed(2)}×`);
  }
}

const url = process.argv[2];
const server = url ? undefined : await RedisServer.start();
const redisUrl = url ?? server!.url;
try {
  const client = new Redis(redisUrl);
  const onRedis = new LayerCache({ ttl: "1h", maxEntries: 1, prefix: "s9p", l2: new RedisStore({ client }) });
  await measure("Redis (loopback)", onRedis, (keys) => client.mget(keys));
  await onRedis.close();
  client.disconnect();
  const inMemory = new LayerCache({ ttl: "1h", maxEntries: 1, prefix: "s9p", l2: new MemoryStore() });
  await measure("In-memory store (no round trip: CPU only)", inMemory, undefined);
  await inMemory.close();
} finally {
  await server?.stop();
}
