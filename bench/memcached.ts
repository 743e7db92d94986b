/**
 * `npm run bench:memcached`: an L2 hit on Memcached (L1 cold, 64 concurrent reads) through
 * layercache's MemcachedStore, through cache-manager with its Memcached Keyv store (@keyv/memcache,
 * on memjs), and through raw clients — MemcachedClient.get, the floor of the store, and memjs's get
 * for reference — all in one run against a memcached it starts on a free loopback port. Prints the
 * ratios and a targets table; writes docs/benchmarks/memcached.json. `--quick`: shorter rounds.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import KeyvMemcache from "@keyv/memcache";
import { createCache } from "cache-manager";
import { Keyv } from "keyv";
import { LRUCache } from "lru-cache";
import { LayerCache } from "../src/index.js";
import { MemcachedClient, MemcachedStore } from "../src/backends/memcached/index.js";
import { MemcachedServer } from "../test/support/memcached-server.js";
import { ensureBinary } from "../test/support/servers.js";
import { compare, OPTIONS, printRatios, QUICK, rng } from "./lib.js";

const root = resolve(import.meta.dirname, "..");
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const HOUR = 3_600_000;
const N = 10_000;
const CONCURRENCY = 64;

interface Reader {
  readonly name: string;
  set(key: string, value: unknown): Promise<void>;
  get(key: string): Promise<unknown>;
  close(): Promise<void>;
}

function layercache(servers: string): Reader {
  // L1 bounded to one entry: every read of a random key among 10 000 goes to L2.
  const cache = new LayerCache({ ttl: "1h", maxEntries: 1, prefix: "bm-lc", l2: new MemcachedStore({ servers }) });
  return { name: "layercache", set: (k, v) => cache.set(k, v), get: (k) => cache.get(k), close: () => cache.close() };
}

function cacheManager(servers: string): Reader {
  const l1 = new Keyv({ store: new LRUCache<string, object>({ max: 1 }) });
  const l2 = new Keyv({ store: new KeyvMemcache(servers), namespace: "bm-cm" });
  const cache = createCache({ stores: [l1, l2], ttl: HOUR });
  return {
    name: "cache-manager + @keyv/memcache",
    set: async (k, v) => void (await cache.set(k, v)),
    get: (k) => cache.get(k),
    close: () => cache.disconnect().then(() => undefined),
  };
}

function rawClient(servers: string): Reader {
  const client = new MemcachedClient({ servers });
  return {
    name: "MemcachedClient get+JSON.parse",
    set: async (k, v) => void (await client.set(`bm-raw:${k}`, JSON.stringify(v), 3600)),
    get: async (k) => {
      const text = await client.get(`bm-raw:${k}`);
      return text === undefined ? undefined : JSON.parse(text);
    },
    close: () => client.close(),
  };
}

/** The memjs client @keyv/memcache makes (memjs ships no types; this is the part used here). */
interface Memjs {
  get(key: string): Promise<{ value: Buffer | null }>;
  set(key: string, value: string, options: { expires: number }): Promise<boolean>;
  close(): void;
}

function rawMemjs(servers: string): Reader {
  const client = new KeyvMemcache(servers).client as unknown as Memjs;
  return {
    name: "memjs get+JSON.parse",
    set: async (k, v) => void (await client.set(`bm-memjs:${k}`, JSON.stringify(v), { expires: 3600 })),
    get: async (k) => {
      const { value } = await client.get(`bm-memjs:${k}`);
      return value === null ? undefined : JSON.parse(value.toString());
    },
    close: async () => client.close(),
  };
}

async function main(): Promise<void> {
  const bin = ensureBinary("memcached", "memcached");
  const server = await MemcachedServer.start({ memoryMb: 256 });
  const machine = {
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    memcached: execFileSync(bin, ["-V"]).toString().trim().replace(/^memcached /, ""),
    date: new Date().toISOString().slice(0, 10),
    quick: QUICK,
    rounds: OPTIONS.rounds,
    timePerRoundMs: OPTIONS.time,
  };
  console.log(`layercache Memcached benchmark — ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, memcached ${machine.memcached}${QUICK ? " (quick)" : ""}`);
  console.log(`Each number: median of ${OPTIONS.rounds} rounds of ${OPTIONS.time} ms per library, libraries in rotating order, all in this one run.`);
  const readers = [layercache(server.address), cacheManager(server.address), rawClient(server.address), rawMemjs(server.address)];
  const targets: { scenario: string; target: string; measured: string; met: boolean }[] = [];
  let results: Record<string, number>;
  try {
    for (const r of readers) for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => r.set(`key:${i + j}`, { ...VALUE, id: i + j })));
    const random = rng(3);
    const picks = Array.from({ length: CONCURRENCY * 1024 }, () => `key:${Math.floor(random() * N)}`);
    let cursor = 0;
    results = await compare(
      Object.fromEntries(
        readers.map((r) => [
          r.name,
          async () => {
            const at = (cursor = (cursor + CONCURRENCY) % picks.length);
            const batch = await Promise.all(picks.slice(at, at + CONCURRENCY).map((k) => r.get(k)));
            if (batch[0] === undefined) throw new Error(`${r.name}: expected an L2 hit`);
          },
        ]),
      ),
      CONCURRENCY,
    );
  } finally {
    for (const r of readers) await r.close().catch(() => {});
    await server.stop();
  }
  printRatios(`L2 hit with L1 cold: ${CONCURRENCY} concurrent gets against memcached`, results, "layercache");
  const vsCm = results.layercache! / results["cache-manager + @keyv/memcache"]!;
  const vsRaw = results.layercache! / results["MemcachedClient get+JSON.parse"]!;
  targets.push({ scenario: "L2 hit", target: "≥ 1× cache-manager + @keyv/memcache", measured: `${vsCm.toFixed(2)}×`, met: vsCm >= 1 });
  targets.push({ scenario: "L2 hit", target: "≥ 80% of the raw client's get", measured: `${(vsRaw * 100).toFixed(0)}%`, met: vsRaw >= 0.8 });
  console.log("\nTargets");
  console.table(targets.map((t) => ({ scenario: t.scenario, target: t.target, measured: t.measured, met: t.met ? "yes" : "NO" })));
  const dir = join(root, "docs/benchmarks");
  mkdirSync(dir, { recursive: true });
  const file = QUICK ? "memcached-quick.json" : "memcached.json";
  writeFileSync(join(dir, file), JSON.stringify({ machine, results, targets }, null, 2) + "\n");
  console.log(`\nWrote docs/benchmarks/${file}`);
}

await main();
