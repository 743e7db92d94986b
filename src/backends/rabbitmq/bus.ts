import { createHash } from "node:crypto";
import {
  checkOptions,
  checkUrl,
  optionError,
  parseDuration,
  parseResilience,
  preview,
  systemClock,
  type Bus,
  type BusConnection,
  type BusContext,
  type BusHandlers,
  type BusLimits,
  type BusResilience,
  type CircuitBreakerOptions,
  type Duration,
  type TimerClock,
} from "../../backend.js";

export interface RabbitMQBusOptions {
  /**
   * A `Connection` of `rabbitmq-client` that you created and keep ownership of (close it yourself,
   * after the cache). Each cache opens two channels on it — one to publish, one to consume — and
   * closes them on `close()`. Handle its `error` events yourself; the bus also listens to them
   * while it is connected and reports them as bus errors.
   */
  client?: unknown;
  /**
   * Alternatively, an `amqp://` or `amqps://` URL: the bus opens two connections of its own (with
   * automatic recovery) for each cache — one publishes, one consumes — and closes them on `close()`.
   */
  url?: string;
  /**
   * AMQP heartbeat of the connection the bus opens from `url`: a connection silent for about two
   * heartbeats is considered dead, dropped and reopened (and the cache repairs its L1). Default
   * `"5s"`; at least `"1s"` (AMQP counts it in whole seconds). Not used with `client`: there, the
   * connection's own setting applies.
   */
  heartbeat?: Duration;
  /** A publish (sent and confirmed by the broker) taking longer counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). */
  circuitBreaker?: CircuitBreakerOptions;
}

const OPTIONS = ["client", "url", "heartbeat", "timeout", "circuitBreaker"];

/**
 * The largest message the bus declares: RabbitMQ 4's default `max_message_size` (3.x allows
 * 128 MiB). The cache itself never sends more than 64 KiB in one message.
 */
export const RABBITMQ_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** An AMQP exchange name is a short string: at most 255 bytes. */
const MAX_NAME_BYTES = 255;
/** Pause after a failed consumer setup, doubling up to the second figure. */
const RETRY_MS = [100, 1_000] as const;

/** Longest `close()` waits for the broker to answer a channel or connection close. */
const CLOSE_WAIT_MS = 1_000;

/** Waits for `promise` (its failure ignored) at most `ms`. */
async function within(ms: number, promise: Promise<unknown>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([promise.catch(() => {}), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** Anything with methods: `rabbitmq-client` is typed structurally, so its types are not required. */
type AnyClient = Record<string, any>;

/**
 * The exchange of a channel: the channel's name itself when it fits in an AMQP short string, else
 * its beginning and a hash of the whole (two long names never share an exchange).
 */
export function exchangeName(channel: string): string {
  if (Buffer.byteLength(channel) <= MAX_NAME_BYTES) return channel;
  const hash = createHash("sha256").update(channel).digest("hex");
  let head = channel.slice(0, 150);
  while (Buffer.byteLength(head) > 150) head = head.slice(0, -1);
  return `${head}~${hash}`;
}

function isConnection(client: unknown): client is AnyClient {
  const c = client as AnyClient;
  return c !== null && typeof c === "object" && typeof c.acquire === "function" && typeof c.createPublisher === "function" && typeof c.on === "function";
}

/** The text of a delivered message: sent as bytes; a string or object if another publisher set a content type. */
function textOf(body: unknown): string {
  if (typeof body === "string") return body;
  if (Buffer.isBuffer(body)) return body.toString("utf8");
  return JSON.stringify(body) ?? "";
}

/**
 * Invalidation bus on RabbitMQ (AMQP 0-9-1, with `rabbitmq-client`): one durable fanout exchange
 * per channel (`<prefix>:bus`), and for each connected cache an exclusive, auto-deleted queue with
 * a server-generated name, bound to it. Publishing uses publisher confirms: a publish resolves
 * once the broker has taken the message.
 *
 * Nothing on the broker belongs to an instance for longer than its connection: the queue goes
 * when its consumer or connection does. So the messages published while an instance was away are
 * gone with its old queue — every loss of the consuming channel (connection dropped, broker
 * restarted, `rabbitmqctl close_all_connections`, the queue deleted) is reported as a gap, and
 * the cache repairs its L1 once a new queue is bound.
 */
export class RabbitMQBus implements Bus {
  readonly connection: object | undefined;
  readonly resilience: BusResilience;
  readonly limits: BusLimits = { maxMessageBytes: RABBITMQ_MAX_MESSAGE_BYTES };
  readonly #client: AnyClient | undefined;
  readonly #url: string | undefined;
  readonly #heartbeatS: number;

  constructor(options: RabbitMQBusOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/rabbitmq: RabbitMQBus needs options: { client } or { url }");
    checkOptions(options, OPTIONS, "RabbitMQBus");
    if ((options.client === undefined) === (options.url === undefined)) throw optionError("client", "or `url` must be given (exactly one of them)");
    if (options.client !== undefined && !isConnection(options.client)) throw optionError("client", `must be a Connection of rabbitmq-client (got ${preview(options.client)})`);
    if (options.url !== undefined) checkUrl(options.url, ["amqp", "amqps"]);
    this.#client = options.client as AnyClient | undefined;
    this.connection = this.#client;
    this.#url = options.url;
    const heartbeatMs = options.heartbeat === undefined ? 5000 : parseDuration("heartbeat", options.heartbeat, false);
    if (!(heartbeatMs >= 1000)) throw optionError("heartbeat", "must be at least 1s (AMQP counts heartbeats in whole seconds)");
    this.#heartbeatS = Math.min(Math.round(heartbeatMs / 1000), 65_535);
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    const owned = this.#client === undefined;
    // Owned: one connection to publish and one to consume, as RabbitMQ advises — the broker's flow
    // control throttles a publishing connection by pausing its reads, which would hold back the
    // deliveries of a consumer on the same connection.
    const pubConn = owned ? await this.#open() : this.#client!;
    const subConn = owned ? await this.#open() : pubConn;
    const conns = owned ? [pubConn, subConn] : [pubConn];
    const exchange = exchangeName(channel);
    const onError = (error: unknown): void => handlers.onError(error, "connection");
    // An `error` event without a listener would end the process.
    for (const c of conns) c.on("error", onError);
    const declare = { exchange, type: "fanout", durable: true };
    const publisher = pubConn.createPublisher({ confirm: true, maxAttempts: 1, exchanges: [declare] }) as AnyClient;
    publisher.on?.("error", (error: unknown) => handlers.onError(error, "publish"));
    const consumer = new Consuming(subConn, exchange, handlers, context?.clock ?? systemClock);
    const release = async (): Promise<void> => {
      if (pubConn.ready) await within(CLOSE_WAIT_MS, publisher.close());
      else void publisher.close().catch(() => {});
      for (const c of conns) {
        if (owned) {
          // A connection that is down (the broker away) would wait for it: drop it at once instead.
          if (c.ready) await within(CLOSE_WAIT_MS, c.close());
          c.unsafeDestroy?.();
        }
        c.off?.("error", onError);
      }
    };
    try {
      await consumer.start();
    } catch (error) {
      await consumer.stop();
      await release();
      throw error;
    }
    return {
      publish: (message) => publisher.send({ exchange, routingKey: "" }, Buffer.from(message, "utf8")) as Promise<void>,
      close: async () => {
        await consumer.stop();
        await release();
      },
    };
  }

  async #open(): Promise<AnyClient> {
    let lib: AnyClient;
    try {
      lib = (await import("rabbitmq-client")) as AnyClient;
    } catch (error) {
      throw new Error(`layercache/rabbitmq: \`{ url }\` needs the client library rabbitmq-client; install it: npm install rabbitmq-client (${error instanceof Error ? error.message : String(error)})`);
    }
    const Connection = lib.Connection ?? lib.default?.Connection ?? lib.default;
    // Reconnect soon after a loss, backing off to one attempt a second: while the bus is deaf, peers'
    // invalidations are missed, so a broker that is back must be heard again within a second.
    // noDelay: an invalidation is one small frame, sent at once (Nagle's algorithm would hold it
    // back while an earlier one is unacknowledged).
    return new Connection({ url: this.#url, heartbeat: this.#heartbeatS, retryLow: 100, retryHigh: 1_000, noDelay: true, connectionName: "layercache bus" }) as AnyClient;
  }
}

/**
 * The consuming side: a channel of its own with an exclusive, server-named queue bound to the
 * exchange. When the channel closes (connection lost, broker restart, forced close) or the
 * consumer is cancelled (queue deleted), the bus is deaf; a new channel, queue and binding are set
 * up again — until that succeeds, with backoff — and then the cache is told to repair.
 */
class Consuming {
  readonly #conn: AnyClient;
  readonly #exchange: string;
  readonly #handlers: BusHandlers;
  readonly #clock: TimerClock;
  #ch: AnyClient | undefined;
  #stopped = false;
  #deaf = false;
  #timer: unknown;
  #delay = 0;
  #setting: Promise<void> | undefined;

  constructor(conn: AnyClient, exchange: string, handlers: BusHandlers, clock: TimerClock) {
    this.#conn = conn;
    this.#exchange = exchange;
    this.#handlers = handlers;
    this.#clock = clock;
  }

  /** Resolves once the queue is bound and consumed: messages published afterwards are delivered. */
  async start(): Promise<void> {
    await this.#setUp();
  }

  async #setUp(): Promise<void> {
    const ch = (await this.#conn.acquire()) as AnyClient;
    if (this.#stopped) {
      await ch.close().catch(() => {});
      return;
    }
    this.#ch = ch;
    ch.on("error", (error: unknown) => {
      if (this.#ch === ch) this.#handlers.onError(error, "subscribe");
    });
    ch.once("close", () => this.#lost(ch));
    // The broker deleted the queue (or cancelled the consumer): the channel stays open; replace it.
    ch.once("basic.cancel", () => {
      if (this.#ch !== ch) return;
      this.#handlers.onError(new Error(`layercache/rabbitmq: the broker cancelled the consumer of exchange ${JSON.stringify(this.#exchange)} (its queue was deleted?)`), "subscribe");
      void ch.close().catch(() => {});
    });
    try {
      await ch.exchangeDeclare({ exchange: this.#exchange, type: "fanout", durable: true });
      const { queue } = (await ch.queueDeclare({ queue: "", exclusive: true, autoDelete: true, durable: false })) as { queue: string };
      await ch.queueBind({ queue, exchange: this.#exchange, routingKey: "" });
      await ch.basicConsume({ queue, noAck: true, exclusive: true }, (msg: AnyClient) => {
        if (this.#ch !== ch || this.#stopped) return;
        try {
          this.#handlers.onMessage(textOf(msg.body));
        } catch (error) {
          this.#handlers.onError(error, "deliver");
        }
      });
    } catch (error) {
      if (this.#ch === ch) this.#ch = undefined;
      await ch.close().catch(() => {});
      throw error;
    }
  }

  /** The consuming channel closed: deaf until a new one is set up. */
  #lost(ch: AnyClient): void {
    if (this.#ch !== ch || this.#stopped) return;
    this.#ch = undefined;
    if (!this.#deaf) {
      this.#deaf = true;
      this.#handlers.onDisconnect();
    }
    this.#retry();
  }

  #retry(): void {
    if (this.#stopped || this.#timer !== undefined || this.#setting !== undefined) return;
    // Background work: nobody waits for it.
    this.#timer = this.#clock.setTimeout(
      () => {
        this.#timer = undefined;
        this.#setting = this.#setUp().then(
          () => {
            this.#setting = undefined;
            this.#delay = 0;
            if (this.#stopped || this.#ch === undefined) return;
            // A new queue: whatever was published while there was none is lost.
            this.#deaf = false;
            this.#handlers.onReconnect();
          },
          (error: unknown) => {
            this.#setting = undefined;
            if (this.#stopped) return;
            if (this.#delay === 0) this.#handlers.onError(error, "resubscribe");
            this.#delay = Math.min(Math.max(this.#delay * 2, RETRY_MS[0]), RETRY_MS[1]);
            this.#retry();
          },
        );
      },
      this.#delay,
      true,
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    // A setup under way (waiting for the broker to come back) closes its channel itself when it ends.
    const ch = this.#ch;
    this.#ch = undefined;
    // Closing the channel cancels the consumer: the auto-delete queue goes with it.
    if (ch !== undefined && ch.active !== false) await within(CLOSE_WAIT_MS, ch.close());
  }
}
