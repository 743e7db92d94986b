/**
 * Scenarios 3 and 9 (L1 cold, L2 warm on Redis) of two builds of layercache side by side in one
 * process: `npx tsx bench/ab-bulk.ts <other checkout>/src [redis-url]` (without a url it starts a
 * redis-server). Both run in the same rounds, in rotating order, so the machine's noise falls on
 * both alike. Used to check what a change to the bulk path gives getOrSetMany and getMany, and
 * that it costs the single-key reads (scenario 3's 64 concurrent gets, 100 parallel getOrSet) nothing.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Redis } from "ioredis";
import { LayerCache } from "../src/index.js";
import { RedisStore } from "../src/backends/redis/index.js";
import { RedisServer } from "../test/support/servers.js";
import { compare, printRatios, rng } from "./lib.js";

const other = process.argv[2];
if (!other) throw new Error("usage: tsx bench/ab-bulk.ts <other checkout>/src [redis-url]");
const src = resolve(other);
const { LayerCache: OtherCache } = (await import(pathToFileURL(`${src}/index.ts`).href)) as { LayerCache: typeof LayerCache };
const { RedisStore: OtherStore } = (await import(pathToFileURL(`${src}/backends/redis/index.ts`).href)) as { RedisStore: typeof RedisStore };

const server = process.argv[3] ? undefined : await RedisServer.start();
const url = process.argv[3] ?? server!.url;
const N = 10_000;
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const clients: Redis[] = [];
const client = () => {
  const c = new Redis(url);
  clients.push(c);
  return c;
};
// L1 bounded to one entry: every read of a random key among 10 000 goes to L2.
const builds = {
  this: new LayerCache({ ttl: "1h", maxEntries: 1, prefix: "ab-this", l2: new RedisStore({ client: client() }) }),
  other: new OtherCache({ ttl: "1h", maxEntries: 1, prefix: "ab-other", l2: new OtherStore({ client: client() }) }) as LayerCache,
};
try {
  for (const c of Object.values(builds)) for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => c.set(`key:${i + j}`, { ...VALUE, id: i + j })));
  const random = rng(9);
  const picks = Array.from({ length: 100 * 512 }, () => `key:${Math.floor(random() * N)}`);
  let cursor = 0;
  const next = (n: number): string[] => picks.slice((cursor = (cursor + n) % picks.length), cursor + n);
  const loader = async () => VALUE;
  const loadMany = async (keys: string[]) => keys.map(() => VALUE);
  const check = (values: unknown[]) => {
    if (values.some((v) => v === undefined)) throw new Error("expected L2 hits only");
  };
  const tasks = (n: number, run: (c: LayerCache, keys: string[]) => Promise<unknown[]>) =>
    Object.fromEntries(Object.entries(builds).map(([name, c]) => [name, async () => check(await run(c, next(n)))]));
  const rows: [string, number, (c: LayerCache, keys: string[]) => Promise<unknown[]>][] = [
    ["3. 64 concurrent get", 64, (c, keys) => Promise.all(keys.map((k) => c.get(k)))],
    ["9. getOrSetMany of 100 keys", 100, (c, keys) => c.getOrSetMany(keys, loadMany)],
    ["9. 100 parallel getOrSet", 100, (c, keys) => Promise.all(keys.map((k) => c.getOrSet(k, loader)))],
    ["9. getMany of 100 keys", 100, (c, keys) => c.getMany(keys)],
  ];
  // `ROWS=3,9` (a row's title starts with its scenario number) to run some of them only.
  const only = process.env.ROWS?.split(",");
  for (const [title, n, run] of rows) if (!only || only.some((o) => title.startsWith(`${o}.`) || title.includes(o))) printRatios(`${title}, this checkout vs ${other} (keys per second)`, await compare(tasks(n, run), n), "this");
} finally {
  for (const c of Object.values(builds)) await c.close();
  for (const c of clients) c.disconnect();
  await server?.stop();
}
