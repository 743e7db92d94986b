import { afterEach, describe, expect, inject, test } from "vitest";
import pg from "pg";
import { LayerCache } from "../../src/index.js";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import { PATIENT } from "../support/patient.js";
import { lockTable, userPool } from "../support/postgres-clients.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * The bus paired with the store (`new PostgresBus({ store })`) on a real PostgreSQL: an
 * invalidation's L2 write and its notification in one statement, the order a peer sees (it hears
 * the message only once the write is there), and the failures of that statement — a locked table,
 * a backend that stops answering, a record PostgreSQL cannot hold. Waits are bounded polls.
 */
const url = inject("postgresUrl");
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

function pool(): pg.Pool {
  const p = userPool(url);
  cleanup.push(() => p.end());
  return p;
}

/**
 * A pg.Pool that records the statements sent on the connections checked out of it with
 * `connect()` — the store's write connection (reads and write-backs go through `pool.query`).
 */
function recordingPool(): { pool: pg.Pool; statements: string[] } {
  const p = pool();
  const statements: string[] = [];
  const connect = p.connect.bind(p) as (...args: unknown[]) => unknown;
  (p as { connect: (...args: unknown[]) => unknown }).connect = (...args: unknown[]) => {
    if (args.length > 0) return connect(...args); // pg-pool's own callback form (pool.query)
    return (connect() as Promise<pg.PoolClient>).then((client) => {
      const query = client.query.bind(client) as (...a: unknown[]) => unknown;
      (client as { query: unknown }).query = (...a: unknown[]) => {
        const q = a[0] as string | { text: string };
        statements.push(typeof q === "string" ? q : q.text);
        return query(...a);
      };
      return client;
    });
  };
  return { pool: p, statements };
}

/** A cache whose bus is paired with its store. */
function cache(prefix: string, store: PostgresStore, extra: Record<string, unknown> = {}): LayerCache {
  const c = new LayerCache({ prefix, l2: store, bus: new PostgresBus({ store, ...extra }) });
  cleanup.push(() => c.close());
  return c;
}

const TOMBSTONE = /\|-$/;

/**
 * Holds the row of `key` (in the default table) locked from a session of its own until `unlock()`
 * (or the test's cleanup); `waitedOnBy(app)` waits until one session of that application_name is
 * blocked on a lock.
 */
async function lockRow(key: string): Promise<{ held: () => boolean; unlock: () => Promise<void>; waitedOnBy: (app: string) => Promise<void> }> {
  const raw = pool();
  const locker = await raw.connect();
  let held = true;
  const unlock = async (): Promise<void> => {
    if (!held) return;
    held = false;
    await locker.query("COMMIT");
    locker.release();
  };
  cleanup.push(unlock);
  await locker.query("BEGIN");
  await locker.query("SELECT 1 FROM layercache WHERE key = $1 FOR UPDATE", [key]);
  const waitedOnBy = (app: string): Promise<void> =>
    eventually(async () => (await raw.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", [app])).rows[0].n === 1);
  return { held: () => held, unlock, waitedOnBy };
}

describe("one statement for an invalidation's write and its notification", () => {
  test("remove, set and removeMany: the write and the NOTIFY go out together; a peer re-reading L2 when it hears the message finds the write", async () => {
    const prefix = uniquePrefix();
    const raw = pool();
    const { pool: writes, statements } = recordingPool();
    const storeA = new PostgresStore({ pool: writes, ...PATIENT });
    const a = cache(prefix, storeA, PATIENT);
    const b = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    await Promise.all([a.ready(), b.ready()]);
    expect(storeA.connection).toBeDefined();
    // What L2 held for the key at the moment b heard each message about it, in the order heard.
    const seen = new Map<string, Promise<string | undefined>[]>();
    b.on("peerInvalidation", (e) => {
      for (const key of e.keys) {
        const read = raw.query("SELECT record FROM layercache WHERE key = $1", [`${prefix}::${key}`]).then((r) => r.rows[0]?.record as string | undefined);
        seen.set(key, [...(seen.get(key) ?? []), read]);
      }
    });
    const heard = async (key: string, n = 1): Promise<(string | undefined)[]> => {
      await eventually(() => (seen.get(key)?.length ?? 0) >= n);
      return Promise.all(seen.get(key)!);
    };

    for (let i = 0; i < 20; i++) await b.getOrSet(`r${i}`, () => "b's");
    await a.ready();
    statements.length = 0;
    await a.remove("r0");
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatch(/^WITH w AS \(INSERT INTO .* SELECT pg_notify\(\$4, \$5\)$/);
    expect(await heard("r0")).toEqual([expect.stringMatching(TOMBSTONE)]);

    // Removes of one tick share a statement (and so a round trip).
    statements.length = 0;
    await Promise.all(Array.from({ length: 19 }, (_, i) => a.remove(`r${i + 1}`)));
    expect(statements.length).toBeLessThan(19);
    expect(statements.every((s) => s.includes("pg_notify"))).toBe(true);
    for (let i = 1; i < 20; i++) expect(await heard(`r${i}`)).toEqual([expect.stringMatching(TOMBSTONE)]);

    statements.length = 0;
    await a.set("s", { v: 1 });
    expect(statements).toHaveLength(1);
    expect(await heard("s")).toEqual([expect.stringMatching(/\|\{"v":1\}$/)]);

    for (const k of ["m1", "m2", "m3"]) await b.getOrSet(k, () => "b's");
    statements.length = 0;
    await a.removeMany(["m1", "m2", "m3"]);
    expect(statements).toHaveLength(1);
    for (const k of ["m1", "m2", "m3"]) expect(await heard(k)).toEqual([expect.stringMatching(TOMBSTONE)]);
    expect(await b.get("m2")).toBeUndefined();
    expect(a.stats().busErrors + a.stats().l2Errors + b.stats().busErrors + b.stats().l2Errors).toBe(0);
  });

  test("a remove while an earlier write of the key is still under way: its message never overtakes its tombstone", async () => {
    const prefix = uniquePrefix();
    const raw = pool();
    const a = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    const b = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    await Promise.all([a.ready(), b.ready()]);
    for (let round = 0; round < 10; round++) {
      const key = `k${round}`;
      await b.getOrSet(key, () => "b's");
      const reads: Promise<string | undefined>[] = [];
      const listener = (e: { keys: string[] }): void => {
        if (e.keys.includes(key)) reads.push(raw.query("SELECT record FROM layercache WHERE key = $1", [`${prefix}::${key}`]).then((r) => r.rows[0]?.record as string | undefined));
      };
      b.on("peerInvalidation", listener);
      const setting = a.set(key, `late-${round}`); // not awaited: the remove's write waits for it
      await a.remove(key);
      await setting;
      // Two messages (the set's, then the remove's), heard in that order; when the last came, L2 held the tombstone.
      await eventually(() => reads.length === 2);
      b.off("peerInvalidation", listener);
      expect(await reads[1]).toMatch(TOMBSTONE);
      expect(await b.get(key)).toBeUndefined();
    }
  });
});

describe("when the statement fails", () => {
  test("a table locked past the statement timeout: the write fails and is queued, the notification still reaches the peer, the bus reports nothing; after unlock the tombstone lands", async () => {
    const prefix = uniquePrefix();
    const table = `t_${uniquePrefix()}`;
    const store = (): PostgresStore => new PostgresStore({ connectionString: url, table, timeout: "300ms", circuitBreaker: { threshold: 0 } });
    const a = cache(prefix, store());
    const b = cache(prefix, store());
    await Promise.all([a.ready(), b.ready()]);
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1"); // b holds a copy in L1
    const dropped: string[] = [];
    b.on("peerInvalidation", (e) => {
      if (e.dropped > 0) dropped.push(...e.keys);
    });
    const lock = await lockTable(url, table);
    cleanup.push(lock.release);
    await a.remove("k");
    expect(a.stats().l2Errors).toBeGreaterThan(0);
    expect(a.stats().l2Pending).toBe(1);
    // Sent again alone once the server refused the statement: the peer drops its copy meanwhile.
    await eventually(() => dropped.includes("k"), 5000);
    expect(a.stats().busErrors).toBe(0);
    expect(a.stats().busPending).toBe(0);
    await lock.unlock();
    await eventually(() => a.stats().l2Pending === 0, 15_000);
    const raw = pool();
    expect((await raw.query(`SELECT record FROM public."${table}" WHERE key = $1`, [`${prefix}::k`])).rows[0]?.record).toMatch(TOMBSTONE);
    expect(await b.get("k")).toBeUndefined();
  }, 30_000);

  test("a backend that stops answering: the write and the message both time out and are queued; both land once it answers, in that order", async () => {
    const prefix = uniquePrefix();
    const app = `paired-${prefix}`;
    const raw = pool();
    const storeA = new PostgresStore({ connectionString: url, application_name: app, timeout: "300ms", circuitBreaker: { threshold: 0 } });
    const a = cache(prefix, storeA, { connectionString: url, application_name: `${app}-bus` });
    const b = cache(prefix, new PostgresStore({ connectionString: url, ...PATIENT }), PATIENT);
    await Promise.all([a.ready(), b.ready()]);
    await a.set("warm", 1); // the store's write connection is open
    await b.getOrSet("k", () => "b's");
    const reads: Promise<string | undefined>[] = [];
    b.on("peerInvalidation", (e) => {
      if (e.keys.includes("k")) reads.push(raw.query("SELECT record FROM layercache WHERE key = $1", [`${prefix}::k`]).then((r) => r.rows[0]?.record as string | undefined));
    });
    // The store's sessions: its pool's connections, the write connection among them.
    const pids = (await raw.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", [app])).rows.map((r) => Number(r.pid));
    expect(pids.length).toBeGreaterThan(0);
    for (const pid of pids) process.kill(pid, "SIGSTOP");
    let resumed = false;
    const resume = (): void => {
      if (resumed) return;
      resumed = true;
      for (const pid of pids) process.kill(pid, "SIGCONT");
    };
    cleanup.push(async () => resume());
    try {
      await a.remove("k"); // gives up at the timeouts
      expect(a.stats().l2Pending).toBe(1);
      await eventually(() => a.stats().busPending === 1, 5000);
      expect(reads).toEqual([]); // nothing was delivered: the statement has not committed
    } finally {
      resume();
    }
    await eventually(() => a.stats().l2Pending === 0 && a.stats().busPending === 0, 15_000);
    await eventually(() => reads.length > 0, 5000);
    for (const r of await Promise.all(reads)) expect(r).toMatch(TOMBSTONE);
    expect(await b.get("k")).toBeUndefined();
  }, 30_000);

  test("a key PostgreSQL cannot hold (NUL): the store refuses that record alone, the message still goes, nothing counts as a backend failure", async () => {
    const prefix = uniquePrefix();
    const a = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    const b = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    await Promise.all([a.ready(), b.ready()]);
    const key = "nul\0key";
    expect(await b.getOrSet(key, () => "b's")).toBe("b's"); // in b's L1 only
    await a.remove(key);
    await eventually(async () => (await b.getOrSet(key, () => "reloaded")) === "reloaded");
    expect(a.stats().busErrors).toBe(0);
    expect(a.stats().l2CircuitOpens).toBe(0);
    expect(a.stats().l2Pending).toBe(0);
    // Writes of other keys go on, paired as before.
    await b.getOrSet("fine", () => "b's");
    await a.remove("fine");
    await eventually(async () => (await b.getOrSet("fine", () => "reloaded")) === "reloaded");
  });
});

describe("the store's write connections", () => {
  test("a removeMany of more keys than one statement carries: its message waits for every tombstone, also those still under way on the other connection", async () => {
    const app = `split-${uniquePrefix()}`;
    const prefix = uniquePrefix();
    const p = userPool(url, { application_name: app }); // max 10: the store writes on two connections
    cleanup.push(() => p.end());
    const a = cache(prefix, new PostgresStore({ pool: p, ...PATIENT }), PATIENT);
    const b = cache(prefix, new PostgresStore({ pool: pool(), ...PATIENT }), PATIENT);
    await Promise.all([a.ready(), b.ready()]);
    const keys = Array.from({ length: 501 }, (_, i) => `k${i}`); // 500 writes fill one statement
    await a.setMany(keys.map((k) => [k, "old"] as const));
    expect(await b.get("k0")).toBe("old");
    const lock = await lockRow(`${prefix}::k0`);
    let heardWhileLocked = false;
    let heard = false;
    b.on("peerInvalidation", (e) => {
      if (!e.keys.includes("k0")) return;
      heard = true;
      if (lock.held()) heardWhileLocked = true;
    });
    const removal = a.removeMany(keys);
    // The statement carrying k0's tombstone waits on the row lock; the rest could go on the other connection.
    await lock.waitedOnBy(app);
    // Another write meanwhile sets the other connection to work on what waits.
    const other = a.set("other", "x");
    await new Promise((r) => setTimeout(r, 300));
    // b reading k0 now finds "old" in L1 or L2 alike: had it heard the message, it would keep "old" for good.
    expect(await b.get("k0")).toBe("old");
    expect(heardWhileLocked).toBe(false);
    await lock.unlock();
    await Promise.all([removal, other]);
    await eventually(() => heard);
    expect(await b.get("k0")).toBeUndefined();
    expect(await b.get("k500")).toBeUndefined();
  });

  test("a write does not wait behind a statement of other keys still under way; a key's writes land in call order", async () => {
    const app = `lanes-${uniquePrefix()}`;
    const p = userPool(url, { application_name: app });
    cleanup.push(() => p.end());
    const store = new PostgresStore({ pool: p, ...PATIENT });
    cleanup.push(() => store.close());
    const [k1, k2] = [`${app}:k1`, `${app}:k2`];
    await store.set(k1, "LC1|g0|1|2|3|4|v0", 60_000);
    const lock = await lockRow(k1);
    const done: string[] = [];
    const first = store.set(k1, "LC1|g1|1|2|3|4|v1", 60_000).then(() => done.push("first"));
    // The first write of k1 waits on the row lock, on one of the store's connections.
    await lock.waitedOnBy(app);
    expect(await store.set(k2, "LC1|g1|1|2|3|4|other", 60_000)).toBe(true); // on the other connection
    const second = store.set(k1, "LC1|g2|1|2|3|4|v2", 60_000).then(() => done.push("second"));
    await new Promise((r) => setTimeout(r, 200));
    expect(done).toEqual([]); // the second write of k1 waits for the first
    await lock.unlock();
    await Promise.all([first, second]);
    expect(done).toEqual(["first", "second"]);
    expect(await store.get(k1)).toBe("LC1|g2|1|2|3|4|v2");
    expect(await store.get(k2)).toBe("LC1|g1|1|2|3|4|other");
  });
});

describe("options", () => {
  test("store must be a PostgresStore; with it, a pool or connection settings (for the LISTEN session), not both; the timeout follows the store's", () => {
    const p = pool();
    const store = new PostgresStore({ pool: p, timeout: "2s" });
    expect(() => new PostgresBus({ store: {} as never })).toThrow(/"store"/);
    expect(() => new PostgresBus({ store: p as never })).toThrow(TypeError);
    expect(() => new PostgresBus({ store, pool: p, connectionString: url })).toThrow(/"pool"/);
    const bus = new PostgresBus({ store });
    expect(bus.connection).toBe(store.connection);
    expect(bus.resilience.timeoutMs).toBe(3000);
    expect(new PostgresBus({ store, timeout: "500ms" }).resilience.timeoutMs).toBe(500);
    expect(new PostgresBus({ store, connectionString: url }).connection).toBe(store.connection);
    expect(new PostgresBus({ store: new PostgresStore({ pool: p, timeout: 0 }) }).resilience.timeoutMs).toBe(1000);
    // Unpaired, a store still names the pool it was given.
    expect(new PostgresStore({ pool: p }).connection).toBe(p);
  });
});
