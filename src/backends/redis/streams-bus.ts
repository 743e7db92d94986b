import { Heartbeat, optionError, readLoop, type BusHandlers, type TimerClock } from "../../backend.js";
import { BASE_OPTIONS, Listening, RedisBusBase, type Listener, type RedisBusBaseOptions } from "./bus-base.js";
import { luaScript, type RedisDriver, type StreamEntry } from "./driver.js";

export interface RedisStreamsBusOptions extends RedisBusBaseOptions {
  /**
   * About how many messages the stream keeps (`XADD ... MAXLEN ~ maxLen`; Redis trims whole
   * blocks, so a few more may stay). An instance away for longer than it takes peers to publish
   * this many messages cannot catch up and repairs its L1 instead. Give every instance the same
   * value. Default 10 000; a positive integer.
   */
  maxLen?: number;
  /**
   * How often the bus checks that its reader still answers: a blocking read that returns nothing
   * comes back within a third of this, so a reader silent for a whole interval (while the server
   * answers a PING) is replaced. Default `"2s"`; must be positive.
   */
  heartbeat?: RedisBusBaseOptions["heartbeat"];
}

/** The default `maxLen`. */
const STREAM_MAX_LEN = 10_000;
/** Entries read at once (at most `maxLen`: see #read for why). */
const BATCH = 256;
/** Longest a blocking read waits, whatever the heartbeat: a reader that answers every few seconds keeps its connection busy enough for proxies that close idle ones. */
const MAX_BLOCK_MS = 10_000;

/**
 * The oldest and newest entry ids of the stream, and the entry `ARGV[1]` (its id and message, or
 * false when it is gone; "$": the newest entry): in one script, so that they describe one moment.
 * An empty table when the stream is empty or gone.
 */
const BOUNDS = luaScript(`
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local at = last
if ARGV[1] ~= '$' then at = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) end
if #at == 0 then return {first[1][1], last[1][1], false, false} end
local message = false
local fields = at[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'm' then message = fields[i + 1] end
end
return {first[1][1], last[1][1], at[1][1], message}
`);

/**
 * Invalidation bus on a Redis stream (standalone or Cluster): `XADD` with an approximate `MAXLEN`,
 * and one blocking `XREAD` from the last id seen, on a connection of its own. No consumer group:
 * nothing on the server belongs to an instance, so nothing grows with restarts — the stream is one
 * key, `<prefix>:bus`, trimmed by every publish.
 *
 * After a disconnect the reader goes on from the last id it saw and delivers what it missed: the
 * cache needs no L1 repair. When that cannot be complete — the stream was trimmed past that id, or
 * it was flushed or lost in a restart or failover (its history no longer holds that id where it
 * should) — the cache repairs its L1 as after a pub/sub gap.
 */
export class RedisStreamsBus extends RedisBusBase {
  readonly #maxLen: number;

  constructor(options: RedisStreamsBusOptions) {
    super(options, [...BASE_OPTIONS, "maxLen"], "RedisStreamsBus");
    const maxLen = options.maxLen ?? STREAM_MAX_LEN;
    if (!Number.isSafeInteger(maxLen) || maxLen < 1) throw optionError("maxLen", `must be a positive integer (got ${String(maxLen)})`);
    this.#maxLen = maxLen;
  }

  protected async listen(pub: RedisDriver, channel: string, handlers: BusHandlers, clock: TimerClock): Promise<Listener> {
    const reader = new StreamReader(pub, channel, handlers, clock, this.heartbeatMs, this.#maxLen);
    await reader.start();
    return {
      publish: (message) => pub.xadd(channel, this.#maxLen, message).then(() => {}),
      stop: () => reader.stop(),
    };
  }
}

/** The reading side: the position, the blocking read loop, and what a gap means. */
class StreamReader {
  readonly #key: string;
  readonly #handlers: BusHandlers;
  readonly #clock: TimerClock;
  readonly #heartbeat: Heartbeat;
  readonly #conn: Listening;
  readonly #count: number;
  readonly #blockMs: number;
  /** The last entry delivered (id "0-0": none yet, the stream was empty). */
  #pos: Position = NOWHERE;
  /** Where the reader was when it went deaf: catching up must cover everything after it. */
  #lostAt: Position = NOWHERE;
  /** What the checks since the loss found: catching up was impossible, L1 must be repaired. */
  #gap = false;
  /** The heartbeat's latest probe: an answer to a read started after it proves the reader hears. */
  #probe = 0;
  /** Connection losses and failed reads so far: a read during which one happened proves nothing. */
  #drops = 0;

  constructor(pub: RedisDriver, key: string, handlers: BusHandlers, clock: TimerClock, heartbeatMs: number, maxLen: number) {
    this.#key = key;
    this.#handlers = handlers;
    this.#clock = clock;
    // A batch shorter than the count proves nothing was trimmed past the position (see #read).
    this.#count = Math.min(BATCH, maxLen);
    // A healthy blocking read answers within blockMs (empty when nothing came): two fit in an interval.
    this.#blockMs = Math.max(1, Math.min(Math.floor(heartbeatMs / 3), MAX_BLOCK_MS));
    this.#heartbeat = new Heartbeat({
      clock,
      intervalMs: heartbeatMs,
      // Nothing to send: the reader's next answer proves it hears. The PING tells a hung or
      // unreachable server (nobody hears; nothing to replace) from a dead reader connection.
      probe: (n) => {
        this.#probe = n;
        return pub.ping();
      },
      onLost: () => {
        this.#lostAt = this.#pos;
        this.#gap = false;
        handlers.onDisconnect();
      },
      onRegained: () => {
        if (this.#gap || handlers.onCaughtUp === undefined) handlers.onReconnect();
        else handlers.onCaughtUp();
      },
      onSilence: () => this.#conn.replace(),
      onError: (error) => handlers.onError(error, "read"),
    });
    this.#conn = new Listening(pub, {
      // The client reconnects by itself; the next answer is followed by a check of the position.
      onDown: (error) => this.#dropped(error),
      onUp: () => {},
      onReplaced: (conn) => void this.#run(conn),
      // A read resent on a cluster node's new connection must still be followed by a check.
      everyNode: true,
      onError: (error, operation) => handlers.onError(error, operation),
    });
  }

  async start(): Promise<void> {
    const conn = await this.#conn.start();
    try {
      // Messages published from now on have ids after the newest one.
      const bounds = await this.#bounds(conn, "$");
      this.#pos = bounds?.at ?? NOWHERE;
    } catch (error) {
      await this.#conn.stop();
      throw error;
    }
    this.#heartbeat.start();
    void this.#run(conn);
  }

  async stop(): Promise<void> {
    this.#heartbeat.stop();
    await this.#conn.stop();
  }

  /** Reads on `conn` until it is replaced or the bus stops. */
  #run(conn: RedisDriver): Promise<void> {
    return readLoop(this.#clock, () => this.#conn.current(conn), () => this.#read(conn), (error) => this.#dropped(error));
  }

  /**
   * One blocking read from the position, then what it proves. After a loss: whether everything
   * since the loss was still in the stream (then the cache caught up; else it repairs). Otherwise,
   * only after a full batch: a reader that lags behind could have been overtaken by the trimming.
   * A shorter batch cannot have been — trimming keeps at least `maxLen` entries, all of them after
   * the position if it had passed it, and a read asks for at most that many.
   */
  async #read(conn: RedisDriver): Promise<void> {
    const probe = this.#probe;
    const drops = this.#drops;
    const after = this.#pos;
    const entries = await conn.xread(this.#key, after.id, this.#count, this.#blockMs);
    if (!this.#conn.current(conn)) return;
    this.#deliver(entries);
    // (Once a check of this loss found a gap, it stays found.)
    if (this.#heartbeat.deaf) this.#gap = !(await this.#intact(conn, this.#lostAt)) || this.#gap;
    else if (entries.length === this.#count && !(await this.#intact(conn, after))) this.#handlers.onReconnect();
    // Lost again meanwhile (a client may resend the read after reconnecting): the next read checks.
    if (this.#conn.current(conn) && this.#drops === drops) this.#heartbeat.heard(probe);
  }

  /** The reader's connection was lost or a read failed: deaf until a read and a check succeed. */
  #dropped(error: unknown): void {
    this.#drops++;
    // One report per loss: while Redis is away, the retries fail the same way.
    if (error !== undefined && !this.#heartbeat.deaf) this.#handlers.onError(error, "read");
    this.#heartbeat.lost();
  }

  #deliver(entries: StreamEntry[]): void {
    for (const [id, message] of entries) {
      this.#pos = { id, message };
      if (message === undefined) continue;
      try {
        this.#handlers.onMessage(message);
      } catch (error) {
        this.#handlers.onError(error, "deliver");
      }
    }
  }

  /** Whether every entry after `after` that was ever added is still in the stream (or was read). */
  async #intact(conn: RedisDriver, after: Position): Promise<boolean> {
    return intactAfter(after, await this.#bounds(conn, after.id));
  }

  async #bounds(conn: RedisDriver, at: string): Promise<StreamBounds | undefined> {
    const reply = (await conn.eval(BOUNDS, [this.#key], [at])) as unknown[];
    if (reply.length === 0) return undefined;
    const [first, last, atId, atMessage] = reply.map((v) => (v === null || v === undefined || v === false ? undefined : String(v)));
    return { first: first!, last: last!, at: atId === undefined ? undefined : { id: atId, message: atMessage } };
  }
}

/** An entry of the stream: where a reader is. */
export interface Position {
  id: string;
  message: string | undefined;
}

const NOWHERE: Position = { id: "0-0", message: undefined };

export interface StreamBounds {
  /** The oldest entry's id. */
  first: string;
  /** The newest entry's id. */
  last: string;
  /** The entry asked about, when it is still there. */
  at: Position | undefined;
}

/**
 * Whether a reader whose last entry was `after` can catch up completely from there, given the
 * stream as it is now (read after the entries were, so that what it proves held when they were
 * read: trimming only ever removes the oldest entries):
 * - the stream is gone or empty: it was flushed, deleted or lost in a restart — no;
 * - its newest id is before `after`: it went backwards (a flush, a failover to a replica that had
 *   not received it) — no;
 * - `after` itself is still there: nothing after it was trimmed — yes, if it is the same entry
 *   (a stream flushed and written again within the same millisecond can reuse an id);
 * - it is gone though older entries remain: the history was rewritten (a failover) — no;
 * - it was trimmed: yes only if the oldest entry is the very next id (nothing could lie between).
 * A reader that has seen nothing ("0-0") cannot prove anything and repairs.
 */
export function intactAfter(after: Position, bounds: StreamBounds | undefined): boolean {
  if (bounds === undefined) return false;
  if (compareIds(bounds.last, after.id) < 0) return false;
  if (bounds.at !== undefined) return bounds.at.id === after.id && bounds.at.message === after.message;
  if (compareIds(bounds.first, after.id) <= 0) return false;
  const [ms, seq] = parseId(after.id);
  return compareIds(bounds.first, `${ms}-${seq + 1n}`) === 0;
}

function parseId(id: string): [bigint, bigint] {
  const dash = id.indexOf("-");
  return dash < 0 ? [BigInt(id), 0n] : [BigInt(id.slice(0, dash)), BigInt(id.slice(dash + 1))];
}

export function compareIds(a: string, b: string): number {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1;
}
