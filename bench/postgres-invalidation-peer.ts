/**
 * Process B of the PostgreSQL invalidation benchmark: holds keys in its L1 and reports (with the
 * machine's monotonic clock, shared by all processes) the moment a peer's invalidation dropped each
 * one. Argv: <postgres url> <prefix> [layercache|raw]. With "raw", the same thing with plain pg (a
 * Map as L1, a LISTEN session as bus): the floor this machine allows.
 */
import pg from "pg";
import { LayerCache } from "../src/index.js";
import { PostgresBus, PostgresStore } from "../src/backends/postgres/index.js";

const [url, prefix, mode] = process.argv.slice(2) as [string, string, string | undefined];
const pool = new pg.Pool({ connectionString: url });
pool.on("error", () => {});
const send = (m: unknown): void => void process.send!(m);

interface Side {
  prime(key: string): Promise<void>;
  op(k: string, n: number): Promise<unknown>;
  close(): Promise<void>;
}

async function layercacheSide(): Promise<Side> {
  const store = new PostgresStore({ pool });
  const cache = new LayerCache({ prefix, ttl: "1h", l2: store, bus: new PostgresBus({ store }) });
  cache.on("peerInvalidation", (e) => {
    const t = process.hrtime.bigint();
    if (e.op === "remove" && e.dropped > 0) for (const key of e.keys) send({ dropped: key, t: t.toString() });
  });
  await cache.ready();
  return {
    prime: async (key) => void (await cache.getOrSet(key, async () => ({ loadedBy: "B" }))),
    op: (k, n) => (n % 5 === 0 ? cache.set(k, { n }) : cache.getOrSet(k, async () => ({ n }))),
    close: () => cache.close(),
  };
}

async function rawSide(): Promise<Side> {
  const l1 = new Map<string, unknown>();
  const listener = new pg.Client({ connectionString: url });
  listener.on("error", () => {});
  await listener.connect();
  await listener.query(`LISTEN "${prefix}:raw"`);
  listener.on("notification", (n) => {
    const t = process.hrtime.bigint();
    if (l1.delete(n.payload!)) send({ dropped: n.payload, t: t.toString() });
  });
  const get = async (k: string) => {
    if (l1.has(k)) return l1.get(k);
    const r = await pool.query({ name: "raw-get", text: "SELECT record FROM bench_raw WHERE key = $1", values: [`${prefix}:${k}`] });
    const v = r.rows.length === 0 || r.rows[0].record === "-" ? { n: 0 } : JSON.parse(r.rows[0].record);
    l1.set(k, v);
    return v;
  };
  return {
    prime: async (key) => void (await get(key)),
    op: async (k, n) => {
      if (n % 5 !== 0) return get(k);
      l1.set(k, { n });
      await pool.query({ name: "raw-set", text: "INSERT INTO bench_raw (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record", values: [`${prefix}:${k}`, JSON.stringify({ n })] });
      await pool.query({ name: "raw-notify", text: "SELECT pg_notify($1, $2)", values: [`${prefix}:raw`, k] });
    },
    close: async () => void (await listener.end()),
  };
}

const side = mode === "raw" ? await rawSide() : await layercacheSide();
let background: ReturnType<typeof setInterval> | undefined;

process.on("message", async (m: { op: string; key?: string; perTick?: number }) => {
  if (m.op === "prime") {
    await side.prime(m.key!);
    send({ primed: m.key });
  } else if (m.op === "warm") {
    for (let i = 0; i < 2000; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => side.prime(`bg:${i + j}`)));
    send({ warmed: true });
  } else if (m.op === "background") {
    // Steady load: `perTick` operations every 2 ms on keys of their own.
    let n = 0;
    background = setInterval(() => {
      for (let i = 0; i < m.perTick!; i++) void side.op(`bg:${n++ % 2000}`, n).catch(() => {});
    }, 2);
  } else if (m.op === "stop") {
    if (background) clearInterval(background);
    await side.close();
    await pool.end();
    send({ stopped: true });
    process.exit(0);
  }
});
send({ ready: true });
