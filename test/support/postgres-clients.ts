import pg from "pg";
import { afterAll } from "vitest";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import { PATIENT } from "./patient.js";

/** How a store or bus reaches PostgreSQL: a `pg.Pool` of the test's (`pool`), or connection settings (`url`). */
export type PgKind = "pool" | "url";
export const PG_KINDS: PgKind[] = ["pool", "url"];

/** A pg.Pool as a user would create it (with an error listener, as pg asks). */
export function userPool(url: string, extra: Record<string, unknown> = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, ...extra });
  pool.on("error", () => {});
  return pool;
}

/**
 * Stores and buses for the contract suites: with `pool`, on two pools taken in turn (two instances
 * use two pools), closed after the file's tests; with `url`, each opens its own connections.
 */
export function contractBackends(kind: PgKind, url: string): { store(): PostgresStore; bus(): PostgresBus } {
  const pools: pg.Pool[] = [];
  let turn = 0;
  const next = (): pg.Pool => (pools[turn++ % 2] ??= userPool(url));
  afterAll(async () => {
    for (const p of pools) await p.end();
  });
  return {
    store: () => (kind === "pool" ? new PostgresStore({ pool: next(), ...PATIENT }) : new PostgresStore({ connectionString: url, ...PATIENT })),
    bus: () => (kind === "pool" ? new PostgresBus({ pool: next(), ...PATIENT }) : new PostgresBus({ connectionString: url, ...PATIENT })),
  };
}

/**
 * Buses paired with a store each (`new PostgresBus({ store })`: messages go out on the store's
 * write connection), for the bus contract suite; the stores are closed after the file's tests.
 */
export function pairedBuses(url: string): () => PostgresBus {
  const stores: PostgresStore[] = [];
  afterAll(async () => {
    for (const s of stores) await s.close();
  });
  return () => {
    const store = new PostgresStore({ connectionString: url, ...PATIENT });
    stores.push(store);
    return new PostgresBus({ store, ...PATIENT });
  };
}

/** A plain pool to look at (or tamper with) what is stored, closed after the file's tests. */
export function rawPoolClosedAfterAll(url: string): pg.Pool {
  const pool = userPool(url);
  afterAll(async () => void (await pool.end()));
  return pool;
}

/**
 * Locks `table` (ACCESS EXCLUSIVE) from a client of its own: `unlock()` commits; `release()` (for a
 * test's cleanup) rolls back a lock still held and ends the client.
 */
export async function lockTable(url: string, table: string): Promise<{ client: pg.Client; unlock: () => Promise<void>; release: () => Promise<void> }> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {});
  await client.connect();
  let held = true;
  await client.query("BEGIN");
  await client.query(`LOCK TABLE public."${table}" IN ACCESS EXCLUSIVE MODE`);
  const unlock = async (): Promise<void> => {
    if (!held) return;
    held = false;
    await client.query("COMMIT");
  };
  const release = async (): Promise<void> => {
    if (held) await client.query("ROLLBACK").catch(() => {});
    held = false;
    await client.end();
  };
  return { client, unlock, release };
}
