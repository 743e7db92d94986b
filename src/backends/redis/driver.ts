import { createHash } from "node:crypto";
import { RecordError, checkUrl } from "../../backend.js";

/**
 * One narrow interface over the Redis client libraries layercache supports — ioredis (standalone
 * and Cluster) and node-redis (standalone and cluster) — so that `RedisStore`, `RedisBus` and
 * `RedisStreamsBus` are written once. Only single-key commands are used, so nothing here can raise
 * CROSSSLOT (MGET only on a standalone server). Commands are written to the connection synchronously, in call order,
 * whenever it takes commands: an L2 write followed by a PUBLISH on the same client reach Redis in
 * that order.
 */
export interface RedisDriver {
  readonly kind: "ioredis" | "ioredis-cluster" | "node-redis" | "node-redis-cluster";
  /** Connects a client that is not connected yet (node-redis needs it; ioredis connects by itself). */
  open(): Promise<void>;
  /** GET; rejects with a `RecordError` when the key holds another type (a hash, a list ...). */
  get(key: string): Promise<string | null>;
  /**
   * Several keys: one MGET on a standalone server, one GET each on a cluster (no CROSSSLOT). MGET
   * reads a key of another type as null; a GET of one gives a `RecordError` in its place.
   */
  getMany(keys: string[]): Promise<(string | null | RecordError)[]>;
  /** SET, with PX when `px` is given. */
  set(key: string, value: string, px: number | undefined): Promise<void>;
  /** Runs a Lua script by SHA, loading it on NOSCRIPT. */
  eval(script: LuaScript, keys: string[], args: string[]): Promise<unknown>;
  publish(channel: string, message: string): Promise<void>;
  /** A new connection of the same kind, for a subscriber. */
  duplicate(): RedisDriver;
  subscribe(channels: string[], onMessage: (channel: string, message: string) => void): Promise<void>;
  /** PING: the server answers (a heartbeat's probe). */
  ping(): Promise<void>;
  /** XADD `key` MAXLEN ~ `maxLen` * m `message`: the new entry's id. */
  xadd(key: string, maxLen: number, message: string): Promise<string>;
  /**
   * XREAD COUNT `count` BLOCK `blockMs` STREAMS `key` `after`: up to `count` entries with ids after
   * `after`, waiting up to `blockMs` (at least 1) for one to come. Blocks the connection: use a
   * connection of its own (`duplicate()`). Entries without a field `m` read as `undefined`.
   */
  xread(key: string, after: string, count: number, blockMs: number): Promise<StreamEntry[]>;
  /**
   * Connection state changes: `down` when the connection is lost, `up` when it is usable again.
   * `everyNode`: on a cluster client, also the loss of one node's connection (ioredis resends a
   * command that was in flight on it once the node is back, with nothing else to tell).
   */
  onState(listener: (state: "up" | "down", error?: unknown) => void, everyNode?: boolean): void;
  /**
   * Closes the connection: QUIT, or a hard disconnect when the server does not answer in time.
   * `now`: a hard disconnect at once (a connection blocked in XREAD would answer QUIT only after it).
   */
  quit(now?: boolean): Promise<void>;
}

/**
 * Longest string Redis takes as one argument — a key, a value, a message — by default
 * (`proto-max-bulk-len`, 512 MB). What `RedisStore` and `RedisBus` declare as their limits.
 */
export const REDIS_MAX_BULK_BYTES = 512 * 1024 * 1024;

/** One entry of a stream: its id and its message (field `m`). */
export type StreamEntry = [id: string, message: string | undefined];

/** Longest a QUIT may wait before the connection is simply dropped (a hung server never answers). */
const QUIT_TIMEOUT_MS = 1_000;


export interface LuaScript {
  readonly source: string;
  readonly sha: string;
}

export function luaScript(source: string): LuaScript {
  return { source, sha: createHash("sha1").update(source).digest("hex") };
}

/** Anything with methods: the client objects are typed structurally so neither library's types are required. */
type AnyClient = Record<string, any>;

const isNoScript = (error: unknown): boolean => error instanceof Error && /NOSCRIPT/i.test(error.message);
const noop = (): void => {};
const asText = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

/**
 * A command on a key that holds another type fails with a WRONGTYPE error reply (ioredis: a
 * `ReplyError`, node-redis: an `ErrorReply`, both with the server's text): a problem of that key
 * alone, reported as a `RecordError` — the server answered, so it is no sign of a failing backend.
 */
function recordErrorOf(key: string, error: unknown): unknown {
  return error instanceof Error && /^WRONGTYPE\b/.test(error.message) ? new RecordError(`layercache/redis: key ${JSON.stringify(key)} is not a layercache record: ${error.message}`, { key, cause: error }) : error;
}

/** The entries of an XREAD reply on one key (RESP2 arrays; a RESP3 map too). */
function streamEntries(reply: unknown): StreamEntry[] {
  if (reply === null || reply === undefined) return [];
  const streams: unknown[] = Array.isArray(reply) ? reply : reply instanceof Map ? [...reply] : Object.entries(reply as object);
  const entries = (streams[0] as [unknown, unknown[]] | undefined)?.[1] ?? [];
  return entries.map((e) => {
    const [id, fields] = e as [unknown, unknown[] | null];
    let message: string | undefined;
    for (let i = 0; fields && i + 1 < fields.length; i += 2) if (String(fields[i]) === "m") message = String(fields[i + 1]);
    return [String(id), message];
  });
}

const xaddArgs = (key: string, maxLen: number, message: string): string[] => [key, "MAXLEN", "~", String(maxLen), "*", "m", message];
const xreadArgs = (key: string, after: string, count: number, blockMs: number): string[] => ["COUNT", String(count), "BLOCK", String(Math.max(1, Math.floor(blockMs))), "STREAMS", key, after];

/** GET whose WRONGTYPE error becomes a `RecordError` (a rejection). */
function getOne(key: string, get: (key: string) => Promise<unknown>): Promise<string | null> {
  return get(key).then(asText, (error: unknown) => Promise.reject(recordErrorOf(key, error)));
}

/** GET of a key of a batch: its `RecordError` is placed in the result, so the other keys are still read. */
function getInBatch(key: string, get: (key: string) => Promise<unknown>): Promise<string | null | RecordError> {
  return getOne(key, get).catch((error: unknown) => (error instanceof RecordError ? error : Promise.reject(error)));
}

/** Recognizes the client a user passed in. */
export function driverFor(client: unknown): RedisDriver {
  const c = client as AnyClient;
  if (c !== null && typeof c === "object") {
    if (typeof c.defineCommand === "function" && "isCluster" in c) return new IoredisDriver(c);
    if (typeof c.sendCommand === "function" && "masters" in c) return new NodeRedisDriver(c, true);
    if (typeof c.sendCommand === "function" && "isOpen" in c) return new NodeRedisDriver(c, false);
  }
  throw new TypeError("layercache/redis: `client` must be an ioredis Redis or Cluster, or a node-redis client or cluster");
}

/** Throws the TypeError for an option `url` that is not a redis:// or rediss:// URL. */
export function checkRedisUrl(url: unknown): asserts url is string {
  checkUrl(url, ["redis", "rediss"]);
}

/** Creates a client for `{ url }`: ioredis when installed, else node-redis. */
export async function driverForUrl(url: string): Promise<RedisDriver> {
  checkRedisUrl(url);
  let ioredis: AnyClient | undefined;
  let why = "";
  try {
    ioredis = (await import("ioredis")) as AnyClient;
  } catch (error) {
    why = error instanceof Error ? error.message : String(error); // not installed: try node-redis
  }
  if (ioredis) {
    const Redis = ioredis.Redis ?? ioredis.default;
    // The cache has its own timeouts and breaker: while the server is away, commands fail at once
    // instead of waiting in a queue (and arriving late).
    return new IoredisDriver(new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true }), true);
  }
  let nodeRedis: AnyClient;
  try {
    nodeRedis = (await import("redis")) as AnyClient;
  } catch (error) {
    const detail = `${why}; ${error instanceof Error ? error.message : String(error)}`;
    throw new Error(`layercache/redis: \`{ url }\` needs a Redis client library; install one: npm install ioredis (or: npm install redis) (${detail})`);
  }
  const client = nodeRedis.createClient({ url, disableOfflineQueue: true });
  return new NodeRedisDriver(client, false, true);
}

/**
 * The master a cluster client publishes through: the first by `name`, the same for every publish
 * and every publisher while the cluster's masters stay the same. PUBLISH names no key, so both
 * client libraries would send each one to a random node, and two messages published one after the
 * other through two nodes can reach a subscriber in the other order, each node forwarding on its
 * own; through one node they keep their order. The cluster still delivers each to every node.
 */
function publisherOf<T>(masters: T[] | undefined, name: (node: T) => string): T | undefined {
  let pick: T | undefined;
  for (const node of masters ?? []) if (pick === undefined || name(node) < name(pick)) pick = node;
  return pick;
}

class IoredisDriver implements RedisDriver {
  readonly kind: "ioredis" | "ioredis-cluster";
  readonly #c: AnyClient;
  #readyWait: Promise<void> | undefined;

  constructor(client: AnyClient, owned = false) {
    this.#c = client;
    this.kind = client.isCluster ? "ioredis-cluster" : "ioredis";
    // A connection we created must have an error listener (the state listener reports errors).
    if (owned) client.on("error", () => {});
  }

  async open(): Promise<void> {
    await this.#ready();
  }

  /**
   * Undefined when the client takes commands now; else a promise of the moment it will (shared by
   * every command waiting). A client without an offline queue would fail them at once instead; the
   * cache's own timeout bounds this wait.
   */
  #ready(): Promise<void> | undefined {
    const status = this.#c.status;
    if (status === "ready") return undefined;
    if (status === "wait") return this.#c.connect();
    // Known to be down: fail now (the breaker takes it from there) rather than wait for a retry.
    if (status !== "connecting" && status !== "connect") return Promise.reject(new Error(`Redis connection is ${status}`));
    return (this.#readyWait ??= new Promise<void>((resolve, reject) => {
      const done = (error?: Error): void => {
        this.#c.off("ready", onReady);
        this.#c.off("error", onDown);
        this.#c.off("close", onDown);
        this.#readyWait = undefined;
        if (error) reject(error);
        else resolve();
      };
      const onReady = (): void => done();
      const onDown = (error?: unknown): void => done(error instanceof Error ? error : new Error("Redis connection closed"));
      this.#c.on("ready", onReady);
      this.#c.on("error", onDown);
      this.#c.on("close", onDown);
    }));
  }

  /** Issues a command now when the connection takes commands (so calls are written in call order), else once it does. */
  #whenReady<T>(issue: () => Promise<T>): Promise<T> {
    const wait = this.#ready();
    return wait ? wait.then(issue) : issue();
  }

  get(key: string): Promise<string | null> {
    return this.#whenReady(() => getOne(key, (k) => this.#c.get(k) as Promise<string | null>));
  }

  getMany(keys: string[]): Promise<(string | null | RecordError)[]> {
    return this.#whenReady(() =>
      this.kind === "ioredis-cluster" ? Promise.all(keys.map((key) => getInBatch(key, (k) => this.#c.get(k)))) : this.#c.mget(keys),
    );
  }

  set(key: string, value: string, px: number | undefined): Promise<void> {
    return this.#whenReady(() => (px === undefined ? this.#c.set(key, value) : this.#c.set(key, value, "PX", px))).then(noop);
  }

  eval(script: LuaScript, keys: string[], args: string[]): Promise<unknown> {
    return this.#whenReady(() =>
      (this.#c.evalsha(script.sha, keys.length, ...keys, ...args) as Promise<unknown>).catch((error: unknown) => {
        if (!isNoScript(error)) throw error;
        return this.#c.eval(script.source, keys.length, ...keys, ...args);
      }),
    );
  }

  /** On a cluster, through one master (see `publisherOf`). */
  publish(channel: string, message: string): Promise<void> {
    return this.#whenReady(() => this.#publisher().publish(channel, message)).then(noop);
  }

  #publisher(): AnyClient {
    if (this.kind !== "ioredis-cluster") return this.#c;
    return publisherOf(this.#c.nodes("master") as AnyClient[], (node) => `${node.options?.host}:${node.options?.port}`) ?? this.#c;
  }

  duplicate(): RedisDriver {
    return new IoredisDriver(this.#c.duplicate(), true);
  }

  async subscribe(channels: string[], onMessage: (channel: string, message: string) => void): Promise<void> {
    await this.open();
    this.#c.on("message", (channel: string, message: string) => onMessage(channel, message));
    await this.#c.subscribe(...channels);
  }

  ping(): Promise<void> {
    return this.#whenReady(() => this.#c.ping()).then(noop);
  }

  xadd(key: string, maxLen: number, message: string): Promise<string> {
    return this.#whenReady(() => this.#c.xadd(...xaddArgs(key, maxLen, message)) as Promise<unknown>).then(String);
  }

  xread(key: string, after: string, count: number, blockMs: number): Promise<StreamEntry[]> {
    return this.#whenReady(() => this.#c.xread(...xreadArgs(key, after, count, blockMs)) as Promise<unknown>).then(streamEntries);
  }

  onState(listener: (state: "up" | "down", error?: unknown) => void, everyNode = false): void {
    if (everyNode && this.kind === "ioredis-cluster") watchState(this.#c, ["close", "end", "-node"], listener, ["ready", "+node"]);
    else watchState(this.#c, ["close", "end"], listener);
  }

  async quit(now = false): Promise<void> {
    const hard = (): void => this.#c.disconnect(false);
    if (now) return hard();
    await quitWithin(() => this.#c.quit(), hard);
  }
}

class NodeRedisDriver implements RedisDriver {
  readonly kind: "node-redis" | "node-redis-cluster";
  readonly #c: AnyClient;
  readonly #cluster: boolean;
  #readyWait: Promise<void> | undefined;

  constructor(client: AnyClient, cluster: boolean, owned = false) {
    this.#c = client;
    this.#cluster = cluster;
    this.kind = cluster ? "node-redis-cluster" : "node-redis";
    // node-redis throws an "error" event without a listener, which would end the process.
    if (owned) client.on("error", () => {});
  }

  async open(): Promise<void> {
    if (!this.#c.isOpen) await this.#c.connect();
  }

  /** Waits for a standalone client that is (re)connecting; the cache's own timeout bounds the wait. */
  #ready(): Promise<void> | undefined {
    if (this.#cluster || this.#c.isReady !== false) return undefined;
    if (!this.#c.isOpen) return this.open();
    return (this.#readyWait ??= new Promise<void>((resolve) => {
      this.#c.once("ready", () => {
        this.#readyWait = undefined;
        resolve();
      });
    }));
  }

  /** Issues a command now when the connection takes commands (so calls are written in call order), else once it does. */
  #send(key: string | undefined, readonly: boolean, args: string[]): Promise<unknown> {
    const issue = (): Promise<unknown> => (this.#cluster ? this.#c.sendCommand(key, readonly, args) : this.#c.sendCommand(args));
    const wait = this.#ready();
    return wait ? wait.then(issue) : issue();
  }

  get(key: string): Promise<string | null> {
    return getOne(key, (k) => this.#send(k, true, ["GET", k]));
  }

  getMany(keys: string[]): Promise<(string | null | RecordError)[]> {
    if (this.#cluster) return Promise.all(keys.map((key) => getInBatch(key, (k) => this.#send(k, true, ["GET", k]))));
    return this.#send(keys[0], true, ["MGET", ...keys]).then((values) => (values as unknown[]).map(asText));
  }

  set(key: string, value: string, px: number | undefined): Promise<void> {
    return this.#send(key, false, px === undefined ? ["SET", key, value] : ["SET", key, value, "PX", String(px)]).then(noop);
  }

  eval(script: LuaScript, keys: string[], args: string[]): Promise<unknown> {
    const rest = [String(keys.length), ...keys, ...args];
    return this.#send(keys[0], false, ["EVALSHA", script.sha, ...rest]).catch((error: unknown) => {
      if (!isNoScript(error)) throw error;
      return this.#send(keys[0], false, ["EVAL", script.source, ...rest]);
    });
  }

  /** On a cluster, through one master (see `publisherOf`). */
  publish(channel: string, message: string): Promise<void> {
    if (this.#cluster) {
      const master = publisherOf(this.#c.masters as AnyClient[] | undefined, (node) => `${node.host}:${node.port}`);
      if (master !== undefined) return Promise.resolve(this.#c.nodeClient(master)).then((client: AnyClient) => client.publish(channel, message)).then(noop);
    }
    const wait = this.#ready();
    const issue = (): Promise<void> => this.#c.publish(channel, message).then(noop);
    return wait ? wait.then(issue) : issue();
  }

  duplicate(): RedisDriver {
    return new NodeRedisDriver(this.#c.duplicate(), this.#cluster, true);
  }

  async subscribe(channels: string[], onMessage: (channel: string, message: string) => void): Promise<void> {
    await this.open();
    for (const channel of channels) await this.#c.subscribe(channel, (message: string) => onMessage(channel, message));
  }

  ping(): Promise<void> {
    return this.#send(undefined, true, ["PING"]).then(noop);
  }

  xadd(key: string, maxLen: number, message: string): Promise<string> {
    return this.#send(key, false, ["XADD", ...xaddArgs(key, maxLen, message)]).then(String);
  }

  xread(key: string, after: string, count: number, blockMs: number): Promise<StreamEntry[]> {
    // Not "readonly": a cluster client routes it to the key's master, as its writes.
    return this.#send(key, false, ["XREAD", ...xreadArgs(key, after, count, blockMs)]).then(streamEntries);
  }

  onState(listener: (state: "up" | "down", error?: unknown) => void): void {
    watchState(this.#c, ["reconnecting", "end"], listener);
  }

  async quit(now = false): Promise<void> {
    if (!this.#c.isOpen) return;
    const hard = (): unknown => (this.#c.destroy ? this.#c.destroy() : this.#c.disconnect?.());
    if (now) {
      try {
        hard();
      } catch {
        // already gone
      }
      return;
    }
    await quitWithin(() => (this.#c.close ? this.#c.close() : this.#c.quit()), hard);
  }
}

/** Reports "down" on the first error or `downEvents` event, and "up" on the next `upEvents` event after it. */
function watchState(client: AnyClient, downEvents: string[], listener: (state: "up" | "down", error?: unknown) => void, upEvents = ["ready"]): void {
  let down = false;
  const lost = (error?: unknown): void => {
    if (down) return;
    down = true;
    listener("down", error);
  };
  client.on("error", (error: unknown) => lost(error));
  for (const event of downEvents) client.on(event, () => lost());
  const back = (): void => {
    if (!down) return;
    down = false;
    listener("up");
  };
  for (const event of upEvents) client.on(event, back);
}

/** A polite close, or a hard one when the polite one fails or takes longer than QUIT_TIMEOUT_MS. */
async function quitWithin(polite: () => Promise<unknown>, hard: () => unknown): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), QUIT_TIMEOUT_MS)));
  try {
    const result = await Promise.race([polite().then(() => "done" as const), late]);
    if (result === "late") hard();
  } catch {
    try {
      hard();
    } catch {
      // already gone
    }
  } finally {
    clearTimeout(timer);
  }
}
