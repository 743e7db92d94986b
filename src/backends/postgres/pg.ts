import { createHash } from "node:crypto";
import { optionError, preview } from "../../backend.js";

/**
 * What the PostgreSQL store and bus share: loading `pg` at run time (an optional peer: only a user
 * who gives connection settings needs it installed), the connection options they accept, and SQL
 * identifier quoting. The `pg` objects are typed structurally, so `@types/pg` is never required.
 */

/** A query result, as `pg` gives it. */
export interface PgResult {
  rows: Record<string, unknown>[];
  rowCount: number | null;
}

/** A query as `pg` takes it: a named statement is prepared once per connection. */
export interface PgQuery {
  name?: string;
  text: string;
  values?: unknown[];
}

/** The part of a `pg.Pool` layercache uses. */
export interface PgPool {
  query(query: PgQuery | string): Promise<PgResult>;
  /** A connection of the pool for the caller alone, until it is released (`release(error)` destroys it). */
  connect?(): Promise<PgPoolClient>;
  end(): Promise<void>;
  on(event: "error", listener: (error: Error) => void): unknown;
  /** The settings the pool opens its connections with (`pg.Pool` keeps them here). */
  readonly options?: Record<string, unknown>;
}

/** A connection checked out of a `pg.Pool`. */
export interface PgPoolClient {
  query(query: PgQuery | string): Promise<PgResult>;
  release(error?: Error | boolean): void;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/** The part of a `pg.Client` layercache uses. */
export interface PgClient {
  connect(): Promise<void>;
  query(query: PgQuery | string): Promise<PgResult>;
  end(): Promise<void>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  removeAllListeners(event?: string): unknown;
  /** The server process id of the connection (set once connected). */
  readonly processID?: number | null;
}

export interface PgModule {
  Pool: new (config: Record<string, unknown>) => PgPool;
  Client: new (config: Record<string, unknown>) => PgClient;
}

/**
 * pg's own connection options a store or bus takes directly (`{ connectionString }`, or `{ host,
 * port, user, password, database, ssl }` …); any of them makes layercache open and close its own
 * connections with them.
 */
export const CONNECTION_OPTIONS = ["connectionString", "host", "port", "user", "password", "database", "ssl", "application_name", "keepAlive", "options"] as const;

export type PgConnectionOptions = {
  /** `postgres://user:password@host:port/database?…` (pg's `connectionString`). */
  connectionString?: string;
  host?: string;
  port?: number;
  user?: string;
  password?: string | (() => string | Promise<string>);
  database?: string;
  /** TLS settings, as pg takes them (`true`, or `tls.connect` options). */
  ssl?: boolean | Record<string, unknown>;
  /** Shown in `pg_stat_activity`. Default `"layercache"`. */
  application_name?: string;
  /** TCP keep-alive on the connections. Default true. */
  keepAlive?: boolean;
  /** Server settings sent at connection start (pg's `options`, as `-c name=value …`). */
  options?: string;
};

/** The connection settings given in `options` (the `CONNECTION_OPTIONS` present), checked; undefined when there are none. */
export function connectionSettings(options: Record<string, unknown>): Record<string, unknown> | undefined {
  const given = CONNECTION_OPTIONS.filter((k) => options[k] !== undefined);
  if (given.length === 0) return undefined;
  const cs = options.connectionString;
  if (cs !== undefined && (typeof cs !== "string" || !/^postgres(ql)?:\/\/./.test(cs))) {
    throw optionError("connectionString", `must be a postgres:// or postgresql:// URL (got ${preview(cs)})`);
  }
  for (const k of ["host", "user", "database", "application_name", "options"] as const) {
    if (options[k] !== undefined && typeof options[k] !== "string") throw optionError(k, `must be a string (got ${preview(options[k])})`);
  }
  if (options.port !== undefined && !(Number.isInteger(options.port) && (options.port as number) > 0 && (options.port as number) < 65536)) {
    throw optionError("port", `must be a TCP port number (got ${preview(options.port)})`);
  }
  const settings: Record<string, unknown> = { application_name: "layercache", keepAlive: true };
  for (const k of given) settings[k] = options[k];
  return settings;
}

/** Whether `pool` looks like a `pg.Pool` (or anything with its `query` and `end`). */
export function checkPool(pool: unknown, name = "pool"): PgPool {
  const p = pool as Partial<PgPool> | null;
  if (p === null || typeof p !== "object" || typeof p.query !== "function" || typeof p.end !== "function" || typeof p.on !== "function") {
    throw optionError(name, `must be a pg.Pool (got ${preview(pool)})`);
  }
  return p as PgPool;
}

let loading: Promise<PgModule> | undefined;

/** The `pg` module, imported on first use. */
export function loadPg(): Promise<PgModule> {
  loading ??= import("pg").then(
    (m: Record<string, any>) => (m.Pool !== undefined ? m : m.default) as PgModule,
    (error: unknown) => {
      loading = undefined;
      throw new Error(`layercache/postgres: connection settings need the PostgreSQL client library; install it: npm install pg (${error instanceof Error ? error.message : String(error)})`);
    },
  );
  return loading;
}

/** Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); a longer one is cut, silently, by the server. */
export const MAX_IDENTIFIER_BYTES = 63;

/** `name` as a quoted SQL identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Checks the option `option`: a non-empty identifier of at most `maxBytes` UTF-8 bytes, without NUL. */
export function checkIdentifier(option: string, value: unknown, maxBytes = MAX_IDENTIFIER_BYTES): string {
  if (typeof value !== "string" || value === "" || value.includes("\0") || Buffer.byteLength(value) > maxBytes) {
    throw optionError(option, `must be a non-empty name of at most ${maxBytes} bytes (got ${preview(value)})`);
  }
  return value;
}

/** Short stable hex digest (statement names, hashed channel names). */
export function digest(text: string, chars: number): string {
  return createHash("sha256").update(text).digest("hex").slice(0, chars);
}

/** The head of `text` of at most `bytes` UTF-8 bytes, never cutting a character. */
export function headOfBytes(text: string, bytes: number): string {
  let out = "";
  let used = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch);
    if (used + n > bytes) break;
    out += ch;
    used += n;
  }
  return out;
}
