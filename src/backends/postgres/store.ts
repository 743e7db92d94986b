import { RECORD_VERSION, RecordError, checkOptions, optionError, parseDuration, parseResilience, preview, systemClock, type CircuitBreakerOptions, type Duration, type L2Limits, type L2Resilience, type L2Store, type TimerClock } from "../../backend.js";
import { CONNECTION_OPTIONS, checkIdentifier, checkPool, connectionSettings, digest, loadPg, quoteIdent, type PgConnectionOptions, type PgPool, type PgPoolClient, type PgQuery, type PgResult } from "./pg.js";

export interface PostgresTableOptions {
  /** Schema of the table (created when missing, unless it is `public`). Default `"public"`. */
  schema?: string;
  /** Name of the table; at most 54 bytes (its index is named after it). Default `"layercache"`. */
  table?: string;
  /**
   * UNLOGGED (the default): writes skip the write-ahead log — faster, and a cache can lose its
   * rows; PostgreSQL empties the table after a crash (not after a clean restart) and does not
   * replicate it to standbys. `false` makes it an ordinary, logged table.
   */
  unlogged?: boolean;
}

export interface PostgresStoreOptions extends PostgresTableOptions, PgConnectionOptions {
  /**
   * A `pg.Pool` of yours: the store queries through it and never closes it. It keeps two of its
   * connections (one when the pool's `max` is under 4) for its writes until it is closed: close the
   * cache before `pool.end()` (which waits for connections checked out).
   */
  pool?: unknown;
  /** With connection settings: the most connections the store's own pool opens. Default 10. */
  max?: number;
  /**
   * Create the schema, table and index on first use (`CREATE … IF NOT EXISTS`). Default true; turn
   * it off when your migrations create them (`postgresStoreSql()` gives the statements).
   */
  createTable?: boolean;
  /**
   * How often expired rows are deleted, in the background (a bounded batch each time, through the
   * index on `expires_at`; reads never return an expired row, so this only reclaims space).
   * Default `"1m"`; `0` turns it off (run `store.prune()` yourself then).
   */
  pruneInterval?: Duration;
  /** Most rows one prune statement deletes. Default 1000. */
  pruneBatch?: number;
  /**
   * A statement taking longer counts as failed. Default `"1s"`; `0` disables. With connection
   * settings, it is also the server's `statement_timeout` on the store's connections, so a statement
   * stuck on a lock is cancelled by PostgreSQL instead of holding a connection.
   */
  timeout?: Duration;
  /** Circuit breaker: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"5s"`). */
  circuitBreaker?: CircuitBreakerOptions;
  /** The clock the prune schedule runs on (tests pass a `FakeClock`). Default: the real one. */
  clock?: TimerClock;
}

const KNOWN = ["pool", "max", "schema", "table", "unlogged", "createTable", "pruneInterval", "pruneBatch", "timeout", "circuitBreaker", "clock", ...CONNECTION_OPTIONS];

/** Longest table name: its index is named `<table>_expires_at` (63 bytes at most). */
const MAX_TABLE_BYTES = 54;

interface PendingWrite {
  key: string;
  record: string;
  ttl: number | null;
  resolve(): void;
  reject(error: unknown): void;
}

/** A notification of a bus paired with the store (`new PostgresBus({ store })`), waiting to go out after the writes asked for before it. */
interface PendingNotify {
  channel: string;
  payload: string;
  resolve(): void;
  reject(error: unknown): void;
}

type Outgoing = PendingWrite | PendingNotify;

const isNotify = (o: Outgoing): o is PendingNotify => (o as PendingNotify).channel !== undefined;

/** Most writes one statement carries, and most notifications. */
const MAX_WRITE_BATCH = 500;
const MAX_NOTIFY_BATCH = 500;

/** Most connections the store's writes go out on at once (see `PostgresStore.#run`). */
const MAX_LANES = 2;

type WriteConnection = { query(q: PgQuery): Promise<PgResult> };

/** A connection the store's writes go out on, whether a run sends on it now, and the keys of the statement under way. */
interface Lane {
  conn: PgPoolClient | undefined;
  busy: boolean;
  /** Waiting for its connection before it takes the next batch: what is queued meanwhile goes with it. */
  taking: boolean;
  keys: Set<string>;
}

/**
 * What a `PostgresBus` built with `{ store }` uses of its store (module-internal: see `storeLink`).
 * The same object is the `connection` of both, so the cache knows that a write and a message asked
 * for in that order go out in that order, and does not wait for an invalidation's L2 write before
 * publishing it.
 */
export interface StoreLink {
  /**
   * `pg_notify(channel, payload)` on the store's write connections, in the same statement as the
   * writes queued before it and not sent yet (a write and its invalidation asked for in the same
   * tick: one round trip, delivered when the write commits), never before one of them.
   */
  notify(channel: string, payload: string): Promise<void>;
  /** Settings for a session of the bus's own (to LISTEN): the store's connection settings, or its pool's. */
  settings(): Record<string, unknown>;
  /** The store's timeout (ms; 0: none): a notification may wait that long for the writes before it. */
  readonly timeoutMs: number;
}

let linkOf: (store: PostgresStore) => StoreLink;

/** The link of `store` for a bus that publishes through it (made on first use; one per store). */
export function storeLink(store: PostgresStore): StoreLink {
  return linkOf(store);
}

/**
 * Whether `error` is the server's answer about a statement (it has an SQLSTATE) that leaves the
 * connection usable — not a connection exception (class 08) nor the server ending the session
 * (57P01 administrator command, 57P02 crash shutdown, 57P03 cannot connect now).
 */
const fromServer = (error: unknown): boolean => {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) && !/^(08|57P0)/.test(code);
};

/** SQLSTATE of "relation does not exist". */
const UNDEFINED_TABLE = "42P01";

/** Statements one prune round runs at most (the next round goes on). */
const PRUNE_ROUND_STATEMENTS = 10;

/**
 * The generation of a record, as the conditional write compares it — the same rule as
 * `generationOf`: the second `|`-separated field of text starting with the record version, ""
 * for anything else. A generated column, so it can never disagree with the record.
 */
const GENERATION_SQL = `CASE WHEN left(record, ${RECORD_VERSION.length + 1}) = '${RECORD_VERSION}|' AND strpos(substr(record, ${RECORD_VERSION.length + 2}), '|') > 0 THEN split_part(record, '|', 2) ELSE '' END`;

function tableOptions(options: PostgresTableOptions): { schema: string; table: string; unlogged: boolean } {
  const schema = options.schema === undefined ? "public" : checkIdentifier("schema", options.schema);
  const table = options.table === undefined ? "layercache" : checkIdentifier("table", options.table, MAX_TABLE_BYTES);
  if (options.unlogged !== undefined && typeof options.unlogged !== "boolean") throw optionError("unlogged", `must be a boolean (got ${preview(options.unlogged)})`);
  return { schema, table, unlogged: options.unlogged ?? true };
}

/**
 * The SQL that creates the store's table and index (what the store runs on first use unless
 * `createTable: false`), for migrations:
 *
 * - `key` (text, collation "C", primary key): `<prefix>:<scope>:<key>` as the cache names it;
 * - `record` (text): the layercache record (envelope and payload);
 * - `gen` (text, generated from `record`): its generation, compared by a load's write-back;
 * - `expires_at` (timestamptz, NULL for never): when the record stops being read; indexed for the prune.
 */
export function postgresStoreSql(options: PostgresTableOptions = {}): string {
  checkOptions(options, ["schema", "table", "unlogged"], "postgresStoreSql");
  const { schema, table, unlogged } = tableOptions(options);
  const qualified = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  return [
    ...(schema === "public" ? [] : [`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)};`]),
    `CREATE ${unlogged ? "UNLOGGED " : ""}TABLE IF NOT EXISTS ${qualified} (`,
    `  key text COLLATE "C" PRIMARY KEY,`,
    `  record text NOT NULL,`,
    `  gen text GENERATED ALWAYS AS (${GENERATION_SQL}) STORED,`,
    `  expires_at timestamptz`,
    `);`,
    `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${table}_expires_at`)} ON ${qualified} (expires_at) WHERE expires_at IS NOT NULL;`,
  ].join("\n");
}

const noop = (): void => {};

/** Whether a record or key cannot be PostgreSQL text (it holds NUL). */
const holdsNul = (text: string): boolean => text.indexOf("\0") >= 0;

const nulError = (key: string, what: string): RecordError => new RecordError(`layercache/postgres: ${what} of ${preview(key)} contains a NUL character, which PostgreSQL text cannot hold`, { key });

/** One write per key, the last asked for, each in the place of its last write (so call order among keys holds). */
function lastPerKey(writes: PendingWrite[]): PendingWrite[] {
  const last = new Map<string, PendingWrite>();
  for (const w of writes) {
    last.delete(w.key);
    last.set(w.key, w);
  }
  return [...last.values()];
}

/** Milliseconds until expiry for the `$n::float8` parameter: null for never. */
const ttlParam = (ttlMs: number): number | null => (ttlMs === Infinity ? null : Math.max(1, Math.ceil(ttlMs)));

/**
 * L2 in a PostgreSQL table (UNLOGGED by default): one row per key, holding the layercache record,
 * its generation (a column generated from it) and its expiry time. Every operation is one
 * statement: a read is a SELECT by primary key (the reads of one tick share one `= ANY($1)`
 * SELECT), a set or remove an upsert, a load's write-back an upsert whose update happens only
 * when the stored generation is the one the load saw — atomic under concurrency, so of concurrent
 * write-backs exactly one wins. Expiry is by the server's clock (every instance agrees); expired
 * rows read as missing and a background prune deletes them in bounded batches.
 */
export class PostgresStore implements L2Store {
  readonly resilience: L2Resilience;
  /**
   * A key is a primary-key entry in a B-tree, whose entries must fit a third of a page (about
   * 2.7 kB): longer keys are hashed by the cache. A record is a `text` value, up to 1 GB in
   * PostgreSQL; the store declares 256 MiB (what one query of pg comfortably carries); the cache's
   * `maxValueBytes` (1 MiB by default) limits values long before.
   */
  readonly limits: L2Limits = { maxKeyBytes: 2048, maxRecordBytes: 256 * 1024 * 1024 };
  /** The table, schema-qualified and quoted. */
  readonly table: string;
  readonly #tableOptions: { schema: string; table: string; unlogged: boolean };
  readonly #createTable: boolean;
  readonly #settings: Record<string, unknown> | undefined;
  readonly #pruneIntervalMs: number;
  readonly #pruneBatch: number;
  readonly #clock: TimerClock;
  readonly #q: Record<"get" | "getMany" | "set" | "setMany" | "casMissing" | "cas" | "notify" | "notifyMany" | "setNotify" | "setManyNotifyMany" | "prune", PgQuery>;
  #pool: PgPool | undefined;
  #opening: Promise<PgPool> | undefined;
  #pruneTimer: unknown;
  #pruning: Promise<number> | undefined;
  #closed = false;

  constructor(options: PostgresStoreOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/postgres: PostgresStore needs options: { pool } or connection settings ({ connectionString } …)");
    checkOptions(options, KNOWN, "PostgresStore");
    this.#settings = connectionSettings(options as Record<string, unknown>);
    if ((options.pool === undefined) === (this.#settings === undefined)) throw optionError("pool", "or connection settings (`connectionString`, or `host`, `port` …) must be given (exactly one of them)");
    if (options.pool !== undefined) {
      this.#pool = checkPool(options.pool);
      if (options.max !== undefined) throw optionError("max", "applies to the store's own pool: set it on your pool instead");
    } else if (options.max !== undefined && !(Number.isInteger(options.max) && options.max > 0)) {
      throw optionError("max", `must be a positive integer (got ${preview(options.max)})`);
    }
    this.#tableOptions = tableOptions(options);
    if (options.createTable !== undefined && typeof options.createTable !== "boolean") throw optionError("createTable", `must be a boolean (got ${preview(options.createTable)})`);
    this.#createTable = options.createTable ?? true;
    this.#pruneIntervalMs = options.pruneInterval === undefined ? 60_000 : parseDuration("pruneInterval", options.pruneInterval, false);
    this.#pruneBatch = options.pruneBatch ?? 1000;
    if (!Number.isInteger(this.#pruneBatch) || this.#pruneBatch < 1) throw optionError("pruneBatch", `must be a positive integer (got ${preview(options.pruneBatch)})`);
    this.#clock = options.clock ?? systemClock;
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 5000);
    this.#stallMs = Math.min(Math.max(5 * this.resilience.timeoutMs!, 5000), 2 ** 31 - 1);
    if (this.#settings !== undefined) {
      const timeoutMs = this.resilience.timeoutMs!;
      if (timeoutMs > 0) {
        // Cancelled by the server past the timeout (a lock wait, a hung disk): the connection is freed.
        this.#settings.statement_timeout = Math.min(Math.ceil(timeoutMs), 2 ** 31 - 1);
        this.#settings.connectionTimeoutMillis = Math.min(Math.ceil(timeoutMs), 2 ** 31 - 1);
      }
      this.#settings.max = options.max ?? 10;
    }

    const { schema, table } = this.#tableOptions;
    this.table = `${quoteIdent(schema)}.${quoteIdent(table)}`;
    const t = this.table;
    const live = "(expires_at IS NULL OR expires_at > now())";
    const expiry = "now() + $3::float8 * interval '1 millisecond'";
    // Named statements are prepared once per connection; the name carries the table, so stores on other tables sharing a pool never clash.
    const name = (op: string): string => `layercache_${op}_${digest(t, 12)}`;
    const set = `INSERT INTO ${t} (key, record, expires_at) VALUES ($1, $2, ${expiry}) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at`;
    // Several sets in one statement (one row per key: the last set of a key wins, as it would one after the other).
    const setMany =
      `INSERT INTO ${t} (key, record, expires_at) SELECT k, r, now() + e * interval '1 millisecond' FROM unnest($1::text[], $2::text[], $3::float8[]) AS u(k, r, e) ` +
      `ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at`;
    this.#q = {
      get: { name: name("get"), text: `SELECT record FROM ${t} WHERE key = $1 AND ${live}` },
      getMany: { name: name("get_many"), text: `SELECT key, record FROM ${t} WHERE key = ANY($1::text[]) AND ${live}` },
      set: { name: name("set"), text: set },
      setMany: { name: name("set_many"), text: setMany },
      // Expecting "" (the load saw no record): insert, or replace a row that is expired or holds no
      // record. The conflicting row is locked and the condition read on its newest version: atomic.
      casMissing: {
        name: name("cas_missing"),
        text:
          `INSERT INTO ${t} AS c (key, record, expires_at) VALUES ($1, $2, ${expiry}) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at ` +
          `WHERE c.gen = '' OR c.expires_at <= now()`,
      },
      // Expecting a generation: only a live row of that generation is replaced (a concurrent update
      // makes PostgreSQL read the condition again on the new version: one of them wins).
      cas: {
        name: name("cas"),
        text: `UPDATE ${t} SET record = $2, expires_at = ${expiry} WHERE key = $1 AND gen = $4 AND ${live}`,
      },
      // A paired bus's notifications (see `#notify`), alone or after the writes in one statement:
      // `unnest` keeps their order, and PostgreSQL delivers them in it when the statement commits.
      notify: { name: name("notify"), text: "SELECT pg_notify($1, $2)" },
      notifyMany: { name: name("notify_many"), text: "SELECT pg_notify(c, m) FROM unnest($1::text[], $2::text[]) AS u(c, m)" },
      setNotify: { name: name("set_notify"), text: `WITH w AS (${set}) SELECT pg_notify($4, $5)` },
      setManyNotifyMany: { name: name("set_many_notify_many"), text: `WITH w AS (${setMany}) SELECT pg_notify(c, m) FROM unnest($4::text[], $5::text[]) AS u(c, m)` },
      prune: {
        name: name("prune"),
        text: `DELETE FROM ${t} WHERE key IN (SELECT key FROM ${t} WHERE expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) AND expires_at <= now()`,
      },
    };
  }

  /** The link of a bus paired with this store (`new PostgresBus({ store })`), else the pool passed in (see `L2Store.connection`). */
  get connection(): object | undefined {
    return this.#link ?? (this.#settings === undefined ? this.#pool : undefined);
  }

  static {
    linkOf = (store) =>
      (store.#link ??= {
        notify: (channel, payload) => store.#notify(channel, payload),
        settings: () => {
          if (store.#settings === undefined) return { ...store.#pool!.options, application_name: "layercache" };
          const own = { ...store.#settings };
          // The store's own limits, not a session's: the bus sets its own.
          delete own.statement_timeout;
          delete own.connectionTimeoutMillis;
          return own;
        },
        timeoutMs: store.resilience.timeoutMs!,
      });
  }

  /** Opens the pool (with connection settings) and creates the table when missing; starts the prune schedule. */
  async connect(): Promise<void> {
    await this.#ready();
  }

  /** Rejects with a `RecordError` for a key PostgreSQL cannot hold (NUL). Waits for this store's writes of the key still under way (see `#writesOf`). */
  get(key: string): Promise<string | null> {
    if (holdsNul(key)) return Promise.reject(nulError(key, "the key"));
    const run = (pool: PgPool): Promise<string | null> => this.#query(pool, this.#q.get, [key]).then((r) => (r.rows.length === 0 ? null : (r.rows[0]!.record as string)));
    const p = this.#usable;
    const writing = this.#writesOf.size === 0 ? undefined : this.#writesOf.get(key);
    if (writing !== undefined) return writing.then(() => this.#ready()).then(run);
    return p !== undefined ? run(p) : this.#ready().then(run);
  }

  /** One SELECT for all the keys; a key PostgreSQL cannot hold (NUL) is a `RecordError` in its place. */
  getMany(keys: string[]): Promise<(string | null | RecordError)[]> {
    const asked = keys.filter((k) => !holdsNul(k));
    const run = async (pool: PgPool): Promise<(string | null | RecordError)[]> => {
      const found = new Map<string, string>();
      if (asked.length > 0) {
        const r = await this.#query(pool, this.#q.getMany, [asked]);
        for (const row of r.rows) found.set(row.key as string, row.record as string);
      }
      return keys.map((k) => found.get(k) ?? (holdsNul(k) ? nulError(k, "the key") : null));
    };
    const p = this.#usable;
    if (this.#writesOf.size > 0) {
      const writing = asked.flatMap((k) => this.#writesOf.get(k) ?? []);
      if (writing.length > 0) return Promise.all(writing).then(() => this.#ready()).then(run);
    }
    return p !== undefined ? run(p) : this.#ready().then(run);
  }

  set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    if (holdsNul(key)) return Promise.reject(nulError(key, "the key"));
    if (holdsNul(record)) return Promise.reject(nulError(key, "the record"));
    const done = this.#set(key, record, ttlParam(ttlMs), ifGeneration);
    // Registered at the call, before anything is awaited: a read asked for after this call waits for it.
    const settled = done.then(noop, noop);
    const before = this.#writesOf.get(key);
    const all = before === undefined ? settled : Promise.all([before, settled]).then(noop);
    this.#writesOf.set(key, all);
    void all.then(() => {
      if (this.#writesOf.get(key) === all) this.#writesOf.delete(key);
    });
    return done;
  }

  async #set(key: string, record: string, ttl: number | null, ifGeneration: string | undefined): Promise<boolean> {
    if (ifGeneration === undefined) {
      await this.#write(key, record, ttl);
      return true;
    }
    const pool = this.#usable ?? (await this.#ready());
    const r = ifGeneration === "" ? await this.#query(pool, this.#q.casMissing, [key, record, ttl]) : await this.#query(pool, this.#q.cas, [key, record, ttl, ifGeneration]);
    return r.rowCount === 1;
  }

  /**
   * An unconditional write (a `set`, a tombstone). They go out in call order on connections of
   * their own (lanes, see `#run`), a key's writes one after the other, never side by side: a write
   * that timed out for the cache may still be under way (waiting for a connection, or on a paused
   * server), and the tombstone the cache then queues in its place must land after it, not before —
   * side by side, the late value could land last and come back. Writes asked for while a statement
   * is under way go out together in the next one (one round trip). Write-backs of loads need no
   * order: the generation they expect fences them.
   */
  #write(key: string, record: string, ttl: number | null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#out.push({ key, record, ttl, resolve, reject });
      this.#kick();
    });
  }

  /**
   * A notification of a paired bus: it joins the writes' queue, so it goes out in the same
   * statement as the writes queued before it and not sent yet. PostgreSQL delivers a notification
   * when its statement commits, so a peer that hears it and reads L2 finds those writes there; and
   * an invalidation's tombstone and its message, asked for in the same tick, cost one round trip
   * instead of two in series.
   */
  #notify(channel: string, payload: string): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("layercache/postgres: the store is closed"));
    return new Promise<void>((resolve, reject) => {
      this.#out.push({ channel, payload, resolve, reject });
      this.#kick();
    });
  }

  /**
   * Puts a lane to work on what waits, unless every lane is busy (a busy lane takes more when its
   * statement is done). A second lane opens only on a pool roomy enough to spare it (`#maxLanes`).
   */
  #kick(): void {
    // A lane about to take the next batch takes this too (an invalidation's write and its message: one statement).
    if (this.#lanes.some((l) => l.taking)) return;
    let lane = this.#lanes.find((l) => !l.busy);
    if (lane === undefined) {
      if (this.#lanes.length >= this.#maxLanes(this.#usable)) return;
      lane = { conn: undefined, busy: false, taking: false, keys: new Set() };
      this.#lanes.push(lane);
    }
    const run = this.#run(lane);
    this.#running.add(run);
    const done = (): void => void this.#running.delete(run);
    run.then(done, done);
  }

  /** Two lanes on a pool that can lend them and still serve reads (pg.Pool's `options.max` of 4 or more), else one. */
  #maxLanes(pool: PgPool | undefined): number {
    const max = pool?.options?.max;
    return typeof pool?.connect === "function" && typeof max === "number" && max >= 4 ? MAX_LANES : 1;
  }

  /**
   * A lane sends statements until nothing waits that it may take. Each takes the next batch in call
   * order unless a write of it is for a key whose earlier write is still under way on another lane
   * (that one takes it once done): a key's writes land in call order, while an invalidation does not
   * wait behind a statement of other keys (under load, the writes of a `set` a moment before).
   */
  async #run(lane: Lane): Promise<void> {
    lane.busy = true;
    try {
      while (this.#out.length > 0) {
        let conn: WriteConnection;
        lane.taking = true;
        try {
          conn = await this.#laneConnection(lane, this.#usable ?? (await this.#ready()));
        } catch (error) {
          lane.taking = false;
          this.#writeFailed(error, lane);
          for (const o of this.#out.splice(0)) o.reject(error);
          continue;
        }
        lane.taking = false;
        // Taken after that wait, never at the call: a write and the notification asked for right
        // after it in the same tick (an invalidation and its message) go out in one statement.
        const next = this.#nextBatch(lane);
        if (next === undefined) return;
        const { batch, writes, notes } = next;
        try {
          await this.#unlessStalled(conn.query(this.#statement(writes, notes)));
          for (const o of batch) o.resolve();
        } catch (error) {
          this.#writeFailed(error, lane);
          if (writes.length === 0 || notes.length === 0 || !fromServer(error)) {
            for (const o of batch) o.reject(error);
            continue;
          }
          // The server refused the statement (a locked table past the timeout, a missing table):
          // the writes failed for their own reason, and the notifications go out alone, so that a
          // problem of L2 does not fail the bus too (the cache publishes after a failed L2 write).
          for (const w of writes) w.reject(error);
          try {
            await this.#unlessStalled(conn.query(this.#statement([], notes)));
            for (const n of notes) n.resolve();
          } catch (again) {
            this.#writeFailed(again, lane);
            for (const n of notes) n.reject(again);
          }
        } finally {
          lane.keys.clear();
        }
      }
    } finally {
      lane.busy = false;
    }
  }

  /**
   * The longest run of what waits (in call order) that one statement carries, split by kind, its
   * keys marked as under way on `lane`; undefined when the first thing waiting is a write of a key
   * another lane is writing, or a notification while another lane has writes under way.
   */
  #nextBatch(lane: Lane): { batch: Outgoing[]; writes: PendingWrite[]; notes: PendingNotify[] } | undefined {
    const writes: PendingWrite[] = [];
    const notes: PendingNotify[] = [];
    const others = this.#lanes.length > 1 ? this.#lanes.filter((l) => l !== lane && l.keys.size > 0) : [];
    let n = 0;
    for (const o of this.#out) {
      if (isNotify(o)) {
        // Writes under way on another lane were asked for before this notification, and it may
        // announce them (a removeMany of more keys than one statement carries): it waits for them.
        if (notes.length === MAX_NOTIFY_BATCH || others.length > 0) break;
        notes.push(o);
      } else {
        if (writes.length === MAX_WRITE_BATCH || others.some((l) => l.keys.has(o.key))) break;
        writes.push(o);
      }
      n++;
    }
    if (n === 0) return undefined;
    for (const w of writes) lane.keys.add(w.key);
    return { batch: this.#out.splice(0, n), writes, notes };
  }

  /**
   * One statement for the writes (the last of each key wins) and then the notifications: with
   * both, the writes run in a data-modifying WITH and the notifications in its SELECT — one
   * transaction, so the notifications are delivered when the writes commit, never before.
   */
  #statement(writes: PendingWrite[], notes: PendingNotify[]): PgQuery {
    const q = this.#q;
    if (notes.length === 0) {
      if (writes.length === 1) return { ...q.set, values: [writes[0]!.key, writes[0]!.record, writes[0]!.ttl] };
      const rows = lastPerKey(writes);
      return { ...q.setMany, values: [rows.map((w) => w.key), rows.map((w) => w.record), rows.map((w) => w.ttl)] };
    }
    if (writes.length === 0) {
      if (notes.length === 1) return { ...q.notify, values: [notes[0]!.channel, notes[0]!.payload] };
      return { ...q.notifyMany, values: [notes.map((n) => n.channel), notes.map((n) => n.payload)] };
    }
    if (writes.length === 1 && notes.length === 1) {
      const w = writes[0]!;
      return { ...q.setNotify, values: [w.key, w.record, w.ttl, notes[0]!.channel, notes[0]!.payload] };
    }
    const rows = lastPerKey(writes);
    return { ...q.setManyNotifyMany, values: [rows.map((w) => w.key), rows.map((w) => w.record), rows.map((w) => w.ttl), notes.map((n) => n.channel), notes.map((n) => n.payload)] };
  }

  /**
   * A write statement gets `#stallMs` at most: past it the connection is taken for dead (a network
   * that dropped it without a word never answers, and every write would wait behind it) and is
   * retired, which fails the statement; the next write takes a new connection. (A server that
   * answers at all has cancelled it long before, at `statement_timeout`, with connection settings.)
   */
  #unlessStalled<T>(statement: Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`layercache/postgres: a write took over ${this.#stallMs} ms; its connection is taken for dead`)), this.#stallMs);
      timer.unref?.();
    });
    return Promise.race([statement, stalled]).finally(() => clearTimeout(timer));
  }

  /** The connection `lane` sends on: one checked out of the pool and kept (a pool without `connect`: the pool itself, in order of sending only). */
  async #laneConnection(lane: Lane, pool: PgPool): Promise<WriteConnection> {
    if (lane.conn !== undefined) return lane.conn;
    if (typeof pool.connect !== "function") return { query: (q) => this.#query(pool, q, q.values ?? []) };
    const conn = await pool.connect();
    // A connection checked out of a pg.Pool has no error listener of the pool's: without one, its error would end the process.
    conn.on("error", (error) => {
      if (lane.conn === conn) this.#writeFailed(error, lane);
    });
    if (this.#closed) {
      conn.release();
      throw new Error("layercache/postgres: the store is closed");
    }
    return (lane.conn = conn);
  }

  /**
   * A write failed. An error of the server about the statement (it has an SQLSTATE: a timeout, a
   * missing table) leaves the connection usable; any other (the connection broke) retires it.
   */
  #writeFailed(error: unknown, lane: Lane): void {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === UNDEFINED_TABLE && this.#createTable) {
      this.#tableReady = false;
      this.#usable = undefined;
    }
    if (fromServer(error)) return;
    const conn = lane.conn;
    lane.conn = undefined;
    conn?.release(error instanceof Error ? error : true);
  }

  /**
   * Deletes expired rows, in statements of at most `pruneBatch` rows (rows another prune holds are
   * skipped, so instances pruning at once share the work); resolves with the count. At most 10
   * statements per call: what is left waits for the next one.
   */
  prune(): Promise<number> {
    this.#pruning ??= (async () => {
      try {
        const pool = await this.#ready();
        let total = 0;
        for (let i = 0; i < PRUNE_ROUND_STATEMENTS && !this.#closed; i++) {
          const r = await this.#query(pool, this.#q.prune, [this.#pruneBatch]);
          total += r.rowCount ?? 0;
          if ((r.rowCount ?? 0) < this.#pruneBatch) break;
        }
        return total;
      } finally {
        this.#pruning = undefined;
      }
    })();
    return this.#pruning;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#settings === undefined) this.#usable = undefined;
    if (this.#pruneTimer !== undefined) this.#clock.clearTimeout(this.#pruneTimer);
    this.#pruneTimer = undefined;
    await this.#pruning?.catch(() => {});
    // Writes under way finish first (on a server that does not answer, for a second at most).
    if (this.#running.size > 0) await Promise.race([Promise.all(this.#running), new Promise<void>((resolve) => setTimeout(resolve, 1000).unref())]);
    for (const lane of this.#lanes) {
      lane.conn?.release();
      lane.conn = undefined;
    }
    // A pool the user passed in is theirs to close.
    if (this.#settings === undefined) return;
    const pool = this.#pool ?? (await this.#opening?.catch(() => undefined));
    this.#pool = this.#usable = undefined;
    await pool?.end().catch(() => {});
  }

  /**
   * Runs a statement of the store. A table that has gone (dropped; or its creation lost in a crash
   * of a server that does not sync its commits) is created again by the next call.
   */
  #query(pool: PgPool, q: PgQuery, values: unknown[]): Promise<PgResult> {
    return pool.query({ name: q.name, text: q.text, values }).catch((error: unknown) => {
      if (this.#createTable && (error as { code?: unknown } | null)?.code === UNDEFINED_TABLE) {
        this.#tableReady = false;
        this.#usable = undefined;
      }
      throw error;
    });
  }

  /** The pool, once open and with the table in place; a failure is retried by the next call. */
  #ready(): Promise<PgPool> {
    if (this.#closed) return Promise.reject(new Error("layercache/postgres: the store is closed"));
    if (this.#usable !== undefined) return Promise.resolve(this.#usable);
    this.#opening ??= this.#open().then(
      (pool) => {
        this.#opening = undefined;
        if (!this.#closed) this.#usable = pool;
        return pool;
      },
      (error: unknown) => {
        this.#opening = undefined;
        throw error;
      },
    );
    return this.#opening;
  }

  #tableReady = false;
  /** Unconditional writes and a paired bus's notifications waiting to go out, in call order; the connection they go out on, and whether a statement is under way (see `#write`). */
  #out: Outgoing[] = [];
  /** Made when a bus is paired with this store (see `storeLink`). */
  #link: StoreLink | undefined;
  /**
   * The writes of each key still under way, settled when all of them are. A read of this store
   * waits for them: it then sees what this instance wrote before asking (the cache fills L1 with
   * what a read finds, and a read that overtook a `remove` of its own instance on another pooled
   * connection would bring the removed value back into L1). One connection (Redis) keeps that
   * order by itself; a pool of several does not.
   */
  #writesOf = new Map<string, Promise<void>>();
  /** The connections writes go out on (see `#run`), and their runs under way. */
  readonly #lanes: Lane[] = [];
  readonly #running = new Set<Promise<void>>();
  /** See `#unlessStalled`: five timeouts, at least 5 s. */
  readonly #stallMs: number;
  /** The pool once open and the table in place: what operations use without waiting. */
  #usable: PgPool | undefined;

  async #open(): Promise<PgPool> {
    let pool = this.#pool;
    if (pool === undefined) {
      const pg = await loadPg();
      pool = new pg.Pool(this.#settings!);
      // An idle connection of our own pool that fails must not end the process (pg emits "error").
      pool.on("error", () => {});
      if (this.#closed) {
        await pool.end().catch(() => {});
        throw new Error("layercache/postgres: the store is closed");
      }
      this.#pool = pool;
    }
    if (!this.#tableReady) {
      if (this.#createTable) await this.#ensureTable(pool);
      this.#tableReady = true;
    }
    if (this.#pruneTimer === undefined && this.#pruneIntervalMs > 0 && !this.#closed) this.#schedulePrune();
    return pool;
  }

  /**
   * Creates the table when it is missing. Instances starting together would race on CREATE … IF
   * NOT EXISTS (which is not safe under concurrency: it can fail on the catalog's unique index), so
   * creation runs in one transaction (the statements of one simple query; rolled back as a whole
   * on an error) holding an advisory lock named after the table.
   */
  async #ensureTable(pool: PgPool): Promise<void> {
    const { schema, table } = this.#tableOptions;
    const exists = await pool.query({ text: "SELECT to_regclass($1) IS NOT NULL AS present", values: [this.table] });
    if (exists.rows[0]?.present === true) return;
    const lock = `SELECT pg_advisory_xact_lock(${parseInt(digest(`layercache:${schema}.${table}`, 12), 16)});`;
    await pool.query(`${lock}\n${postgresStoreSql(this.#tableOptions)}`);
  }

  #schedulePrune(): void {
    this.#pruneTimer = this.#clock.setTimeout(
      () => {
        if (this.#closed) return;
        // Background work: a failure (the server away) waits for the next round.
        void this.prune()
          .catch(() => {})
          .finally(() => {
            if (!this.#closed) this.#schedulePrune();
          });
      },
      this.#pruneIntervalMs,
      true,
    );
  }
}
