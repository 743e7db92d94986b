/**
 * Where the time of benchmark 9 goes: 100 keys, L1 cold (one entry), L2 warm. Times, per call of
 * 100 keys, the store's raw multi-key read of the same keys (ioredis MGET, or the in-memory store's
 * getMany: no layercache, the floor both paths share), that read plus decoding each record (what
 * any bulk read must do), `getOrSetMany`, 100 parallel `getOrSet` and `getMany` — on Redis, and on
 * the in-memory store (no round trip: CPU per key only).
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
import { decodeRecord } from "../src/l2/envelope.js";
import { jsonSerializer } from "../src/l2/serializer.js";

const N = 10_000;
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const ROUNDS = Number(process.env.ROUNDS ?? 7);
const CALLS = Number(process.env.CALLS ?? 400);

type Task = () => Promise<unknown>;

/** Per task: median wall-clock µs per call, and median CPU µs (this process, user + system) per call. */
async function time(tasks: Record<string, Task>): Promise<Record<string, { wall: number; cpu: number }>> {
  const names = Object.keys(tasks);
  const wall: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const cpu: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (const n of names) for (let i = 0; i < 50; i++) await tasks[n]!(); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    for (let j = 0; j < names.length; j++) {
      const n = names[(j + r) % names.length]!;
      const t = tasks[n]!;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) await t();
      wall[n]!.push(((performance.now() - t0) * 1000) / CALLS);
      const c = process.cpuUsage(c0);
      cpu[n]!.push((c.user + c.system) / CALLS);
    }
  }
  return Object.fromEntries(names.map((n) => [n, { wall: median(wall[n]!), cpu: median(cpu[n]!) }]));
}

function picker(seed: number): () => string[] {
  const random = rng(seed);
  const picks = Array.from({ length: 100 * 512 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  return () => picks.slice((cursor = (cursor + 100) % picks.length), cursor + 100);
}

/** `raw`: the store's own multi-key read of the same records, without layercache (the floor). */
async function measure(label: string, cache: LayerCache, raw: (keys: string[]) => Promise<unknown>): Promise<void> {
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
  const read = async () => {
    const records = (await raw(next().map((k) => `s9p::${k}`))) as string[];
    check(records);
    return records;
  };
  tasks["raw read (floor)"] = read;
  // What any getOrSetMany must do besides the read: parse each record and its JSON value.
  tasks["raw read + decode"] = async () => check((await read()).map((r) => jsonSerializer.deserialize(decodeRecord(r).payload!)));
  const r = await time(tasks);
  const many = r.getOrSetMany!.wall;
  const par = r["100 × getOrSet"]!.wall;
  console.log(`\n${label}: per call of 100 keys (median of ${ROUNDS} rounds × ${CALLS} calls; CPU: this process only)`);
  console.table(Object.fromEntries(Object.entries(r).map(([n, t]) => [n, { "wall µs/call": t.wall.toFixed(0), "CPU µs/call": t.cpu.toFixed(0), "CPU µs/key": (t.cpu / 100).toFixed(2) }])));
  console.log(`ratio getOrSetMany ÷ 100 × getOrSet (keys/s, wall clock): ${(par / many).toFixed(2)}×`);
  const floor = r["raw read (floor)"]!.wall;
  const ideal = r["raw read + decode"]!.wall;
  console.log(`above the raw read (wall): getOrSetMany +${(many - floor).toFixed(0)} µs, 100 × getOrSet +${(par - floor).toFixed(0)} µs`);
  console.log(`best possible ratio — a getOrSetMany costing only the read and the decoding: ${(par / ideal).toFixed(2)}× (only the read: ${(par / floor).toFixed(2)}×)`);
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
  const store = new MemoryStore();
  const inMemory = new LayerCache({ ttl: "1h", maxEntries: 1, prefix: "s9p", l2: store });
  await measure("In-memory store (no round trip: CPU only)", inMemory, (keys) => store.getMany(keys));
  await inMemory.close();
} finally {
  await server?.stop();
}
