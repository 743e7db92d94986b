import { channels, type BusContext } from "../telemetry/channels.js";
import type { TimerClock } from "../shared/clock.js";
import { LayerCacheError } from "../shared/errors.js";
import type { Reporter } from "../telemetry/reporter.js";
import { Breaker, RetryQueue, withTimeout } from "../shared/resilience.js";
import { decodeMessage, encodeMessage, type BusMessage, type BusOp } from "./codec.js";
import { BUS_LIMIT_MINIMUMS, BUS_RESILIENCE_DEFAULTS, type Bus, type BusConnection } from "./contract.js";
import { declaredLimit, overBytes } from "../shared/limits.js";

export interface PeerHandlers {
  onRemove(scope: string[], keys: string[], from: string, gen: string | undefined): void;
  onUpdate(scope: string[], keys: string[], from: string, gen: string | undefined): void;
  onClear(scope: string[], from: string): void;
  /** A peer's `removeByTag` of these tags in `scope`. */
  onTag(scope: string[], tags: string[], from: string): void;
  /** The bus lost its subscription: invalidations may be missed. */
  onDisconnect(): void;
  /** The bus hears again after being deaf (or after connecting late): what was missed must be repaired. */
  onReconnect(): void;
  /** The bus hears again and has delivered what it missed (a durable log caught up): nothing to repair. */
  onCaughtUp(): void;
}

/** Invalidations that could not be published yet, merged per scope. */
interface PendingPublish {
  /** The queue key: the scope path as JSON. */
  id: string;
  scope: string[];
  /** Keys to remove, or "clear" for the whole scope. Grows in place: queueing a key is O(1). */
  keys: Set<string> | "clear";
  /** Being republished right now. */
  sending: boolean;
}

/** Most keys kept for republishing; beyond it everything collapses into one clear of the whole cache. */
const MAX_PENDING_KEYS = 10_000;
/**
 * Most UTF-8 bytes in one message, whatever the bus allows: a peer parses and applies a message in
 * one go on its event loop, and a server may cut off a subscriber that falls behind on big ones
 * (Redis does at 32 MB of pending pub/sub output). A bus's own `limits.maxMessageBytes` can only
 * lower it.
 */
const MESSAGE_BUDGET_BYTES = 64 * 1024;
/** Most keys in one message, so that the work one message costs a peer stays small. */
const MAX_KEYS_PER_MESSAGE = 500;
/** A connect taking longer counts as failed (and is tried again). */
const CONNECT_TIMEOUT_MS = 5_000;
const CONNECT_FIRST_DELAY_MS = 500;
const CONNECT_MAX_DELAY_MS = 30_000;

/**
 * The facade every bus access goes through: codec, signing, dropping our own and bad messages,
 * (re)connecting, a circuit breaker on publishing, republishing what failed, and error handling —
 * the engine above it only sees decoded peer operations and "deaf"/"hearing" transitions.
 */
export class BusLink {
  readonly #bus: Bus;
  readonly #channel: string;
  readonly #id: string;
  readonly #secret: Uint8Array | undefined;
  readonly #peer: PeerHandlers;
  readonly #report: Reporter;
  readonly #clock: TimerClock;
  readonly #pending: RetryQueue<PendingPublish>;
  readonly #breaker: Breaker;
  readonly #publishTimeoutMs: number;
  /** Most UTF-8 bytes in one message: the bus's limit or MESSAGE_BUDGET_BYTES, the smaller. */
  readonly #maxMessageBytes: number;
  #conn: BusConnection | undefined;
  #connectTimer: unknown;
  #connectDelay = CONNECT_FIRST_DELAY_MS;
  #closed = false;
  /** Set when the cache stopped waiting for the first connection: connecting later must repair L1. */
  #late = false;
  /** Keys waiting to be republished, over all scopes (a queued clear counts as one). */
  #pendingKeys = 0;
  /** Probe publishes under way in the background (close waits for them). */
  readonly #probes = new Set<Promise<void>>();
  /** How many times the queue collapsed into one clear. */
  #collapses = 0;

  constructor(
    bus: Bus,
    o: { channel: string; id: string; secret: Uint8Array | undefined; peer: PeerHandlers; report: Reporter; clock: TimerClock },
  ) {
    this.#bus = bus;
    this.#channel = o.channel;
    this.#id = o.id;
    this.#secret = o.secret;
    this.#peer = o.peer;
    this.#report = o.report;
    this.#clock = o.clock;
    const r = { ...BUS_RESILIENCE_DEFAULTS, ...bus.resilience };
    this.#maxMessageBytes = Math.min(declaredLimit("bus", bus.limits, "maxMessageBytes", BUS_LIMIT_MINIMUMS.maxMessageBytes), MESSAGE_BUDGET_BYTES);
    this.#publishTimeoutMs = r.timeoutMs;
    this.#breaker = new Breaker(r.breakerThreshold > 0 ? r.breakerThreshold : Infinity, r.breakerCooldownMs, o.clock, (state) => {
      if (state === "closed") this.#pending.kick();
    });
    this.#pending = new RetryQueue<PendingPublish>(o.clock, {
      max: Infinity, // bounded by MAX_PENDING_KEYS in #queue
      ready: () => this.#conn !== undefined && this.#breaker.ready(),
      attempt: (_key, p) => this.#republish(p),
      onDrop: () => {},
    });
  }

  /** A publish taking longer counts as failed. */
  get timeoutMs(): number {
    return this.#publishTimeoutMs;
  }

  /** Bus messages waiting to be republished. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Connects; never rejects. When it fails, the link keeps trying in the background. */
  async connect(): Promise<void> {
    if (await this.#tryConnect()) {
      if (this.#late) this.#heard();
      return;
    }
    if (this.#closed) return;
    this.#peer.onDisconnect();
    this.#scheduleConnect();
  }

  /** The cache goes on without waiting for `connect()`: a connection made afterwards repairs L1. */
  stopWaiting(): void {
    if (this.#conn === undefined) this.#late = true;
  }

  /** `background`: a reconnect attempt nobody waits for (its timeout does not keep the process alive). */
  async #tryConnect(background = false): Promise<boolean> {
    const attempt = this.#bus.connect(
      this.#channel,
      {
        onMessage: (text) => this.#receive(text),
        onDisconnect: () => this.#peer.onDisconnect(),
        onReconnect: () => this.#heard(),
        onCaughtUp: () => this.#heard(false),
        onError: (error, operation) => this.#failed(operation, error),
      },
      { clock: this.#clock },
    );
    let conn: BusConnection;
    try {
      conn = await withTimeout(this.#clock, attempt, CONNECT_TIMEOUT_MS, () => busTimeout("connect", CONNECT_TIMEOUT_MS), background);
    } catch (error) {
      // A connection that arrives after we gave up on it is closed, not leaked.
      attempt.then((late) => late.close()).catch(() => {});
      if (!this.#closed) this.#failed("connect", error);
      return false;
    }
    if (this.#closed) {
      await conn.close().catch(() => {});
      return false;
    }
    this.#conn = conn;
    return true;
  }

  /** `repair`: false when the bus caught up on what it missed (a first connection made late repairs anyway). */
  #heard(repair = true): void {
    if (repair || this.#late) this.#peer.onReconnect();
    else this.#peer.onCaughtUp();
    this.#late = false;
    // Hearing the channel again means the server is back: publish without waiting out the breaker.
    this.#breaker.success();
    this.#pending.kick();
  }

  #scheduleConnect(): void {
    if (this.#closed) return;
    const retry = async (): Promise<void> => {
      this.#connectTimer = undefined;
      if (this.#closed) return;
      if (await this.#tryConnect(true)) {
        this.#connectDelay = CONNECT_FIRST_DELAY_MS;
        this.#heard();
      } else {
        this.#connectDelay = Math.min(this.#connectDelay * 2, CONNECT_MAX_DELAY_MS);
        this.#scheduleConnect();
      }
    };
    // Reconnecting is background work: it does not keep the process alive.
    this.#connectTimer = this.#clock.setTimeout(() => void retry(), this.#connectDelay, true);
  }

  /**
   * Tells peers; never rejects, and never waits on a bus whose breaker is open. An invalidation
   * that cannot be published now is merged and republished later; an "update" is only a hint
   * (peers' copies are older, not invalid) and is not.
   */
  publish(op: BusOp, scope: readonly string[], keys: string[], gen?: string): Promise<void> {
    const trace = channels.bus;
    if (trace.hasSubscribers) return trace.tracePromise(this.#publish, { cache: this.#report.id, operation: "publish", op, scope: scope.join("/"), keys }, this, op, scope, keys, gen);
    return this.#publish(op, scope, keys, gen);
  }

  async #publish(op: BusOp, scope: readonly string[], keys: string[], gen?: string): Promise<void> {
    const conn = this.#conn;
    const gate = conn === undefined ? "shut" : this.#breaker.gate();
    if (gate === "shut") {
      if (op !== "update") this.#queue(op, scope, keys);
      return;
    }
    // The probe of a half-open breaker goes out in the background: no caller waits for it.
    const sent = this.#sendGuarded(conn!, op, scope, keys, gen, gate === "probe");
    if (gate === "pass") return sent;
    // close() still waits for it (bounded by the publish timeout), as for any publish.
    this.#probes.add(sent);
    void sent.then(() => this.#probes.delete(sent));
  }

  /** Sends one message; its outcome tells the breaker, and a failed invalidation is queued. */
  async #sendGuarded(conn: BusConnection, op: BusOp, scope: readonly string[], keys: string[], gen: string | undefined, background: boolean): Promise<void> {
    try {
      for (const text of this.#messages(op, scope, keys, gen)) await this.#send(conn, text, background);
      this.#breaker.success();
    } catch (error) {
      this.#breaker.failure();
      this.#failed("publish", error);
      if (op !== "update") this.#queue(op, scope, keys);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#connectTimer !== undefined) this.#clock.clearTimeout(this.#connectTimer);
    await Promise.all(this.#probes);
    this.#pending.kick();
    await this.#pending.close();
    const conn = this.#conn;
    this.#conn = undefined;
    try {
      await conn?.close();
    } catch (error) {
      this.#failed("close", error);
    }
  }

  /** `background`: a republish nobody waits for (its timeout does not keep the process alive). */
  #send(conn: BusConnection, text: string, background = false): Promise<void> {
    return withTimeout(this.#clock, conn.publish(text), this.#publishTimeoutMs, () => busTimeout("publish", this.#publishTimeoutMs), background);
  }

  #encode(op: BusOp, scope: readonly string[], keys: string[], gen: string | undefined, at: number): string {
    return encodeMessage({ from: this.#id, op, scope: scope as string[], keys, gen, at }, this.#secret);
  }

  /**
   * The messages that carry an invalidation (or update), each at most #maxMessageBytes in UTF-8,
   * signature and scope included, and at most MAX_KEYS_PER_MESSAGE keys. One message when it fits
   * (measured only when its length leaves a doubt); otherwise the keys are split by their encoded
   * size: the JSON array of keys is the only part that varies, so a message's size is exactly that
   * of the message without keys plus each key's JSON text and the commas between them. A key too
   * long for any message turns into a clear of its scope (see #clearMessage): peers drop more than
   * needed, never less.
   */
  #messages(op: BusOp, scope: readonly string[], keys: string[], gen?: string): string[] {
    // Send time on the cache clock (the wall clock unless injected): receivers check it against replays.
    const at = this.#clock.now();
    const max = this.#maxMessageBytes;
    if (op === "clear") return [this.#clearMessage(scope, at)];
    if (keys.length <= MAX_KEYS_PER_MESSAGE) {
      const text = this.#encode(op, scope, keys, gen, at);
      if (!overBytes(text, max)) return [text];
    }
    const base = Buffer.byteLength(this.#encode(op, scope, [], gen, at));
    const out: string[] = [];
    let chunk: string[] = [];
    let size = base;
    let oversized = false;
    for (const key of keys) {
      const bytes = Buffer.byteLength(JSON.stringify(key));
      if (base + bytes > max) {
        oversized = true;
        continue;
      }
      // A key after the first one of a message also takes a comma.
      if (chunk.length === MAX_KEYS_PER_MESSAGE || (chunk.length > 0 && size + 1 + bytes > max)) {
        out.push(this.#encode(op, scope, chunk, gen, at));
        chunk = [];
        size = base;
      }
      size += (chunk.length > 0 ? 1 : 0) + bytes;
      chunk.push(key);
    }
    if (chunk.length > 0) out.push(this.#encode(op, scope, chunk, gen, at));
    if (oversized) {
      this.#report.note(undefined, "warn", "busKeyTooLong", { scope: scope.join("/"), maxMessageBytes: max }, "layercache: a key too long for one bus message was sent as a clear of its scope");
      out.push(this.#clearMessage(scope, at));
    }
    return out;
  }

  /** A clear of `scope`, or of the nearest enclosing scope whose message fits (the whole cache's always does). */
  #clearMessage(scope: readonly string[], at: number): string {
    for (let depth = scope.length; ; depth--) {
      const text = this.#encode("clear", scope.slice(0, depth), [], undefined, at);
      if (depth === 0 || !overBytes(text, this.#maxMessageBytes)) return text;
    }
  }

  /** Queues an invalidation that could not be published; bounded by MAX_PENDING_KEYS. */
  #queue(op: "remove" | "clear" | "tag", scope: readonly string[], keys: string[]): void {
    // A tag invalidation that could not be sent is republished as a clear of its scope: a superset.
    this.#add(JSON.stringify(scope), scope, op === "remove" ? keys : "clear");
    if (this.#pendingKeys > MAX_PENDING_KEYS) {
      // Bounded memory, still safe: peers dropping everything is a superset of what they missed.
      this.#report.note("busPublishesCollapsed", "warn", "busPublishesCollapsed", { keys: this.#pendingKeys }, "layercache: too many invalidations waiting for the bus; they will be sent as one clear");
      for (const pid of this.#pending.keys()) this.#pending.delete(pid);
      this.#pending.put("[]", { id: "[]", scope: [], keys: "clear", sending: false });
      this.#pendingKeys = 1;
      this.#collapses++;
    }
  }

  /**
   * Merges invalidations into the scope's pending item, in time proportional to `keys` alone. An
   * item being sent may already have reached peers, so what comes meanwhile must outlive it: keys
   * collect in its fresh set (kept after the send, see #republish); anything else starts a new item.
   */
  #add(id: string, scope: readonly string[], keys: Iterable<string> | "clear"): void {
    const prev = this.#pending.get(id);
    if (prev !== undefined) {
      if (!prev.sending && prev.keys === "clear") return; // covered by the clear
      if (!prev.sending && keys === "clear") {
        this.#pendingKeys += 1 - (prev.keys as Set<string>).size;
        prev.keys = "clear";
        return;
      }
      if (prev.keys !== "clear" && keys !== "clear") {
        const set = prev.keys;
        const before = set.size;
        for (const key of keys) set.add(key);
        this.#pendingKeys += set.size - before;
        return;
      }
      // A clear while keys are being sent (it covers the ones queued meanwhile), or anything while a
      // clear is being sent: a new item.
      if (prev.keys !== "clear") this.#pendingKeys -= prev.keys.size;
    }
    const item: PendingPublish = { id, scope: [...scope], keys: keys === "clear" ? "clear" : new Set(keys), sending: false };
    this.#pendingKeys += item.keys === "clear" ? 1 : item.keys.size;
    this.#pending.put(id, item);
  }

  /**
   * Sends one scope's pending invalidations. The keys being sent are taken out of the item first,
   * so keys queued meanwhile collect in a fresh set: on success they stay queued (as a new item,
   * which the retry round does not delete); on failure what was not sent goes back.
   */
  async #republish(p: PendingPublish): Promise<boolean> {
    const conn = this.#conn;
    if (conn === undefined || !this.#breaker.allow()) return false;
    const sending = p.keys;
    if (sending !== "clear") p.keys = new Set();
    p.sending = true;
    const collapses = this.#collapses;
    let ok = true;
    try {
      const messages = sending === "clear" ? this.#messages("clear", p.scope, []) : this.#messages("remove", p.scope, [...sending]);
      for (const text of messages) await this.#send(conn, text, true);
      this.#breaker.success();
    } catch (error) {
      this.#breaker.failure();
      this.#failed("publish", error);
      ok = false;
    }
    p.sending = false;
    // A collapse into one clear (meanwhile) reset the queue and its count.
    if (this.#collapses !== collapses) return ok;
    const current = this.#pending.get(p.id) === p;
    this.#pendingKeys -= sending === "clear" ? 1 : sending.size;
    if (!ok) {
      // Not sent: back into the scope's item (this one, or the one queued since).
      if (current && sending !== "clear") {
        const meanwhile = p.keys as Set<string>;
        p.keys = sending;
        this.#pendingKeys += sending.size;
        this.#add(p.id, p.scope, meanwhile);
        this.#pendingKeys -= meanwhile.size; // they were counted already
      } else if (!current || sending !== "clear") this.#add(p.id, p.scope, sending);
      else this.#pendingKeys += 1; // the clear stays queued as it was
      return false;
    }
    // Keys queued while this was sent stay queued, as a new item the round will not delete.
    if (current && p.keys !== "clear" && p.keys.size > 0) this.#pending.put(p.id, { id: p.id, scope: p.scope, keys: p.keys, sending: false });
    return true;
  }

  #receive(text: string): void {
    const trace = channels.bus;
    if (trace.hasSubscribers) {
      const context: BusContext = { cache: this.#report.id, operation: "receive" };
      trace.traceSync(this.#handle, context, this, text, context);
    }
    else this.#handle(text, undefined);
  }

  /** A received message; `trace` (the channel's context, when traced) is told what it was. */
  #handle(text: string, trace?: BusContext): void {
    const d = decodeMessage(text, this.#secret, this.#clock.now());
    if (!d.ok) {
      if (trace !== undefined) trace.dropped = d.reason;
      this.#report.fact("busMessageDropped", { reason: d.reason });
      return;
    }
    const m: BusMessage = d.message;
    if (trace !== undefined) {
      trace.op = m.op;
      trace.scope = m.scope.join("/");
      trace.keys = m.keys;
      trace.from = m.from;
    }
    if (m.from === this.#id) {
      if (trace !== undefined) trace.dropped = "own";
      return;
    }
    if (m.op === "remove") this.#peer.onRemove(m.scope, m.keys, m.from, m.gen);
    else if (m.op === "update") this.#peer.onUpdate(m.scope, m.keys, m.from, m.gen);
    else if (m.op === "tag") this.#peer.onTag(m.scope, m.keys, m.from);
    else this.#peer.onClear(m.scope, m.from);
  }

  #failed(operation: string, error: unknown): void {
    this.#report.fact("busError", { operation, error });
  }
}

function busTimeout(operation: string, ms: number): Error {
  return new LayerCacheError("ELAYERCACHE_BUS_TIMEOUT", `layercache: bus ${operation} took longer than ${ms} ms`);
}
