import { afterAll, describe, expect, inject, test } from "vitest";
import pg from "pg";
import { LayerCache } from "../../src/index.js";
import { FakeClock } from "../../src/testing.js";
import { isRecordError } from "../../src/backend.js";
import { PostgresBus, PostgresStore, postgresStoreSql } from "../../src/backends/postgres/index.js";
import { PATIENT } from "../support/patient.js";
import { PG_KINDS, rawPoolClosedAfterAll, userPool, type PgKind } from "../support/postgres-clients.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/** PostgresStore on the shared PostgreSQL: sharing through L2, corrupt rows, the table, the prune, options. */
const url = inject("postgresUrl");
const raw = rawPoolClosedAfterAll(url);
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => {});
});

function pool(): pg.Pool {
  const p = userPool(url);
  closers.push(() => p.end());
  return p;
}

function store(kind: PgKind, extra: Record<string, unknown> = {}): PostgresStore {
  const s = kind === "pool" ? new PostgresStore({ pool: pool(), ...PATIENT, ...extra }) : new PostgresStore({ connectionString: url, ...PATIENT, ...extra });
  closers.push(() => s.close());
  return s;
}

async function caches(kind: PgKind, n: number, extra: Record<string, unknown> = {}): Promise<{ prefix: string; caches: LayerCache[] }> {
  const prefix = uniquePrefix();
  const out = Array.from({ length: n }, () => new LayerCache({ prefix, l2: store(kind), bus: new PostgresBus({ connectionString: url, ...PATIENT }), ...extra }));
  for (const c of out) closers.unshift(() => c.close()); // caches close before their pools
  await Promise.all(out.map((c) => c.ready()));
  return { prefix, caches: out };
}

const tableName = (): string => `t_${uniquePrefix()}`;

async function rowOf(key: string, table = "layercache"): Promise<{ record: string; gen: string; expires_at: Date | null } | undefined> {
  const r = await raw.query(`SELECT record, gen, expires_at FROM public."${table}" WHERE key = $1`, [key]);
  return r.rows[0];
}

describe.each(PG_KINDS)("PostgresStore with %s", (kind) => {
  test("a value one instance loads serves the others; remove and clear reach every instance", async () => {
    const { prefix, caches: [a, b, c] } = await caches(kind, 3);
    expect(await a!.getOrSet("k", () => "from-a")).toBe("from-a");
    expect(await b!.getOrSet("k", () => "from-b")).toBe("from-a");
    expect(b!.stats().l2Hits).toBe(1);
    expect((await rowOf(`${prefix}::k`))?.record).toMatch(/\|"from-a"$/);
    await c!.get("k");
    await a!.remove("k");
    expect((await rowOf(`${prefix}::k`))?.record).toMatch(/\|-$/);
    await eventually(async () => (await b!.get("k")) === undefined && (await c!.get("k")) === undefined);
    await b!.scope("s").set("x", 1);
    expect(await c!.scope("s").get("x")).toBe(1);
    const l2Hits = c!.stats().l2Hits;
    await a!.scope("s").clear(); // L1 everywhere; L2 untouched: c reads it from L2 again
    await eventually(async () => (await c!.scope("s").get("x")) === 1 && c!.stats().l2Hits > l2Hits);
    // Reads of one tick share one SELECT … = ANY($1).
    await a!.set("y", "y");
    expect(await Promise.all(["k", "missing", "y"].map((k) => c!.get(k)))).toEqual([undefined, undefined, "y"]);
  });

  test("a row that is not a layercache record is a miss, replaced by a tombstone and reported", async () => {
    const { prefix, caches: [a, b] } = await caches(kind, 2);
    await a!.set("k", { n: 1 });
    await raw.query(`UPDATE public.layercache SET record = 'garbage' WHERE key = $1`, [`${prefix}::k`]);
    await raw.query(`INSERT INTO public.layercache (key, record) VALUES ($1, 'LC9|x|1|2|3|4|{}')`, [`${prefix}::other-version`]);
    const corrupt: unknown[] = [];
    b!.on("l2Corrupt", (e) => corrupt.push(e));
    expect(await b!.get("k")).toBeUndefined();
    expect(await b!.getOrSet("other-version", () => "loaded")).toBe("loaded");
    expect(corrupt).toHaveLength(2);
    expect(b!.stats().l2CircuitOpens).toBe(0);
    await eventually(async () => /\|-$/.test((await rowOf(`${prefix}::k`))?.record ?? ""));
    expect((await rowOf(`${prefix}::k`))?.gen).not.toBe("");
    expect((await rowOf(`${prefix}::other-version`))?.record).toMatch(/\|"loaded"$/);
  });

  test("a key PostgreSQL cannot hold (NUL) is a RecordError of that key, never a backend failure", async () => {
    const s = store(kind);
    await s.connect();
    await expect(s.get("a\0b")).rejects.toSatisfy(isRecordError);
    await expect(s.set("k\0", "LC1|g|1|2|3|4|x", 1000)).rejects.toSatisfy(isRecordError);
    const key = `${uniquePrefix()}:ok`;
    await s.set(key, "LC1|g|1|2|3|4|x", 60_000);
    const got = await s.getMany([key, "bad\0key", `${key}-missing`]);
    expect(got[0]).toBe("LC1|g|1|2|3|4|x");
    expect(isRecordError(got[1])).toBe(true);
    expect(got[2]).toBeNull();
    const { caches: [c] } = await caches(kind, 1);
    for (let i = 0; i < 5; i++) expect(await c!.getOrSet(`nul\0${i}`, () => i)).toBe(i);
    expect(c!.stats().l2CircuitOpens).toBe(0);
    expect(await c!.getOrSet("fine", () => "x")).toBe("x");
  });
});

describe("the table", () => {
  test("created on first use, UNLOGGED by default, in the schema and table asked for; concurrent first uses agree", async () => {
    const table = tableName();
    const stores = Array.from({ length: 4 }, () => store("url", { schema: "lc_schema", table }));
    await Promise.all(stores.map((s) => s.connect()));
    const r = await raw.query(`SELECT c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'lc_schema' AND c.relname = $1`, [table]);
    expect(r.rows).toEqual([{ relpersistence: "u" }]);
    const idx = await raw.query(`SELECT indexname FROM pg_indexes WHERE schemaname = 'lc_schema' AND tablename = $1 ORDER BY indexname`, [table]);
    expect(idx.rows.map((x) => x.indexname)).toEqual([`${table}_expires_at`, `${table}_pkey`]);
    expect(await stores[0]!.set("k", "LC1|g1|1|2|3|4|v", 60_000)).toBe(true);
    expect(await stores[3]!.get("k")).toBe("LC1|g1|1|2|3|4|v");
  });

  test("unlogged: false makes an ordinary table; createTable: false uses the one a migration made with postgresStoreSql()", async () => {
    const logged = tableName();
    await store("pool", { table: logged, unlogged: false }).connect();
    const r = await raw.query(`SELECT relpersistence FROM pg_class WHERE relname = $1`, [logged]);
    expect(r.rows).toEqual([{ relpersistence: "p" }]);

    const migrated = tableName();
    const s = store("pool", { table: migrated, createTable: false });
    await expect(s.get("k")).rejects.toThrow(/does not exist/);
    const sql = postgresStoreSql({ table: migrated });
    expect(sql).toMatch(/^CREATE UNLOGGED TABLE IF NOT EXISTS "public"\."t_/);
    await raw.query(sql);
    expect(await s.set("k", "LC1|g1|1|2|3|4|v", 60_000, "")).toBe(true);
    expect(await s.set("k", "LC1|g2|1|2|3|4|w", 60_000, "g1")).toBe(true);
    expect((await rowOf("k", migrated))?.gen).toBe("g2");
  });

  test("expired rows read as missing; the prune deletes them in bounded batches, on its schedule", async () => {
    const table = tableName();
    const clock = new FakeClock();
    const s = store("pool", { table, clock, pruneInterval: "1m", pruneBatch: 2 });
    await s.connect();
    for (let i = 0; i < 5; i++) await s.set(`short${i}`, `LC1|g|1|2|3|4|${i}`, 1);
    await s.set("long", "LC1|g|1|2|3|4|long", 60_000);
    await s.set("never", "LC1|g|1|2|3|4|never", Infinity);
    await eventually(async () => (await s.get("short4")) === null, 5000); // expiry is by the server's clock
    expect((await s.getMany(["short0", "long", "never"])).map((v) => v ?? null)).toEqual([null, "LC1|g|1|2|3|4|long", "LC1|g|1|2|3|4|never"]);
    const count = async (): Promise<number> => Number((await raw.query(`SELECT count(*) AS n FROM public."${table}"`)).rows[0].n);
    expect(await count()).toBe(7); // still there, until the prune
    clock.advance(59_000);
    expect(await count()).toBe(7);
    clock.advance(1_000);
    await eventually(async () => (await count()) === 2, 5000);
    expect(await s.prune()).toBe(0);
    // The next round is scheduled: rows expiring later are deleted by it.
    await s.set("short-again", "LC1|g|1|2|3|4|x", 1);
    await eventually(async () => (await s.get("short-again")) === null, 5000);
    await clockTick(clock, 60_000);
    await eventually(async () => (await count()) === 2, 5000);
  });
});

/** Advances `clock` once the store had a moment to schedule its next round. */
async function clockTick(clock: FakeClock, ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, 20));
  clock.advance(ms);
}

describe("options", () => {
  test("bad or unknown options are TypeErrors naming the option", () => {
    const p = pool();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ pool: p, tabel: "x" }, /"tabel"/],
      [{}, /"pool"/],
      [{ pool: p, connectionString: url }, /"pool"/],
      [{ connectionString: "redis://x" }, /"connectionString"/],
      [{ connectionString: url, port: 0 }, /"port"/],
      [{ pool: {} }, /"pool"/],
      [{ pool: p, table: "x".repeat(55) }, /"table"/],
      [{ pool: p, schema: "" }, /"schema"/],
      [{ pool: p, unlogged: "yes" }, /"unlogged"/],
      [{ pool: p, pruneBatch: 0 }, /"pruneBatch"/],
      [{ pool: p, pruneInterval: -1 }, /"pruneInterval"/],
      [{ pool: p, max: 3 }, /"max"/],
      [{ connectionString: url, max: 0 }, /"max"/],
      [{ pool: p, timeout: "soon" }, /"timeout"/],
      [{ pool: p, circuitBreaker: { treshold: 1 } }, /"circuitBreaker.treshold"/],
    ];
    for (const [options, message] of cases) expect(() => new PostgresStore(options as never), JSON.stringify(Object.keys(options))).toThrow(message);
    for (const [options, message] of cases) expect(() => new PostgresStore(options as never)).toThrow(TypeError);
    expect(() => postgresStoreSql({ tabel: "x" } as never)).toThrow(/"tabel"/);
    expect(() => new PostgresBus({ connectionString: url, heartbeat: 0 })).toThrow(/"heartbeat"/);
    expect(() => new PostgresBus({ connectionString: url, pool: p })).toThrow(/"pool"/);
    expect(() => new PostgresBus({ connectionString: url, reconnectDelay: "1s", maxReconnectDelay: "10ms" })).toThrow(/"maxReconnectDelay"/);
    expect(() => new PostgresBus({ connectionString: url, channel: "x" } as never)).toThrow(/"channel"/);
  });

  test("host, port, user and database instead of a connection string", async () => {
    const u = new URL(url);
    const s = new PostgresStore({ host: u.hostname, port: Number(u.port), user: u.username, database: u.pathname.slice(1), ...PATIENT });
    closers.push(() => s.close());
    expect(await s.set(`${uniquePrefix()}:k`, "LC1|g|1|2|3|4|v", 1000)).toBe(true);
  });
});
