import { randomBytes } from "node:crypto";
import { checkOptions, optionError, parseDuration, parseResilience, systemClock, withTimeout, type CircuitBreakerOptions, type Bus, type BusConnection, type BusHandlers, type BusLimits, type BusResilience, type Duration } from "../../backend.js";
import { REDIS_MAX_BULK_BYTES, checkRedisUrl, driverFor, driverForUrl, type RedisDriver } from "./driver.js";

export interface RedisBusOptions {
  /** An ioredis `Redis` or `Cluster`, or a node-redis client or cluster, used to publish. The bus opens its own subscriber connection from it. */
  client?: unknown;
  /** Alternatively, a `redis://` URL: the bus opens and closes both of its connections. */
  url?: string;
  /**
   * How often the subscriber checks that it still hears the channel, by publishing to a channel of
   * its own and waiting for the echo. A missed echo (while publishing works) means the
   * subscription is broken: it is replaced and the cache repairs its L1; the echo coming back is
   * also how a regained subscription is confirmed. Default `"2s"`; must be positive.
   */
  heartbeat?: Duration;
  /** A publish taking longer counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). While open, invalidations are queued for republishing instead of waited on. */
  circuitBreaker?: CircuitBreakerOptions;
}

const KNOWN = ["client", "url", "heartbeat", "timeout", "circuitBreaker"];

/**
 * Invalidation bus on Redis pub/sub (standalone or Cluster). Publishing uses the given client;
 * subscribing uses a connection of its own. A lost subscription — a server restart, `CLIENT KILL
 * TYPE pubsub`, a network blip, or silence detected by the heartbeat — is reported to the cache,
 * which stops trusting L1 until the subscription is heard again.
 */
export class RedisBus implements Bus {
  /** The client passed in (see `L2Store.connection`). */
  readonly connection: object | undefined;
  readonly resilience: BusResilience;
  /**
   * Redis's own: a PUBLISH message is at most 512 MB (`proto-max-bulk-len`). The cache sends much
   * smaller ones: it splits invalidations into messages of at most 64 KiB, well inside the output
   * buffer Redis allows a subscriber (`client-output-buffer-limit pubsub`, 32 MB by default).
   */
  readonly limits: BusLimits = { maxMessageBytes: REDIS_MAX_BULK_BYTES };
  readonly #client: unknown;
  readonly #url: string | undefined;
  readonly #heartbeatMs: number;

  constructor(options: RedisBusOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/redis: RedisBus needs options: { client } or { url }");
    checkOptions(options, KNOWN, "RedisBus");
    if ((options.client === undefined) === (options.url === undefined)) throw optionError("client", "or `url` must be given (exactly one of them)");
    if (options.client !== undefined) driverFor(options.client); // fail now on a wrong client
    else checkRedisUrl(options.url);
    this.#client = options.client;
    this.connection = options.client as object | undefined;
    this.#url = options.url;
    this.#heartbeatMs = options.heartbeat === undefined ? 2000 : parseDuration("heartbeat", options.heartbeat, false);
    if (this.#heartbeatMs <= 0) throw optionError("heartbeat", "must be a positive duration");
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers): Promise<BusConnection> {
    const owned = this.#url !== undefined;
    const pub = owned ? await driverForUrl(this.#url!) : driverFor(this.#client);
    try {
      await pub.open();
      const sub = new Subscription(pub, channel, handlers, this.#heartbeatMs);
      await sub.start();
      return {
        publish: (message) => pub.publish(channel, message),
        close: async () => {
          await sub.stop();
          if (owned) await pub.quit();
        },
      };
    } catch (error) {
      if (owned) await pub.quit();
      throw error;
    }
  }
}

/** One subscriber connection with gap detection; replaced when it stops hearing. */
class Subscription {
  readonly #pub: RedisDriver;
  readonly #channel: string;
  readonly #echoChannel: string;
  readonly #handlers: BusHandlers;
  readonly #heartbeatMs: number;
  #sub: RedisDriver | undefined;
  #deaf = false;
  #stopped = false;
  #beating = false;
  #timer: unknown;
  /** Last heartbeat sent (and whether its publish succeeded), last one heard back. */
  #sent = 0;
  #sentOk = false;
  #heard = 0;

  constructor(pub: RedisDriver, channel: string, handlers: BusHandlers, heartbeatMs: number) {
    this.#pub = pub;
    this.#channel = channel;
    this.#echoChannel = `${channel}:echo:${randomBytes(6).toString("hex")}`;
    this.#handlers = handlers;
    this.#heartbeatMs = heartbeatMs;
  }

  async start(): Promise<void> {
    this.#sub = await this.#open();
    this.#schedule();
  }

  /** The next heartbeat, one interval from now (any length: see MAX_TIMER_MS); background work. */
  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = systemClock.setTimeout(
      () => {
        void this.#beat();
        this.#schedule();
      },
      this.#heartbeatMs,
      true,
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) systemClock.clearTimeout(this.#timer);
    await this.#sub?.quit();
  }

  async #open(): Promise<RedisDriver> {
    const sub = this.#pub.duplicate();
    sub.onState((state, error) => {
      if (sub !== this.#sub || this.#stopped) return;
      if (state === "down") this.#lost(error);
      // Back up: the client resubscribes by itself; the echo of a heartbeat proves it.
      else void this.#beat();
    });
    try {
      await sub.subscribe([this.#channel, this.#echoChannel], (channel, message) => {
        if (sub !== this.#sub) return;
        if (channel === this.#echoChannel) this.#echo(message);
        else this.#handlers.onMessage(message);
      });
    } catch (error) {
      await sub.quit();
      throw error;
    }
    return sub;
  }

  #lost(error?: unknown): void {
    if (error !== undefined) this.#handlers.onError(error, "subscribe");
    if (this.#deaf) return;
    this.#deaf = true;
    this.#handlers.onDisconnect();
  }

  #regained(): void {
    if (!this.#deaf || this.#stopped) return;
    this.#deaf = false;
    this.#handlers.onReconnect();
  }

  #echo(message: string): void {
    const n = Number(message);
    if (n > this.#heard) this.#heard = n;
    this.#regained();
  }

  async #beat(): Promise<void> {
    if (this.#stopped || this.#beating) return;
    this.#beating = true;
    try {
      // The previous ping was published but never came back: the subscription is silently broken.
      if (this.#sentOk && this.#heard < this.#sent) {
        this.#lost();
        await this.#replace();
      }
      const n = ++this.#sent;
      this.#sentOk = false;
      const published = this.#pub.publish(this.#echoChannel, String(n));
      // A hung server must not hold the heartbeat: give the publish one interval.
      await withTimeout(systemClock, published, this.#heartbeatMs, () => new Error("heartbeat publish timed out"), true);
      this.#sentOk = true;
    } catch (error) {
      this.#lost(error);
    } finally {
      this.#beating = false;
    }
  }

  async #replace(): Promise<void> {
    const old = this.#sub;
    let next: RedisDriver;
    try {
      next = await this.#open();
    } catch (error) {
      this.#handlers.onError(error, "resubscribe");
      return;
    }
    if (this.#stopped) {
      await next.quit();
      return;
    }
    this.#sub = next;
    await old?.quit().catch(() => {});
  }
}
