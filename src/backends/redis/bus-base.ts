import { checkOptions, optionError, parseDuration, parseResilience, systemClock, type Bus, type BusConnection, type BusContext, type BusHandlers, type BusLimits, type BusResilience, type CircuitBreakerOptions, type Duration, type TimerClock } from "../../backend.js";
import { REDIS_MAX_BULK_BYTES, checkRedisUrl, driverFor, driverForUrl, type RedisDriver } from "./driver.js";

/** The options both Redis buses take. */
export interface RedisBusBaseOptions {
  /** An ioredis `Redis` or `Cluster`, or a node-redis client or cluster, used to publish. The bus opens its own listening connection from it. */
  client?: unknown;
  /** Alternatively, a `redis://` URL: the bus opens and closes both of its connections. */
  url?: string;
  /**
   * How often the bus checks that it still hears the channel. A check that fails (while the
   * server answers) means the listening connection is silently broken: it is replaced. Default
   * `"2s"`; must be positive.
   */
  heartbeat?: Duration;
  /** A publish taking longer counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). While open, invalidations are queued for republishing instead of waited on. */
  circuitBreaker?: CircuitBreakerOptions;
}

export const BASE_OPTIONS = ["client", "url", "heartbeat", "timeout", "circuitBreaker"];

/** What a bus listens with, once connected. */
export interface Listener {
  publish(message: string): Promise<void>;
  stop(): Promise<void>;
}

/**
 * What the Redis buses share: their options, and connecting — the publishing client (the one
 * given, or one opened from `url` and closed with the bus) and a listener of the bus's kind on a
 * connection of its own.
 */
export abstract class RedisBusBase implements Bus {
  /** The client passed in (see `L2Store.connection`). */
  readonly connection: object | undefined;
  readonly resilience: BusResilience;
  /**
   * Redis's own: a message (a PUBLISH or a stream entry) is at most 512 MB (`proto-max-bulk-len`).
   * The cache sends much smaller ones: it splits invalidations into messages of at most 64 KiB,
   * well inside the output buffer Redis allows a subscriber (`client-output-buffer-limit pubsub`,
   * 32 MB by default).
   */
  readonly limits: BusLimits = { maxMessageBytes: REDIS_MAX_BULK_BYTES };
  protected readonly heartbeatMs: number;
  readonly #client: unknown;
  readonly #url: string | undefined;

  constructor(options: RedisBusBaseOptions, known: readonly string[], name: string) {
    if (options === null || typeof options !== "object") throw new TypeError(`layercache/redis: ${name} needs options: { client } or { url }`);
    checkOptions(options, known, name);
    if ((options.client === undefined) === (options.url === undefined)) throw optionError("client", "or `url` must be given (exactly one of them)");
    if (options.client !== undefined) driverFor(options.client); // fail now on a wrong client
    else checkRedisUrl(options.url);
    this.#client = options.client;
    this.connection = options.client as object | undefined;
    this.#url = options.url;
    this.heartbeatMs = options.heartbeat === undefined ? 2000 : parseDuration("heartbeat", options.heartbeat, false);
    if (this.heartbeatMs <= 0) throw optionError("heartbeat", "must be a positive duration");
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    const owned = this.#url !== undefined;
    const pub = owned ? await driverForUrl(this.#url!) : driverFor(this.#client);
    try {
      await pub.open();
      const listener = await this.listen(pub, channel, handlers, context?.clock ?? systemClock);
      return {
        publish: (message) => listener.publish(message),
        close: async () => {
          await listener.stop();
          if (owned) await pub.quit();
        },
      };
    } catch (error) {
      if (owned) await pub.quit();
      throw error;
    }
  }

  /** Starts listening on `channel`; resolves once messages published afterwards will be delivered. */
  protected abstract listen(pub: RedisDriver, channel: string, handlers: BusHandlers, clock: TimerClock): Promise<Listener>;
}

export interface ListeningHooks {
  /** Makes a new connection listen (subscribes it); `current(conn)` tells its messages from a replaced one's. */
  setUp?(conn: RedisDriver): Promise<void>;
  /** The connection in use was lost (the client reconnects by itself). */
  onDown(error?: unknown): void;
  /** The connection in use is back. */
  onUp(): void;
  /** A connection replaced the silent one. */
  onReplaced?(conn: RedisDriver): void;
  /** Report the loss of any node's connection of a cluster client (see `RedisDriver.onState`). */
  everyNode?: boolean;
  onError(error: unknown, operation: string): void;
}

/**
 * The listening connection of a bus: one of its own, duplicated from the publishing client, and
 * replaced when the bus finds it silently broken. Only the connection in use reports anything.
 */
export class Listening {
  readonly #pub: RedisDriver;
  readonly #hooks: ListeningHooks;
  #conn: RedisDriver | undefined;
  #stopped = false;

  constructor(pub: RedisDriver, hooks: ListeningHooks) {
    this.#pub = pub;
    this.#hooks = hooks;
  }

  /** Whether `conn` is the connection in use (not a replaced one, not after `stop`). */
  current(conn: RedisDriver): boolean {
    return conn === this.#conn && !this.#stopped;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  async start(): Promise<RedisDriver> {
    return (this.#conn = await this.#open());
  }

  /** Opens a new connection in place of the one in use (which is closed); a failure is reported, and the old one kept. */
  async replace(): Promise<void> {
    const old = this.#conn;
    let next: RedisDriver;
    try {
      next = await this.#open();
    } catch (error) {
      this.#hooks.onError(error, "reconnect");
      return;
    }
    if (this.#stopped) {
      await next.quit(true);
      return;
    }
    this.#conn = next;
    this.#hooks.onReplaced?.(next);
    await old?.quit(true).catch(() => {});
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    const conn = this.#conn;
    this.#conn = undefined;
    await conn?.quit(true);
  }

  async #open(): Promise<RedisDriver> {
    const conn = this.#pub.duplicate();
    conn.onState((state, error) => {
      if (!this.current(conn)) return;
      if (state === "down") this.#hooks.onDown(error);
      else this.#hooks.onUp();
    }, this.#hooks.everyNode);
    try {
      await conn.open();
      await this.#hooks.setUp?.(conn);
    } catch (error) {
      await conn.quit(true);
      throw error;
    }
    return conn;
  }
}
