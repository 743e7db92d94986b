import { randomBytes } from "node:crypto";
import { Heartbeat, checkOptions, optionError, parseDuration, preview, parseResilience, systemClock, type Bus, type BusConnection, type BusContext, type BusHandlers, type BusLimits, type BusResilience, type CircuitBreakerOptions, type Duration, type TimerClock } from "../../backend.js";
import { CONNECTION_OPTIONS, MAX_IDENTIFIER_BYTES, checkPool, connectionSettings, digest, headOfBytes, loadPg, quoteIdent, type PgClient, type PgConnectionOptions, type PgModule } from "./pg.js";
import { PostgresStore, storeLink, type StoreLink } from "./store.js";

export interface PostgresBusOptions extends PgConnectionOptions {
  /**
   * The `PostgresStore` the cache uses as L2 — what most users want when both are on PostgreSQL.
   * The bus then publishes on the store's write connections, in the queue of the store's writes:
   * an invalidation's L2 write (a `remove`'s tombstone, a `set`'s value) and its notification go
   * to the server as one statement, one round trip instead of two in series, and PostgreSQL
   * delivers the notification when the write commits, so a peer that hears it and reads L2 finds
   * the write there. The bus still LISTENs on a session of its own (and sends its heartbeat from
   * another), opened with the store's connection settings (or its pool's) unless you give
   * connection settings or a `pool` here — give them when the store's connections go through
   * PgBouncer in transaction mode, which breaks LISTEN. Default `timeout` with a store: the
   * store's timeout plus one second (a notification waits for the write it follows).
   */
  store?: PostgresStore;
  /**
   * A `pg.Pool` whose connection settings the bus reuses (`pool.options`) to open a connection of
   * its own: LISTEN needs one session for as long as it listens, so the bus never listens or
   * publishes through a pooled connection. The pool itself is not used, nor closed.
   */
  pool?: unknown;
  /**
   * How often the bus checks that it still hears its channel, by notifying a channel of its own
   * and waiting for the notification to come back. A probe that fails, or comes back late, means the
   * connection is dead (a half-open TCP connection, a backend killed without a word): it is replaced
   * and the cache repairs its L1. Default `"2s"`; must be positive.
   */
  heartbeat?: Duration;
  /** A publish taking longer counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). */
  circuitBreaker?: CircuitBreakerOptions;
  /** First wait before reconnecting a lost connection; it doubles on each failed attempt. Default `"100ms"`. */
  reconnectDelay?: Duration;
  /** Longest wait between reconnection attempts. Default `"5s"`. */
  maxReconnectDelay?: Duration;
}

const KNOWN = ["store", "pool", "heartbeat", "timeout", "circuitBreaker", "reconnectDelay", "maxReconnectDelay", ...CONNECTION_OPTIONS];

/**
 * NOTIFY's payload must be shorter than 8000 bytes (in the default build of PostgreSQL): the
 * cache splits invalidations into messages that fit.
 */
export const POSTGRES_MAX_NOTIFY_BYTES = 7999;

/**
 * The channel PostgreSQL is asked to LISTEN to for the cache's `channel`: the same text when it
 * fits in an identifier (63 bytes), else its head and a digest of the whole — deterministic, so
 * every instance maps a long channel the same way (PostgreSQL would cut it silently on LISTEN and
 * refuse it in pg_notify).
 */
export function postgresChannel(channel: string): string {
  if (Buffer.byteLength(channel) <= MAX_IDENTIFIER_BYTES) return channel;
  const tail = `#${digest(channel, 16)}`;
  return headOfBytes(channel, MAX_IDENTIFIER_BYTES - tail.length) + tail;
}

/**
 * Invalidation bus on PostgreSQL LISTEN/NOTIFY. Each connection of the bus has two dedicated
 * PostgreSQL sessions (never pooled ones, which PgBouncer in transaction mode would hand to
 * someone else between statements, dropping the LISTEN): one LISTENs to the channel, the other
 * publishes with `pg_notify` in a statement of its own, outside any transaction of the
 * application, so a message is sent at once and never rolled back. Its own notifications are ignored.
 * Built with `{ store }`, it publishes the cache's messages on the store's write connection instead,
 * in one statement with the writes not yet sent (see `PostgresBusOptions.store`); the second session
 * then sends only the heartbeat's probes. (Those messages come back to the listening session like
 * anyone's — the store's connection may carry other buses' messages too — and the cache drops its
 * own by their sender id.)
 *
 * A lost session (a server restart, `pg_terminate_backend`, a network failure, or silence found by
 * the heartbeat) is reported to the cache, which stops trusting L1; the bus reconnects with
 * exponential backoff, LISTENs again, and reports the gap once it hears again (the cache repairs
 * L1: NOTIFY keeps nothing for a session that was away).
 */
export class PostgresBus implements Bus {
  readonly resilience: BusResilience;
  readonly limits: BusLimits = { maxMessageBytes: POSTGRES_MAX_NOTIFY_BYTES };
  /** With `store`: the store's link, which is the store's `connection` too (see `L2Store.connection`). */
  readonly connection: object | undefined;
  readonly #settings: Record<string, unknown> | undefined;
  readonly #pool: { options?: Record<string, unknown> } | undefined;
  readonly #store: StoreLink | undefined;
  readonly #heartbeatMs: number;
  readonly #reconnectMs: number;
  readonly #maxReconnectMs: number;

  constructor(options: PostgresBusOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/postgres: PostgresBus needs options: connection settings ({ connectionString } …) or { pool }");
    checkOptions(options, KNOWN, "PostgresBus");
    this.#settings = connectionSettings(options as Record<string, unknown>);
    if (options.store !== undefined) {
      if (!(options.store instanceof PostgresStore)) throw optionError("store", `must be a PostgresStore (got ${preview(options.store)})`);
      if (options.pool !== undefined && this.#settings !== undefined) throw optionError("pool", "or connection settings (for the LISTEN session) may be given with `store`, not both");
      this.#store = storeLink(options.store);
      this.connection = this.#store;
    } else if ((options.pool === undefined) === (this.#settings === undefined)) {
      throw optionError("pool", "or connection settings (`connectionString`, or `host`, `port` …) must be given (exactly one of them), or `store`");
    }
    if (options.pool !== undefined) this.#pool = checkPool(options.pool);
    this.#heartbeatMs = options.heartbeat === undefined ? 2000 : parseDuration("heartbeat", options.heartbeat, false);
    if (!(this.#heartbeatMs > 0)) throw optionError("heartbeat", "must be a positive duration");
    this.#reconnectMs = options.reconnectDelay === undefined ? 100 : parseDuration("reconnectDelay", options.reconnectDelay, false);
    if (!(this.#reconnectMs > 0)) throw optionError("reconnectDelay", "must be a positive duration");
    this.#maxReconnectMs = options.maxReconnectDelay === undefined ? 5000 : parseDuration("maxReconnectDelay", options.maxReconnectDelay, false);
    if (!(this.#maxReconnectMs >= this.#reconnectMs)) throw optionError("maxReconnectDelay", "must be at least reconnectDelay");
    // A notification that follows a write waits for it: the store's timeout, then one of its own.
    const storeMs = this.#store?.timeoutMs ?? 0;
    this.resilience = parseResilience(options.timeout ?? (storeMs > 0 ? storeMs + 1000 : undefined), options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    const pg = await loadPg();
    const settings = this.#settings ?? (this.#pool !== undefined ? { ...this.#pool.options, application_name: "layercache" } : this.#store!.settings());
    // A pool's own limits and timeouts mean nothing for one session kept open.
    for (const k of ["max", "min", "idleTimeoutMillis", "maxUses", "maxLifetimeSeconds", "allowExitOnIdle", "log", "Client", "Promise"]) delete settings[k];
    // A connection attempt into a network that drops packets would otherwise wait for the OS (minutes), holding up reconnection.
    settings.connectionTimeoutMillis ??= Math.min(Math.max(this.#heartbeatMs * 2, 5000), 2 ** 31 - 1);
    const listener = new Listener(pg, settings, postgresChannel(channel), handlers, context?.clock ?? systemClock, {
      heartbeatMs: this.#heartbeatMs,
      reconnectMs: this.#reconnectMs,
      maxReconnectMs: this.#maxReconnectMs,
    }, this.#store);
    await listener.start();
    return { publish: (message) => listener.publish(message), close: () => listener.stop() };
  }
}

/** Most notifications one statement sends. */
const MAX_NOTIFY_BATCH = 500;

interface PendingNotify {
  channel: string;
  payload: string;
  resolve(): void;
  reject(error: unknown): void;
}

/** The notifications of one session: those waiting, and whether a statement is under way. */
interface Sending {
  client: PgClient | undefined;
  waiting: PendingNotify[];
  busy: boolean;
}

interface Timing {
  heartbeatMs: number;
  reconnectMs: number;
  maxReconnectMs: number;
}

/**
 * One connection of the bus: a session that only LISTENs (replaced whenever it is lost, so
 * `pg_stat_activity` shows it as `LISTEN …`), and a session that publishes (opened again on the
 * next publish when it is lost). Publishing apart means a publish never waits behind the
 * listener, and the heartbeat tests the listener the way peers reach it: a probe published by the
 * other session must come back through it.
 */
class Listener {
  readonly #pg: PgModule;
  readonly #settings: Record<string, unknown>;
  readonly #channel: string;
  /** Where heartbeat probes go: a channel of this connection alone. */
  readonly #echo: string;
  readonly #handlers: BusHandlers;
  readonly #clock: TimerClock;
  readonly #t: Timing;
  /** The listening session in use, while it is usable. */
  #client: PgClient | undefined;
  #heartbeat: Heartbeat | undefined;
  /** The publishing session, while it is usable, and the one being opened. */
  #pub: PgClient | undefined;
  #pubOpening: Promise<PgClient> | undefined;
  /** Server process ids of the publishing sessions of this connection (the latest few): their notifications are its own. */
  readonly #ownPids: number[] = [];
  /** The cache was told the bus is deaf (and not yet that it hears again). */
  #down = false;
  #stopped = false;
  #retryTimer: unknown;
  #retryDelay: number;
  #reconnecting: Promise<void> | undefined;
  /** Notifications of the publishing session waiting to be sent (see `#notify`). */
  #sending: Sending = { client: undefined, waiting: [], busy: false };
  /** With a store: messages go out on its write connection; the publishing session sends only heartbeat probes. */
  readonly #store: StoreLink | undefined;

  constructor(pg: PgModule, settings: Record<string, unknown>, channel: string, handlers: BusHandlers, clock: TimerClock, timing: Timing, store: StoreLink | undefined) {
    this.#store = store;
    this.#pg = pg;
    this.#settings = settings;
    this.#channel = channel;
    this.#echo = `layercache:echo:${randomBytes(8).toString("hex")}`;
    this.#handlers = handlers;
    this.#clock = clock;
    this.#t = timing;
    this.#retryDelay = timing.reconnectMs;
  }

  /** Both sessions: resolves once the first listens, rejects (closing what it opened) when either cannot be opened. */
  async start(): Promise<void> {
    const client = await this.#open(true);
    try {
      await this.#publisher();
    } catch (error) {
      await closeClient(client);
      throw error;
    }
    this.#use(client);
  }

  /** `pg_notify` on the store's write connection (with a store), else on the publishing session (opened again first if it was lost). */
  publish(message: string): Promise<void> {
    if (this.#stopped) return Promise.reject(new Error("layercache/postgres: the bus connection is closed"));
    if (this.#store !== undefined) return this.#store.notify(this.#channel, message);
    const pub = this.#pub;
    if (pub !== undefined) return this.#notify(pub, this.#channel, message);
    return this.#publisher().then((p) => this.#notify(p, this.#channel, message));
  }

  /** The publishing session, opened when there is none. */
  #publisher(): Promise<PgClient> {
    if (this.#pub !== undefined) return Promise.resolve(this.#pub);
    this.#pubOpening ??= this.#open(false).then(
      (client) => {
        this.#pubOpening = undefined;
        if (this.#stopped) {
          void closeClient(client);
          throw new Error("layercache/postgres: the bus connection is closed");
        }
        const lost = (): void => {
          if (this.#pub !== client) return;
          this.#pub = undefined;
          this.#failWaiting(new Error("layercache/postgres: the bus's publishing session was lost"));
          void closeClient(client);
        };
        client.on("error", lost);
        client.on("end", lost);
        if (typeof client.processID === "number") {
          this.#ownPids.push(client.processID);
          if (this.#ownPids.length > 8) this.#ownPids.shift();
        }
        this.#pub = client;
        this.#sending = { client, waiting: [], busy: false };
        return client;
      },
      (error: unknown) => {
        this.#pubOpening = undefined;
        throw error;
      },
    );
    return this.#pubOpening;
  }

  /**
   * `pg_notify` on the publishing session `client`. One statement at a time (pg deprecates queueing
   * on a busy client), and the notifications asked for while one is under way go out together in
   * the next, one round trip for all of them (`unnest` keeps their order; PostgreSQL delivers them
   * in that order when the statement commits).
   */
  #notify(client: PgClient, channel: string, payload: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const s = this.#sending;
      if (s.client !== client) return reject(new Error("layercache/postgres: the bus's publishing session was replaced"));
      s.waiting.push({ channel, payload, resolve, reject });
      if (!s.busy) void this.#flush(s);
    });
  }

  async #flush(s: Sending): Promise<void> {
    s.busy = true;
    try {
      while (s.waiting.length > 0) {
        const batch = s.waiting.splice(0, MAX_NOTIFY_BATCH);
        try {
          if (batch.length === 1) await s.client!.query({ name: "layercache_notify", text: "SELECT pg_notify($1, $2)", values: [batch[0]!.channel, batch[0]!.payload] });
          else await s.client!.query({ name: "layercache_notify_many", text: "SELECT pg_notify(c, m) FROM unnest($1::text[], $2::text[]) AS u(c, m)", values: [batch.map((n) => n.channel), batch.map((n) => n.payload)] });
          for (const n of batch) n.resolve();
        } catch (error) {
          for (const n of batch) n.reject(error);
        }
      }
    } finally {
      s.busy = false;
    }
  }

  /** Rejects the notifications not yet sent on the publishing session (the cache republishes them). */
  #failWaiting(error: Error): void {
    const waiting = this.#sending.waiting.splice(0);
    this.#sending = { client: undefined, waiting: [], busy: false };
    for (const n of waiting) n.reject(error);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#heartbeat?.stop();
    if (this.#retryTimer !== undefined) this.#clock.clearTimeout(this.#retryTimer);
    const client = this.#client;
    this.#client = undefined;
    const pub = this.#pub ?? (await this.#pubOpening?.catch(() => undefined));
    this.#pub = undefined;
    this.#failWaiting(new Error("layercache/postgres: the bus connection is closed"));
    await this.#reconnecting?.catch(() => {});
    await Promise.all([client && closeClient(client), pub && closeClient(pub)]);
  }

  /** A new session; `listening`: it listens to the channel and the echo channel. */
  async #open(listening: boolean): Promise<PgClient> {
    const client = new this.#pg.Client(this.#settings);
    // Until it is in use, errors of a session are only a failed attempt (the rejection says it).
    client.on("error", () => {});
    try {
      await client.connect();
      if (listening) await client.query(`LISTEN ${quoteIdent(this.#channel)}; LISTEN ${quoteIdent(this.#echo)}`);
    } catch (error) {
      await closeClient(client);
      throw error;
    }
    return client;
  }

  /** Makes `client` the listening session in use, with a heartbeat of its own. */
  #use(client: PgClient): void {
    this.#client = client;
    client.on("notification", (n: { processId?: number; channel: string; payload?: string }) => {
      if (this.#client !== client) return;
      if (n.channel === this.#echo) this.#heartbeat?.heard(Number(n.payload));
      // Its own messages come back to a connection that listens: the cache would ignore them anyway.
      else if (n.channel === this.#channel && !this.#ownPids.includes(n.processId ?? -1)) this.#handlers.onMessage(n.payload ?? "");
    });
    client.on("error", (error: unknown) => this.#lost(client, error));
    client.on("end", () => this.#lost(client));
    // A new heartbeat per listening session: a probe sent while the last one was in use must not count against this one.
    const heartbeat: Heartbeat = new Heartbeat({
      clock: this.#clock,
      intervalMs: this.#t.heartbeatMs,
      probe: (n) => this.#publisher().then((pub) => this.#notify(pub, this.#echo, String(n))),
      onLost: () => this.#deaf(),
      onRegained: () => this.#hears(),
      // The probe was published but never came back: the listening session is silently dead.
      onSilence: () => this.#lost(client, new Error("layercache/postgres: the LISTEN session stopped hearing its heartbeat: replacing it")),
      onError: (error) => this.#handlers.onError(error, "heartbeat"),
    });
    this.#heartbeat?.stop();
    this.#heartbeat = heartbeat;
    heartbeat.start();
  }

  #deaf(): void {
    if (this.#down || this.#stopped) return;
    this.#down = true;
    this.#handlers.onDisconnect();
  }

  #hears(): void {
    if (!this.#down || this.#stopped) return;
    this.#down = false;
    this.#handlers.onReconnect();
  }

  /** The listening session `client` is lost (once per session): report the gap, drop it and reconnect. */
  #lost(client: PgClient, error?: unknown): void {
    if (this.#client !== client || this.#stopped) return;
    this.#client = undefined;
    this.#heartbeat?.stop();
    this.#heartbeat = undefined;
    if (error !== undefined) this.#handlers.onError(error, "subscribe");
    this.#deaf();
    void closeClient(client);
    this.#retryDelay = this.#t.reconnectMs;
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#stopped) return;
    // Jittered, so that instances that lost the server together do not return in lockstep.
    const delay = this.#retryDelay * (0.75 + Math.random() * 0.5);
    this.#retryTimer = this.#clock.setTimeout(
      () => {
        this.#retryTimer = undefined;
        this.#reconnecting = this.#reconnect().finally(() => (this.#reconnecting = undefined));
      },
      delay,
      true,
    );
  }

  async #reconnect(): Promise<void> {
    if (this.#stopped) return;
    let client: PgClient;
    try {
      client = await this.#open(true);
    } catch (error) {
      if (this.#stopped) return;
      this.#handlers.onError(error, "reconnect");
      this.#retryDelay = Math.min(this.#retryDelay * 2, this.#t.maxReconnectMs);
      this.#scheduleReconnect();
      return;
    }
    if (this.#stopped) {
      await closeClient(client);
      return;
    }
    this.#use(client);
    // It listens: every message published from now on is delivered; what came in between was missed.
    this.#hears();
  }
}

/** Ends a session without waiting on a dead server for long, and without an error escaping. */
async function closeClient(client: PgClient): Promise<void> {
  client.removeAllListeners("notification");
  client.on("error", () => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, 1000);
    timer.unref?.();
  });
  try {
    await Promise.race([client.end().catch(() => {}), late]);
  } finally {
    clearTimeout(timer);
  }
  // Still open after a second (a hung server): drop the socket.
  (client as { connection?: { stream?: { destroy?(): void } } }).connection?.stream?.destroy?.();
}
