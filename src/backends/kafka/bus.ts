import { randomBytes } from "node:crypto";
import { Heartbeat, checkOptions, readLoop, optionError, parseDuration, parseResilience, preview, systemClock, type Bus, type BusConnection, type BusContext, type BusHandlers, type BusLimits, type BusResilience, type CircuitBreakerOptions, type Duration, type TimerClock } from "../../backend.js";
import { keyOf, topicFor } from "./topic.js";

export interface KafkaBusOptions {
  /**
   * A `Producer` of `@platformatic/kafka`, created and closed by you, with the library's default
   * (Buffer) or string serializers. The bus publishes with it and opens its own reading client (and,
   * to create the topic, a short-lived admin client) with the same brokers and connection settings.
   */
  client?: unknown;
  /** Alternatively, bootstrap brokers (`["host:port", ...]`): the bus opens and closes all of its clients. */
  brokers?: string[];
  /**
   * Settings for the clients the bus opens, passed to `@platformatic/kafka` as they are (`tls`,
   * `sasl`, `connectTimeout`, `clientId` ...). With `client` they are taken from it. Default: none.
   */
  clientOptions?: Record<string, unknown>;
  /**
   * Partitions of the topic when the bus creates it. Messages are keyed by scope: one scope's
   * invalidations stay in order on one partition. Default 1 (one total order; a bus topic carries
   * little). Give every instance the same value; an existing topic is left as it is.
   */
  partitions?: number;
  /** Replication factor of the topic when the bus creates it. Default: the broker's `default.replication.factor`. */
  replicationFactor?: number;
  /**
   * How long the topic keeps messages (`retention.ms`, when the bus creates it): an instance away for
   * longer cannot catch up and repairs its L1 instead. Default `"1h"`.
   */
  retention?: Duration;
  /**
   * How often the bus checks that its reader still answers (a fetch waits at most a third of this
   * for new messages, so a healthy reader answers twice an interval). A reader silent for a whole
   * interval while the broker answers is replaced. Default `"2s"`; must be positive.
   */
  heartbeat?: Duration;
  /** A publish taking longer counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). */
  circuitBreaker?: CircuitBreakerOptions;
}

const OPTIONS = ["client", "brokers", "clientOptions", "partitions", "replicationFactor", "retention", "heartbeat", "timeout", "circuitBreaker"];

/**
 * The largest message text, in UTF-8 bytes: Kafka's default `max.message.bytes` (1 MiB + 12) is per
 * record batch — the record, its key (at most ~170 bytes, see `keyOf`) and the batch's headers (~70
 * bytes) — so 1 MiB less 1 KiB leaves room to spare. The topic the bus creates says 1 MiB + 12.
 */
export const KAFKA_MAX_MESSAGE_BYTES = 1024 * 1024 - 1024;
const TOPIC_MAX_MESSAGE_BYTES = 1024 * 1024 + 12;

/** Longest a fetch waits for new messages, whatever the heartbeat (proxies close connections idle for longer). */
const MAX_WAIT_MS = 10_000;
/** Bytes one fetch may bring per partition: a full batch of the largest messages. */
const PARTITION_MAX_BYTES = 4 * 1024 * 1024;
/** How long `connect` waits for a new topic to reach the metadata: tries × pause. */
const SETTLE_TRIES = 100;
const SETTLE_MS = 100;
/** A record batch whose attributes have this bit is a transaction marker, not messages. */
const CONTROL_BATCH = 0x20;

/** Kafka error codes a fetch answers with for one partition. */
const OFFSET_OUT_OF_RANGE = 1;

type AnyClient = Record<string | symbol, any>;

async function loadKafka(): Promise<AnyClient> {
  try {
    return (await import("@platformatic/kafka")) as AnyClient;
  } catch (error) {
    throw new Error(`layercache/kafka: KafkaBus needs the client library @platformatic/kafka; install it: npm install @platformatic/kafka (${error instanceof Error ? error.message : String(error)})`);
  }
}

/**
 * Invalidation bus on one Kafka topic per channel. No consumer group: each instance reads every
 * partition of the topic itself, from the end when it connects, and keeps its own offsets in
 * memory — nothing on the broker belongs to an instance, so nothing grows with restarts. The topic
 * is created by the first instance, with the settings above.
 *
 * After a lost connection (a broker restart, a network cut, a reader gone silent) the reader goes
 * on from its offsets and delivers what it missed: the cache needs no repair. When that cannot be
 * complete — its offset is below the log's start (retention deleted it), beyond its end (the
 * broker lost its log), or the topic was deleted and made again — the cache repairs its L1.
 */
export class KafkaBus implements Bus {
  readonly connection: object | undefined;
  readonly resilience: BusResilience;
  readonly limits: BusLimits = { maxMessageBytes: KAFKA_MAX_MESSAGE_BYTES };
  readonly #brokers: string[] | undefined;
  readonly #clientOptions: Record<string, unknown>;
  readonly #partitions: number;
  readonly #replicationFactor: number;
  readonly #retentionMs: number;
  readonly #heartbeatMs: number;

  constructor(options: KafkaBusOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/kafka: KafkaBus needs options: { client } or { brokers }");
    checkOptions(options, OPTIONS, "KafkaBus");
    if ((options.client === undefined) === (options.brokers === undefined)) throw optionError("client", "or `brokers` must be given (exactly one of them)");
    if (options.client !== undefined) {
      const c = options.client as AnyClient | null;
      if (c === null || typeof c !== "object" || typeof c.send !== "function" || typeof c.metadata !== "function") throw optionError("client", `must be a Producer of @platformatic/kafka (got ${preview(options.client)})`);
      if (options.clientOptions !== undefined) throw optionError("clientOptions", "is taken from `client`; give it only with `brokers`");
    } else if (!Array.isArray(options.brokers) || options.brokers.length === 0 || !options.brokers.every((b) => typeof b === "string" && /^[^\s:]+:\d+$/.test(b))) {
      throw optionError("brokers", `must be a non-empty array of "host:port" strings (got ${preview(options.brokers)})`);
    }
    if (options.clientOptions !== undefined && (options.clientOptions === null || typeof options.clientOptions !== "object" || Array.isArray(options.clientOptions))) throw optionError("clientOptions", `must be an object (got ${preview(options.clientOptions)})`);
    this.connection = options.client as object | undefined;
    this.#brokers = options.brokers;
    this.#clientOptions = { ...options.clientOptions };
    const partitions = options.partitions ?? 1;
    if (!Number.isSafeInteger(partitions) || partitions < 1) throw optionError("partitions", `must be a positive integer (got ${preview(partitions)})`);
    this.#partitions = partitions;
    const rf = options.replicationFactor ?? -1;
    if (!Number.isSafeInteger(rf) || (rf < 1 && rf !== -1) || rf > 32767) throw optionError("replicationFactor", `must be a positive integer (got ${preview(rf)})`);
    this.#replicationFactor = rf;
    this.#retentionMs = options.retention === undefined ? 3_600_000 : parseDuration("retention", options.retention, false);
    if (!(this.#retentionMs >= 1)) throw optionError("retention", "must be a positive duration");
    this.#heartbeatMs = options.heartbeat === undefined ? 2000 : parseDuration("heartbeat", options.heartbeat, false);
    if (this.#heartbeatMs <= 0) throw optionError("heartbeat", "must be a positive duration");
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    const kafka = await loadKafka();
    const clock = context?.clock ?? systemClock;
    const owned = this.connection === undefined;
    // What every client the bus opens connects with: the given producer's, or the options'.
    const base: Record<string, unknown> = owned ? { ...this.#clientOptions, bootstrapBrokers: this.#brokers } : settingsOf(kafka, this.connection as AnyClient);
    const topic = topicFor(channel);
    const producer: AnyClient = owned ? new kafka.Producer({ clientId: "layercache-bus", ...base, acks: -1, retries: 1, retryDelay: 100 }) : (this.connection as AnyClient);
    if (owned) producer.on("error", (error: unknown) => handlers.onError(error, "publish"));
    const topics = new Topics(kafka, base, topic, {
      partitions: this.#partitions,
      replicationFactor: this.#replicationFactor,
      configs: [
        { name: "cleanup.policy", value: "delete" },
        { name: "retention.ms", value: String(this.#retentionMs) },
        // Segments roll often enough for retention to delete old messages on time.
        { name: "segment.ms", value: String(Math.max(60_000, Math.min(Math.floor(this.#retentionMs / 4), 3_600_000))) },
        { name: "max.message.bytes", value: String(TOPIC_MAX_MESSAGE_BYTES) },
      ],
    });
    const reader = new TopicReader(kafka, base, topics, handlers, clock, this.#heartbeatMs, producer);
    try {
      await reader.start();
      // Connects the publishing client and learns the topic's leaders now, so that the first
      // publishes do not wait for that (under load they would pile up behind it and time out).
      await producer.metadata({ topics: [topic] });
    } catch (error) {
      await reader.stop();
      if (owned) await producer.close().catch(() => {});
      throw error;
    }
    // Messages that are not the cache's keep one publisher's order: they share its key.
    const fallbackKey = `c${randomBytes(8).toString("hex")}`;
    return {
      publish: async (message) => {
        const send = () => producer.send({ messages: [{ topic, key: Buffer.from(keyOf(message, fallbackKey)), value: Buffer.from(message) }], acks: -1 });
        try {
          await send();
        } catch (error) {
          // The topic was deleted (or the broker lost it): make it again and send once more.
          if (!unknownTopic(error)) throw error;
          await topics.ensure();
          await send();
        }
      },
      close: async () => {
        await reader.stop();
        if (owned) await producer.close().catch(() => {});
      },
    };
  }
}

/** The connection settings of a given producer, for the clients the bus opens beside it. */
function settingsOf(kafka: AnyClient, producer: AnyClient): Record<string, unknown> {
  const options = (kafka.kOptions === undefined ? undefined : producer[kafka.kOptions]) as Record<string, unknown> | undefined;
  if (options === undefined) throw new TypeError("layercache/kafka: KafkaBus `client` must be a Producer of @platformatic/kafka (its settings could not be read)");
  const keep = ["bootstrapBrokers", "connectTimeout", "tls", "ssl", "tlsServerName", "sasl", "metadataMaxAge"];
  return Object.fromEntries(keep.filter((k) => options[k] !== undefined).map((k) => [k, options[k]]));
}

/** Whether a client error (or one it wraps) carries Kafka error code `code`. */
function hasCode(error: unknown, code: number): boolean {
  const e = error as { apiCode?: number; errors?: unknown[]; cause?: unknown } | undefined;
  if (e === null || typeof e !== "object") return false;
  if (e.apiCode === code) return true;
  if (Array.isArray(e.errors) && e.errors.some((x) => hasCode(x, code))) return true;
  return e.cause !== undefined && e.cause !== e && hasCode(e.cause, code);
}

/**
 * Whether the broker does not know the topic: UNKNOWN_TOPIC_OR_PARTITION (3) or UNKNOWN_TOPIC_ID
 * (100), or the client's own error for the first in a metadata answer (which drops the code).
 */
function unknownTopic(error: unknown): boolean {
  if (hasCode(error, 3) || hasCode(error, 100)) return true;
  const e = error as { code?: unknown; message?: unknown } | null;
  return e !== null && typeof e === "object" && e.code === "PLT_KFK_USER" && typeof e.message === "string" && e.message.startsWith("Unknown topic ");
}

interface TopicSettings {
  partitions: number;
  replicationFactor: number;
  configs: { name: string; value: string }[];
}

/** The topic as the reader knows it: its id, and each partition's leader. */
interface TopicShape {
  id: string;
  partitions: { leader: number; leaderEpoch: number }[];
}

/** Creating the topic when it is missing, and reading its shape. */
class Topics {
  readonly name: string;
  readonly #kafka: AnyClient;
  readonly #base: Record<string, unknown>;
  readonly #settings: TopicSettings;

  constructor(kafka: AnyClient, base: Record<string, unknown>, name: string, settings: TopicSettings) {
    this.#kafka = kafka;
    this.#base = base;
    this.name = name;
    this.#settings = settings;
  }

  /** Creates the topic unless it exists (another instance creating it at the same moment is fine). */
  async ensure(): Promise<void> {
    const admin: AnyClient = new this.#kafka.Admin({ clientId: "layercache-bus-admin", ...this.#base, retries: 1, retryDelay: 100 });
    admin.on("error", () => {});
    try {
      const existing = (await admin.listTopics()) as string[];
      if (existing.includes(this.name)) return;
      try {
        await admin.createTopics({ topics: [this.name], partitions: this.#settings.partitions, replicas: this.#settings.replicationFactor, configs: this.#settings.configs });
      } catch (error) {
        if (!hasCode(error, 36)) throw error; // TOPIC_ALREADY_EXISTS
      }
    } finally {
      await admin.close().catch(() => {});
    }
  }

  /** The topic's id and partitions as the broker has them now; undefined when there is no such topic. */
  async shape(client: AnyClient): Promise<TopicShape | undefined> {
    let md: AnyClient;
    try {
      md = await client.metadata({ topics: [this.name], forceUpdate: true });
    } catch (error) {
      if (unknownTopic(error)) return undefined;
      throw error;
    }
    const t = md.topics.get(this.name) as { id: string; partitions: { leader: number; leaderEpoch: number }[] } | undefined;
    if (t === undefined) return undefined;
    return { id: t.id, partitions: t.partitions.map((p) => ({ leader: p.leader, leaderEpoch: p.leaderEpoch })) };
  }
}

/**
 * The reading side: a client of its own (a long fetch holds a broker connection until it answers),
 * the offsets it has read up to, the fetch loop, and what a gap means.
 */
class TopicReader {
  readonly #kafka: AnyClient;
  readonly #base: Record<string, unknown>;
  readonly #topics: Topics;
  readonly #handlers: BusHandlers;
  readonly #clock: TimerClock;
  readonly #heartbeat: Heartbeat;
  readonly #maxWaitMs: number;
  #consumer: AnyClient | undefined;
  #shape: TopicShape | undefined;
  /** The next offset to read, per partition. */
  #positions: bigint[] = [];
  /** Bumped when the consumer is replaced or the bus stops: a loop of an older one ends. */
  #generation = 0;
  #stopped = false;
  /** What the checks since the loss found: catching up was impossible, L1 must be repaired. */
  #gap = false;
  /** The heartbeat's latest probe: a fetch answered after it proves the reader hears. */
  #probe = 0;
  /** Losses and failed fetches so far: a fetch during which one happened proves nothing. */
  #drops = 0;
  /** The topic must be read again from the broker (a fetch said the leader or the topic changed). */
  #stale = false;

  constructor(kafka: AnyClient, base: Record<string, unknown>, topics: Topics, handlers: BusHandlers, clock: TimerClock, heartbeatMs: number, prober: AnyClient) {
    this.#kafka = kafka;
    this.#base = base;
    this.#topics = topics;
    this.#handlers = handlers;
    this.#clock = clock;
    this.#maxWaitMs = Math.max(1, Math.min(Math.floor(heartbeatMs / 3), MAX_WAIT_MS));
    this.#heartbeat = new Heartbeat({
      clock,
      intervalMs: heartbeatMs,
      // Nothing to send: the reader's next answer proves it hears. A metadata request on the
      // publishing client tells an unreachable broker (nobody hears) from a dead reader.
      probe: (n) => {
        this.#probe = n;
        return prober.metadata({ topics: [topics.name] });
      },
      onLost: () => {
        this.#gap = false;
        if (!this.#stopped) handlers.onDisconnect();
      },
      onRegained: () => {
        if (this.#stopped) return;
        if (this.#gap || handlers.onCaughtUp === undefined) handlers.onReconnect();
        else handlers.onCaughtUp();
      },
      onSilence: () => this.#replace(),
      onError: (error) => {
        if (!this.#stopped) handlers.onError(error, "read");
      },
    });
  }

  async start(): Promise<void> {
    await this.#topics.ensure();
    const consumer = this.#open();
    const shape = await this.#settled(consumer);
    this.#shape = shape;
    // Messages published from now on have offsets from the current ends.
    this.#positions = await this.#ends(consumer, shape.partitions.length);
    this.#heartbeat.start();
    void this.#run(this.#generation, consumer);
  }

  /**
   * The topic's shape once every partition has a leader. A topic just created (here or by another
   * instance at the same moment) reaches the brokers' metadata a little later: wait for it, on the
   * real clock (a caller is waiting; a cache's fake clock may not be driven yet), at most ~10 s.
   */
  async #settled(consumer: AnyClient): Promise<TopicShape> {
    for (let attempt = 1; ; attempt++) {
      const shape = await this.#topics.shape(consumer);
      if (shape !== undefined && shape.partitions.length > 0 && shape.partitions.every((p) => p.leader >= 0)) return shape;
      if (attempt >= SETTLE_TRIES) throw new Error(`layercache/kafka: topic ${this.#topics.name} ${shape === undefined ? "is missing" : "has partitions without a leader"} ${SETTLE_TRIES * SETTLE_MS} ms after it was created`);
      await new Promise<void>((resolve) => systemClock.setTimeout(resolve, SETTLE_MS));
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#generation++;
    this.#heartbeat.stop();
    const consumer = this.#consumer;
    this.#consumer = undefined;
    await consumer?.close(true).catch(() => {});
  }

  #open(): AnyClient {
    const consumer: AnyClient = new this.#kafka.Consumer({
      clientId: "layercache-bus-reader",
      ...this.#base,
      // Required by the client's constructor, never used: the reader joins no group and commits nothing.
      groupId: "layercache-unused",
      retries: 0,
      // A fetch answers within maxWait; one that does not within a heartbeat more is lost.
      requestTimeout: this.#maxWaitMs + Math.max(1000, this.#maxWaitMs * 3),
      // Read what was written, transactional or not: the bus never writes in transactions.
      isolationLevel: 0,
    });
    consumer.on("error", (error: unknown) => {
      if (this.#consumer === consumer && !this.#stopped) this.#handlers.onError(error, "read");
    });
    this.#consumer = consumer;
    return consumer;
  }

  /** A new reading client in place of a silent one (its pending fetch is abandoned). */
  async #replace(): Promise<void> {
    if (this.#stopped) return;
    const old = this.#consumer;
    const generation = ++this.#generation;
    const consumer = this.#open();
    this.#stale = true;
    void this.#run(generation, consumer);
    await old?.close(true).catch(() => {});
  }

  async #ends(consumer: AnyClient, count: number): Promise<bigint[]> {
    const offsets = (await consumer.listOffsets({ topics: [this.#topics.name] })) as Map<string, bigint[]>;
    const ends = offsets.get(this.#topics.name) ?? [];
    return Array.from({ length: count }, (_, i) => ends[i] ?? 0n);
  }

  /** Fetches with `consumer` until it is replaced or the bus stops. */
  #run(generation: number, consumer: AnyClient): Promise<void> {
    return readLoop(
      this.#clock,
      () => this.#generation === generation,
      () => this.#fetch(generation, consumer),
      (error) => {
        this.#dropped(error);
        this.#stale = true;
      },
    );
  }

  /** One round: the topic's shape when it may have changed, one fetch per leader, and what they prove. */
  async #fetch(generation: number, consumer: AnyClient): Promise<void> {
    const probe = this.#probe;
    const drops = this.#drops;
    if (this.#stale) await this.#refresh(consumer);
    const shape = this.#shape!;
    const byLeader = new Map<number, number[]>();
    for (const [p, { leader }] of shape.partitions.entries()) {
      if (leader < 0) throw new Error(`layercache/kafka: partition ${p} of ${this.#topics.name} has no leader`);
      byLeader.set(leader, [...(byLeader.get(leader) ?? []), p]);
    }
    const results = await Promise.allSettled(
      [...byLeader].map(async ([node, partitions]) => {
        const response = await consumer
          .fetch({
            node,
            maxWaitTime: this.#maxWaitMs,
            minBytes: 1,
            topics: [
              {
                topicId: shape.id,
                partitions: partitions.map((p) => ({ partition: p, currentLeaderEpoch: shape.partitions[p]!.leaderEpoch, fetchOffset: this.#positions[p]!, lastFetchedEpoch: -1, partitionMaxBytes: PARTITION_MAX_BYTES })),
              },
            ],
          })
          .catch((error: unknown) => {
            // A partition's error still brings the other partitions' messages.
            const partial = (error as { response?: unknown }).response;
            if (partial === undefined || partial === null) throw error;
            return partial;
          });
        if (this.#generation !== generation) return;
        await this.#take(consumer, response as FetchResponse, shape);
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    // Lost again meanwhile: the next round checks.
    if (this.#generation === generation && this.#drops === drops) this.#heartbeat.heard(probe);
  }

  /** Delivers a fetch's messages in offset order and handles each partition's error. */
  async #take(consumer: AnyClient, response: FetchResponse, shape: TopicShape): Promise<void> {
    for (const topic of response.responses) {
      if (topic.topicId !== shape.id) continue;
      for (const part of topic.partitions) {
        const p = part.partitionIndex;
        if (part.errorCode === OFFSET_OUT_OF_RANGE) {
          // Below the log's start (retention went past it) or beyond its end (the log was lost):
          // what was missed cannot be read. Go on from the end; the cache repairs.
          const ends = await this.#ends(consumer, shape.partitions.length);
          this.#positions[p] = ends[p] ?? 0n;
          this.#missed();
          continue;
        }
        if (part.errorCode !== 0) {
          this.#stale = true; // a leader moved, the topic changed: read its shape again
          throw new Error(`layercache/kafka: fetching partition ${p} of ${this.#topics.name} failed with Kafka error code ${part.errorCode}`);
        }
        this.#deliver(p, part.records ?? []);
      }
    }
  }

  #deliver(p: number, batches: RecordsBatch[]): void {
    for (const batch of batches) {
      const next = batch.firstOffset + BigInt(batch.lastOffsetDelta) + 1n;
      if ((batch.attributes & CONTROL_BATCH) === 0) {
        for (const record of batch.records) {
          const offset = batch.firstOffset + BigInt(record.offsetDelta);
          // A batch can start before the offset asked for: those records were delivered already.
          if (offset < this.#positions[p]!) continue;
          this.#positions[p] = offset + 1n;
          if (record.value === null || this.#stopped) continue;
          try {
            this.#handlers.onMessage(record.value.toString("utf8"));
          } catch (error) {
            this.#handlers.onError(error, "deliver");
          }
        }
      }
      if (next > this.#positions[p]!) this.#positions[p] = next;
    }
  }

  /**
   * Reads the topic's shape again. Another topic id means it was deleted and made again: what the
   * old one held after the reader's offsets is gone (a gap). New partitions are read from their
   * start, which holds everything sent to them (unless retention trimmed it: the fetch then says so).
   */
  async #refresh(consumer: AnyClient): Promise<void> {
    let shape = await this.#topics.shape(consumer);
    if (shape === undefined) {
      await this.#topics.ensure();
      shape = await this.#topics.shape(consumer);
      if (shape === undefined) throw new Error(`layercache/kafka: topic ${this.#topics.name} could not be created again`);
    }
    if (shape.id !== this.#shape?.id) {
      this.#positions = await this.#ends(consumer, shape.partitions.length);
      this.#shape = shape;
      this.#missed();
    } else {
      while (this.#positions.length < shape.partitions.length) this.#positions.push(0n);
      this.#shape = shape;
    }
    this.#stale = false;
  }

  /** Messages were missed for good: repair now, or when the loss under way ends. */
  #missed(): void {
    if (this.#heartbeat.deaf) this.#gap = true;
    else if (!this.#stopped) this.#handlers.onReconnect();
  }

  /** The reader's connection was lost or a fetch failed: deaf until a fetch succeeds again. */
  #dropped(error: unknown): void {
    this.#drops++;
    // One report per loss: while the broker is away, the retries fail the same way.
    if (!this.#heartbeat.deaf && !this.#stopped) this.#handlers.onError(error, "read");
    this.#heartbeat.lost();
  }
}

/** The parts of `@platformatic/kafka`'s fetch response the reader uses. */
interface FetchResponse {
  responses: { topicId: string; partitions: { partitionIndex: number; errorCode: number; records?: RecordsBatch[] }[] }[];
}

interface RecordsBatch {
  firstOffset: bigint;
  lastOffsetDelta: number;
  attributes: number;
  records: { offsetDelta: number; value: Buffer | null }[];
}
