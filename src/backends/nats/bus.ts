import { createHash } from "node:crypto";
import {
  checkOptions,
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

/** The stream a JetStream bus keeps, shared by every instance on the same prefix. */
export interface NatsJetStreamOptions {
  /**
   * Most messages the stream keeps (`max_msgs`; the oldest are discarded). An instance away for
   * longer than it takes its peers to publish this many cannot catch up and repairs its L1
   * instead. Default 10 000; a positive integer.
   */
  maxMessages?: number;
  /** How long the stream keeps a message (`max_age`). Default `"1h"`; positive. */
  maxAge?: Duration;
  /** `"file"` (default: the stream survives a server restart, so instances catch up across it) or `"memory"`. */
  storage?: "file" | "memory";
  /** Replicas of the stream in a JetStream cluster (`num_replicas`). Default 1. */
  replicas?: number;
}

export interface NatsBusOptions {
  /**
   * A `NatsConnection` (from `@nats-io/transport-node`'s `connect`) that you created and keep
   * ownership of (close it yourself, after the cache). Give it `maxReconnectAttempts: -1`, or the
   * bus stops hearing for good once the client gives up.
   */
  client?: unknown;
  /**
   * Alternatively, the server(s) to connect to (`"nats://host:4222"`, or several of a cluster):
   * the bus opens a connection of its own for each cache, reconnecting forever, and closes it on `close()`.
   */
  servers?: string | string[];
  /**
   * Off (default): core NATS — fastest, nothing stored; a disconnect is a gap and the cache repairs
   * its L1. `true` or stream settings: JetStream — messages go through a stream, and an instance
   * that was away reads on from the last message it applied (catch-up, no repair) while the
   * stream still holds it.
   */
  jetstream?: boolean | NatsJetStreamOptions;
  /**
   * How often the connection the bus opens from `servers` pings the server; two pings unanswered
   * make it a dead connection (dropped and reopened, a gap). Default `"5s"`. Not used with `client`.
   */
  heartbeat?: Duration;
  /** A publish taking longer (core: until the server has it; JetStream: until the stream stored it) counts as failed and is retried. Default `"1s"`. */
  timeout?: Duration;
  /** Circuit breaker on publishing: consecutive failures before it opens (default 3; `0` disables), and how long it stays open (default `"1s"`). */
  circuitBreaker?: CircuitBreakerOptions;
}

const OPTIONS = ["client", "servers", "jetstream", "heartbeat", "timeout", "circuitBreaker"];
const JETSTREAM_OPTIONS = ["maxMessages", "maxAge", "storage", "replicas"];

/** NATS's default `max_payload` (1 MiB). The cache itself never sends more than 64 KiB in one message. */
export const NATS_MAX_PAYLOAD_BYTES = 1024 * 1024;
const DEFAULT_MAX_MESSAGES = 10_000;
const DEFAULT_MAX_AGE_MS = 60 * 60 * 1000;
/** How long the server keeps the ordered consumer of an instance that is gone without closing it (crashed). */
const ORPHAN_CONSUMER_MS = 60_000;
/** Pause after a failed resync of the JetStream reader, doubling up to the second figure. */
const RETRY_MS = [100, 5_000] as const;

/** Anything with methods: the NATS modules are typed structurally, so their types are not required. */
type AnyClient = Record<string, any>;

interface StreamSettings {
  maxMessages: number;
  maxAgeMs: number;
  storage: "file" | "memory";
  replicas: number;
}

/**
 * The subject of a channel: the channel with every character outside `A-Z a-z 0-9 _ : -`
 * percent-encoded (UTF-8), so that dots, wildcards and spaces in a prefix are plain text — one
 * token, one exact subject per channel.
 */
export function subjectOf(channel: string): string {
  let out = "";
  for (const ch of channel) {
    if (/^[A-Za-z0-9_:-]$/.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, "utf8")) out += `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** The JetStream stream of a channel: a readable part of the channel and a hash of the whole (stream names allow no dots or wildcards). */
export function streamOf(channel: string): string {
  const readable = channel.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 40);
  return `${readable}-${createHash("sha256").update(channel).digest("hex").slice(0, 16)}`;
}

function isConnection(client: unknown): client is AnyClient {
  const c = client as AnyClient;
  return c !== null && typeof c === "object" && typeof c.subscribe === "function" && typeof c.publish === "function" && typeof c.status === "function" && typeof c.flush === "function";
}

function parseJetStream(value: NatsBusOptions["jetstream"]): StreamSettings | undefined {
  if (value === undefined || value === false) return undefined;
  const o = value === true ? {} : checkOptions(value, JETSTREAM_OPTIONS, "jetstream", "jetstream");
  const maxMessages = o.maxMessages ?? DEFAULT_MAX_MESSAGES;
  if (!Number.isSafeInteger(maxMessages) || maxMessages < 1) throw optionError("jetstream.maxMessages", `must be a positive integer (got ${preview(maxMessages)})`);
  const maxAgeMs = o.maxAge === undefined ? DEFAULT_MAX_AGE_MS : parseDuration("jetstream.maxAge", o.maxAge, false);
  if (!(maxAgeMs > 0)) throw optionError("jetstream.maxAge", "must be a positive duration");
  const storage = o.storage ?? "file";
  if (storage !== "file" && storage !== "memory") throw optionError("jetstream.storage", `must be "file" or "memory" (got ${preview(storage)})`);
  const replicas = o.replicas ?? 1;
  if (!Number.isSafeInteger(replicas) || replicas < 1) throw optionError("jetstream.replicas", `must be a positive integer (got ${preview(replicas)})`);
  return { maxMessages, maxAgeMs, storage, replicas };
}

/** A client module, loaded at run time (each by a literal specifier, so that bundlers see it). */
async function load(name: string, importer: () => Promise<unknown>): Promise<AnyClient> {
  try {
    return (await importer()) as AnyClient;
  } catch (error) {
    throw new Error(`layercache/nats: NatsBus needs the client library ${name}; install it: npm install ${name} (${error instanceof Error ? error.message : String(error)})`);
  }
}

/**
 * Invalidation bus on NATS, with the official client (`@nats-io/transport-node`, and
 * `@nats-io/jetstream` for JetStream). Messages go to one subject per channel (`<prefix>:bus`).
 *
 * Core NATS (default) stores nothing: a disconnect is reported as a gap and the cache repairs its
 * L1 once the client has reconnected and resubscribed. With `jetstream`, messages are published
 * into a stream with limits (one per prefix, created when missing) and read with an ordered
 * consumer from the sequence after the last one applied: after a disconnect or a server restart
 * the instance catches up on what it missed and keeps its L1; only when the stream no longer holds
 * everything after that sequence (discarded by its limits, purged, deleted, lost) does it repair.
 * Nothing on the server belongs to an instance beyond an ordered consumer, which is ephemeral.
 */
export class NatsBus implements Bus {
  readonly connection: object | undefined;
  readonly resilience: BusResilience;
  readonly limits: BusLimits = { maxMessageBytes: NATS_MAX_PAYLOAD_BYTES };
  readonly #client: AnyClient | undefined;
  readonly #servers: string[] | undefined;
  readonly #pingMs: number;
  readonly #stream: StreamSettings | undefined;

  constructor(options: NatsBusOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/nats: NatsBus needs options: { client } or { servers }");
    checkOptions(options, OPTIONS, "NatsBus");
    if ((options.client === undefined) === (options.servers === undefined)) throw optionError("client", "or `servers` must be given (exactly one of them)");
    if (options.client !== undefined && !isConnection(options.client)) throw optionError("client", `must be a NatsConnection of @nats-io/transport-node (got ${preview(options.client)})`);
    if (options.servers !== undefined) {
      const list = typeof options.servers === "string" ? [options.servers] : options.servers;
      if (!Array.isArray(list) || list.length === 0 || !list.every((s) => typeof s === "string" && s.trim() !== "")) throw optionError("servers", `must be a server URL or a non-empty array of them (got ${preview(options.servers)})`);
      this.#servers = [...list];
    }
    this.#client = options.client as AnyClient | undefined;
    this.connection = this.#client;
    this.#pingMs = options.heartbeat === undefined ? 5000 : parseDuration("heartbeat", options.heartbeat, false);
    if (!(this.#pingMs > 0)) throw optionError("heartbeat", "must be a positive duration");
    this.#stream = parseJetStream(options.jetstream);
    this.resilience = parseResilience(options.timeout, options.circuitBreaker, 1000);
  }

  async connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    const owned = this.#client === undefined;
    const nc = owned ? await this.#open() : this.#client!;
    const clock = context?.clock ?? systemClock;
    const subject = subjectOf(channel);
    let listener: Listener | undefined;
    try {
      listener = this.#stream === undefined ? await listenCore(nc, subject, handlers) : await JetStreamReader.start(nc, subject, streamOf(channel), this.#stream, handlers, clock);
    } catch (error) {
      if (owned) await nc.close().catch(() => {});
      throw error;
    }
    const l = listener;
    return {
      publish: (message) => l.publish(message),
      close: async () => {
        await l.stop();
        if (owned) await nc.close().catch(() => {});
      },
    };
  }

  async #open(): Promise<AnyClient> {
    const lib = await load("@nats-io/transport-node", () => import("@nats-io/transport-node"));
    return (await lib.connect({
      servers: this.#servers,
      name: "layercache bus",
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: this.#pingMs,
      maxPingOut: 2,
    })) as AnyClient;
  }
}

interface Listener {
  publish(message: string): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Follows the connection's status: `disconnect` makes the bus deaf, `reconnect` runs `onBack`
 * (after the client has resent its subscriptions). Stops when `stop` is called.
 */
function watchStatus(nc: AnyClient, handlers: BusHandlers, on: { down(): void; back(): void }): () => void {
  const statuses = nc.status() as AsyncIterable<{ type: string; error?: unknown; data?: unknown }> & { stop?: () => void };
  let stopped = false;
  void (async () => {
    try {
      for await (const s of statuses) {
        if (stopped) break;
        if (s.type === "disconnect") on.down();
        else if (s.type === "reconnect") on.back();
        else if (s.type === "error" || s.type === "close") handlers.onError(s.error ?? new Error(`NATS connection ${s.type}`), "connection");
      }
    } catch (error) {
      if (!stopped) handlers.onError(error, "connection");
    }
  })();
  return () => {
    stopped = true;
    statuses.stop?.();
  };
}

/** Core NATS: a plain subscription; any disconnect is a gap. */
async function listenCore(nc: AnyClient, subject: string, handlers: BusHandlers): Promise<Listener> {
  let stopped = false;
  let deaf = false;
  const sub = nc.subscribe(subject, {
    callback: (error: unknown, msg: AnyClient) => {
      if (stopped) return;
      if (error) {
        handlers.onError(error, "subscribe");
        return;
      }
      try {
        handlers.onMessage(msg.string());
      } catch (e) {
        handlers.onError(e, "deliver");
      }
    },
  }) as AnyClient;
  const down = (): void => {
    if (stopped || deaf) return;
    deaf = true;
    handlers.onDisconnect();
  };
  const stopWatching = watchStatus(nc, handlers, {
    down,
    back: () => {
      // The client resent its subscriptions on reconnecting: a round trip proves the server has them.
      nc.flush().then(
        () => {
          if (stopped || !deaf) return;
          deaf = false;
          handlers.onReconnect();
        },
        (error: unknown) => !stopped && handlers.onError(error, "resubscribe"),
      );
    },
  });
  try {
    // The server has the subscription once it answers a ping sent after it.
    await nc.flush();
  } catch (error) {
    stopWatching();
    sub.unsubscribe();
    throw error;
  }
  return {
    // Resolves once the server has the message (its answer to a ping sent after it).
    publish: async (message) => {
      nc.publish(subject, message);
      await nc.flush();
    },
    stop: async () => {
      stopped = true;
      stopWatching();
      try {
        sub.unsubscribe();
      } catch {
        // the connection is closed already
      }
    },
  };
}

/**
 * JetStream: the stream, the position (the last stream sequence applied), an ordered consumer
 * reading from the next one, and what a gap means. The stream holds this channel's subject only,
 * so its sequences have no holes of their own: a message whose sequence is not the next one means
 * the ones between were discarded before they were read.
 */
class JetStreamReader implements Listener {
  readonly #nc: AnyClient;
  readonly #js: AnyClient;
  readonly #jsm: AnyClient;
  readonly #subject: string;
  readonly #name: string;
  readonly #settings: StreamSettings;
  readonly #handlers: BusHandlers;
  readonly #clock: TimerClock;
  /** The last stream sequence delivered (0: none yet). */
  #applied = 0;
  /** When the stream read was created: a stream deleted and created again starts its sequences over. */
  #created = "";
  /** The consumer in use and its messages (replaced on every resync). */
  #consumer: AnyClient | undefined;
  #messages: AnyClient | undefined;
  /** Bumped for each consumer started: deliveries of an older one are ignored. */
  #session = 0;
  #stopped = false;
  /** Deaf since a disconnect (or a gap seen live) until caught up or repaired. */
  #deaf = false;
  /** While deaf: catching up proved impossible. */
  #gap = false;
  /** While deaf: the stream's last sequence when the reader came back; reaching it is catching up. */
  #target: number | undefined;
  #stopWatching: () => void = () => {};
  /** The connection is up (as its last status said). */
  #connected = true;
  #retryTimer: unknown;
  #retryDelay = 0;
  #syncing: Promise<void> | undefined;
  #again = false;

  private constructor(nc: AnyClient, js: AnyClient, jsm: AnyClient, subject: string, name: string, settings: StreamSettings, handlers: BusHandlers, clock: TimerClock) {
    this.#nc = nc;
    this.#js = js;
    this.#jsm = jsm;
    this.#subject = subject;
    this.#name = name;
    this.#settings = settings;
    this.#handlers = handlers;
    this.#clock = clock;
  }

  static async start(nc: AnyClient, subject: string, name: string, settings: StreamSettings, handlers: BusHandlers, clock: TimerClock): Promise<JetStreamReader> {
    const lib = await load("@nats-io/jetstream", () => import("@nats-io/jetstream"));
    const js = lib.jetstream(nc);
    const jsm = await lib.jetstreamManager(nc);
    const reader = new JetStreamReader(nc, js, jsm, subject, name, settings, handlers, clock);
    // Messages published from now on have sequences after the stream's last one.
    const state = await reader.#ensureStream();
    reader.#applied = state.last_seq;
    reader.#created = state.created;
    await reader.#consume();
    reader.#stopWatching = watchStatus(nc, handlers, {
      down: () => {
        reader.#connected = false;
        reader.#lost();
      },
      back: () => {
        reader.#connected = true;
        reader.#resync();
      },
    });
    return reader;
  }

  async publish(message: string): Promise<void> {
    try {
      await this.#js.publish(this.#subject, message);
    } catch (error) {
      // No stream takes the subject (deleted meanwhile): create it again, then publish once more.
      if (!isNoStream(error)) throw error;
      await this.#ensureStream();
      await this.#js.publish(this.#subject, message);
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stopWatching();
    if (this.#retryTimer !== undefined) this.#clock.clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    await this.#syncing?.catch(() => {});
    await this.#closeConsumer();
  }

  /** The stream's state and creation time, creating the stream when it does not exist. */
  async #ensureStream(): Promise<StreamState> {
    try {
      return stateOf(await this.#jsm.streams.info(this.#name));
    } catch (error) {
      if (!isNoStream(error)) throw error;
    }
    const s = this.#settings;
    const maxAgeNs = s.maxAgeMs * 1e6;
    try {
      await this.#jsm.streams.add({
        name: this.#name,
        subjects: [this.#subject],
        retention: "limits",
        discard: "old",
        max_msgs: s.maxMessages,
        max_age: maxAgeNs,
        storage: s.storage,
        num_replicas: s.replicas,
        // The window in which the server drops a republished duplicate; at most the age limit.
        duplicate_window: Math.min(maxAgeNs, 120e9),
      });
    } catch (error) {
      // Another instance created it at the same moment: use it as it is.
      if (!/already in use|exists/i.test(error instanceof Error ? error.message : String(error))) throw error;
    }
    return stateOf(await this.#jsm.streams.info(this.#name));
  }

  /** Starts an ordered consumer from the sequence after the last one applied. */
  async #consume(): Promise<void> {
    await this.#closeConsumer();
    const session = ++this.#session;
    const consumer = await this.#js.consumers.get(this.#name, { deliver_policy: "by_start_sequence", opt_start_seq: this.#applied + 1 });
    const messages = (await consumer.consume({ callback: (m: AnyClient) => this.#deliver(session, m) })) as AnyClient;
    if (session !== this.#session || this.#stopped) {
      await messages.close().catch(() => {});
      return;
    }
    this.#consumer = consumer;
    this.#messages = messages;
    void this.#shortenOrphanLife((await consumer.info(true).catch(() => undefined))?.name);
    void (async () => {
      try {
        for await (const n of messages.status() as AsyncIterable<{ type: string; name?: string }>) {
          if (session !== this.#session || this.#stopped) break;
          // The stream is gone: it is created again, and what it held is lost.
          if (n.type === "stream_not_found") this.#resync();
          else if (n.type === "ordered_consumer_recreated") void this.#shortenOrphanLife(n.name);
        }
      } catch {
        // the consumer was closed
      }
    })();
  }

  /**
   * The client creates its ordered consumers to be removed after 5 minutes without a pull: what a
   * crashed instance leaves. This one is made to go after ORPHAN_CONSUMER_MS instead (a live
   * consumer always has a pull pending, so it never comes near it). Best effort: a failure only
   * leaves the client's setting.
   */
  async #shortenOrphanLife(name: string | undefined): Promise<void> {
    if (name === undefined || this.#stopped) return;
    await this.#jsm.consumers.update(this.#name, name, { inactive_threshold: ORPHAN_CONSUMER_MS * 1e6 }).catch(() => {});
  }

  /**
   * Stops the consumer in use and deletes it on the server — unless the server is away (the
   * request would only time out; the server removes the consumer by itself, see above).
   */
  async #closeConsumer(): Promise<void> {
    const [consumer, messages] = [this.#consumer, this.#messages];
    this.#consumer = this.#messages = undefined;
    await messages?.close().catch(() => {});
    if (!this.#connected) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([consumer?.delete().catch(() => {}), new Promise<void>((resolve) => (timer = setTimeout(resolve, 1_000)))]);
    clearTimeout(timer);
  }

  #deliver(session: number, m: AnyClient): void {
    if (session !== this.#session || this.#stopped) return;
    const seq = m.seq as number;
    if (seq <= this.#applied) return; // delivered already (a consumer restarted on the same position)
    const skipped = seq > this.#applied + 1;
    this.#applied = seq;
    if (skipped) this.#gapFound();
    try {
      this.#handlers.onMessage(m.string());
    } catch (error) {
      this.#handlers.onError(error, "deliver");
    }
    this.#checkCaughtUp();
  }

  /** The connection was lost: deaf until caught up (or repaired). */
  #lost(): void {
    if (this.#stopped || this.#deaf) return;
    this.#deaf = true;
    this.#gap = false;
    this.#target = undefined;
    this.#handlers.onDisconnect();
  }

  /** Messages between the position and what was read are gone: the cache must repair now. */
  #gapFound(): void {
    if (!this.#deaf) this.#handlers.onDisconnect();
    this.#deaf = true;
    this.#gap = true;
    this.#target = undefined;
    this.#regained();
  }

  #checkCaughtUp(): void {
    if (this.#deaf && this.#target !== undefined && this.#applied >= this.#target) this.#regained();
  }

  #regained(): void {
    if (!this.#deaf || this.#stopped) return;
    const gap = this.#gap;
    this.#deaf = false;
    this.#gap = false;
    this.#target = undefined;
    if (gap || this.#handlers.onCaughtUp === undefined) this.#handlers.onReconnect();
    else this.#handlers.onCaughtUp();
  }

  /**
   * After a reconnect (or when the stream went away): compares the position with the stream as it
   * is now, and starts a new consumer from it. Retried with backoff until it succeeds.
   */
  #resync(): void {
    if (this.#stopped) return;
    if (this.#syncing !== undefined) {
      this.#again = true;
      return;
    }
    this.#syncing = this.#sync().then(
      () => {
        this.#syncing = undefined;
        this.#retryDelay = 0;
        if (this.#again) {
          this.#again = false;
          this.#resync();
        }
      },
      (error: unknown) => {
        this.#syncing = undefined;
        this.#again = false;
        if (this.#stopped) return;
        if (this.#retryDelay === 0) this.#handlers.onError(error, "resubscribe");
        this.#retryDelay = Math.min(Math.max(this.#retryDelay * 2, RETRY_MS[0]), RETRY_MS[1]);
        this.#retryTimer = this.#clock.setTimeout(
          () => {
            this.#retryTimer = undefined;
            this.#resync();
          },
          this.#retryDelay,
          true,
        );
      },
    );
  }

  async #sync(): Promise<void> {
    const state = await this.#ensureStream();
    if (this.#stopped) return;
    // Intact when nothing after the position was removed: it is the same stream (not deleted and
    // created again, which starts the sequences over), it did not go backwards (lost in a restart),
    // and its oldest message is at most the next one after the position.
    const intact = state.created === this.#created && state.last_seq >= this.#applied && state.first_seq <= this.#applied + 1;
    this.#created = state.created;
    if (!intact) {
      if (!this.#deaf) this.#handlers.onDisconnect();
      this.#deaf = true;
      this.#gap = true;
      // Read on from the stream as it is now; the cache repairs what it may have missed.
      this.#applied = state.last_seq;
    }
    await this.#consume();
    if (!this.#deaf) return;
    this.#target = state.last_seq;
    this.#checkCaughtUp();
  }
}

interface StreamState {
  first_seq: number;
  last_seq: number;
  created: string;
}

function stateOf(info: AnyClient): StreamState {
  return { first_seq: info.state.first_seq, last_seq: info.state.last_seq, created: String(info.created) };
}

/**
 * The error of a stream that does not exist, or of a publish no stream answers (the client names
 * that one "JetStream is not enabled": nothing answered on the subject).
 */
function isNoStream(error: unknown): boolean {
  const e = error as { code?: unknown; name?: unknown; message?: unknown } | null;
  if (e === null || typeof e !== "object") return false;
  return e.code === 10059 || e.code === "503" || e.code === 503 || /stream not found|no responders/i.test(String(e.message ?? "")) || /jetstream is not enabled/i.test(String(e.message ?? "")) || ["StreamNotFoundError", "NoRespondersError", "JetStreamNotEnabled"].includes(String(e.name));
}
