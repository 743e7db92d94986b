/**
 * `layercache/postgres`: L2 in a PostgreSQL table and an invalidation bus on LISTEN/NOTIFY — the
 * whole product on PostgreSQL alone. `pg` is an optional peer dependency (needed for connection
 * settings; a `pg.Pool` you pass in is used as it is).
 */
export { PostgresStore, postgresStoreSql, type PostgresStoreOptions, type PostgresTableOptions } from "./store.js";
export { PostgresBus, POSTGRES_MAX_NOTIFY_BYTES, postgresChannel, type PostgresBusOptions } from "./bus.js";
export type { PgConnectionOptions } from "./pg.js";
