import { randomBytes } from "node:crypto";
import type { TimerClock } from "../shared/clock.js";
import { BusLink } from "../bus/link.js";
import type { Bus } from "../bus/contract.js";
import type { BusOp } from "../bus/codec.js";
import { CacheClosedError, LoadTimeoutError, SerializationError, keyError } from "../shared/errors.js";
import { Counters, Emitter, type HitLayer, type Stats } from "../telemetry/events.js";
import { writeLog, type Logger } from "../telemetry/logger.js";
import { L1Partition, REVALIDATE, VISITED, type EntryTimes } from "../l1/partition.js";
import { DEFAULTS, type CacheSettings, type L1Bounds, type Policy } from "../api/options.js";
import type { L2Store } from "../l2/contract.js";
import { GENERATION_MEMORY_MS, RemoteLayer, type Encoded, type RemoteEntry } from "../l2/remote.js";
import type { Serializer } from "../l2/serializer.js";
import { Flight, Peek, type Fenced } from "./flight.js";
import { Namespace } from "./namespace.js";
import { sabotage } from "./sabotage.js";

/** How long `close()` waits for background work before aborting it. */
const CLOSE_WAIT_MS = 5_000;
/** How long the first operations wait for L2 and the bus to connect before going on without them. */
const OPEN_WAIT_MS = 1_000;

export interface EngineInit {
  settings: CacheSettings;
  bounds: L1Bounds;
  clock: TimerClock;
  logger: Logger | undefined;
  serializer: Serializer;
  store: L2Store | undefined;
  bus: Bus | undefined;
}

/**
 * A value the engine still holds for a key past its ttl (in L1, or found in L2): what the loader
 * gets as `stale`, what a soft timeout returns, and — inside its fail-safe window — what a failed
 * load returns.
 */
interface Held {
  value: unknown;
  born: number;
  /** End of the background stale window, narrowed by the reader's `maxStale`. */
  staleEnd: number;
  /** End of the fail-safe window, narrowed by the reader's `failSafe` (no window when it is 0). */
  safeEnd: number;
  /** Set when the value was found in L2 only (L1 is filled before a throttle serves it). */
  remote?: RemoteEntry;
}

/** The held form of an entry, or undefined when it is past every window (dead). */
function heldValue(value: unknown, t: EntryTimes, p: Policy, now: number, remote: RemoteEntry | undefined): Held | undefined {
  if (now >= t.fresh + Math.max(t.maxStale, t.failSafe)) return undefined;
  return {
    value,
    born: t.born,
    staleEnd: t.fresh + Math.min(t.maxStale, p.maxStale),
    safeEnd: p.failSafe > 0 ? t.fresh + Math.min(t.failSafe, p.failSafe) : -Infinity,
    remote,
  };
}

const RESOLVED_UNDEFINED = Promise.resolve(undefined);

/**
 * Records a key's "until" time. Expired stamps are removed when read; this sweep (at every power
 * of two past 1024 stamps) bounds the map for keys that failed once and were never read again.
 */
function stamp(map: Map<string, number>, key: string, until: number, now: number): void {
  const n = map.size;
  if (n >= 1024 && (n & (n - 1)) === 0) for (const [k, t] of map) if (t <= now) map.delete(k);
  map.set(key, until);
}

/**
 * The read/load/refresh state machine. One request goes one straight way:
 *   L1 (fresh → hit; stale window → serve and refresh) → single flight → L2 → loader →
 *   write-back (L2 conditional, then L1) → bus.
 * L2 and the bus sit behind facades (`RemoteLayer`, `BusLink`) that own their error handling, so
 * nothing below ever throws into a read.
 */
export class Engine {
  readonly id = randomBytes(6).toString("hex");
  readonly clock: TimerClock;
  readonly settings: CacheSettings;
  readonly logger: Logger | undefined;
  readonly serializer: Serializer;
  readonly emitter: Emitter;
  readonly counters = new Counters();
  readonly root: Namespace;
  readonly remote: RemoteLayer | undefined;
  readonly link: BusLink | undefined;
  /** True once L2 and bus are connected (at once when there are none); false again after close. */
  opened: boolean;
  closed = false;
  #opening: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #refreshing = 0;
  #genSeq = 0;
  readonly #tasks = new Set<Promise<void>>();
  /** L2 and bus send on one connection that keeps call order: an invalidation needs no round trip in between. */
  readonly #ordered: boolean;
  /** Every flight not yet done, detached ones included (for close). */
  readonly #flights = new Set<Flight>();

  constructor(init: EngineInit) {
    this.clock = init.clock;
    this.settings = init.settings;
    this.logger = init.logger;
    this.serializer = init.serializer;
    this.emitter = new Emitter(init.logger);
    const part = new L1Partition(init.bounds.maxEntries ?? DEFAULTS.maxEntries, init.bounds.maxBytes);
    this.root = new Namespace(undefined, "", part, init.bounds);
    const common = { emitter: this.emitter, counters: this.counters, logger: init.logger };
    this.remote =
      init.store &&
      new RemoteLayer(init.store, {
        ...common,
        serializer: init.serializer,
        prefix: init.settings.prefix,
        maxValueBytes: init.settings.maxValueBytes,
        clock: init.clock,
        newGen: () => this.#newGen(),
        // A removal that reached L2 late: peers may have re-read the old value meanwhile.
        onRetried: (ns, key) => void this.link?.publish("remove", ns.path, [key]),
      });
    this.link =
      init.bus &&
      new BusLink(init.bus, {
        ...common,
        channel: `${init.settings.prefix}:bus`,
        id: this.id,
        secret: init.settings.busSecret,
        clock: init.clock,
        peer: {
          onRemove: (scope, keys, from, gen) => this.#peerRemove(scope, keys, from, gen),
          onUpdate: (scope, keys, from, gen) => this.#peerUpdate(scope, keys, from, gen),
          onClear: (scope, from) => this.#peerClear(scope, from),
          onDeaf: () => this.#busGap("disconnect"),
          onHearing: () => this.#busGap("reconnect"),
          onCaughtUp: () => this.#busGap("caughtUp"),
        },
      });
    this.opened = this.remote === undefined && this.link === undefined;
    this.#ordered = init.store?.connection !== undefined && init.store.connection === init.bus?.connection;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Connects L2 and the bus (each bounded by its own timeouts); `cache.ready()`. */
  open(): Promise<void> {
    if (this.closed) return Promise.reject(new CacheClosedError());
    return (this.#opening ??= this.#connect());
  }

  async #connect(): Promise<void> {
    await this.remote?.connect();
    await this.link?.connect();
    if (!this.closed) this.opened = true;
  }

  /**
   * The first operations wait for the connections, but at most OPEN_WAIT_MS: with Redis down at
   * start-up they go on degraded at once rather than hang. A bus that connects later repairs L1.
   */
  #afterOpen<T>(op: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new CacheClosedError());
    const opening = this.open();
    return new Promise<void>((resolve, reject) => {
      // Not unref'd: a caller waits for it.
      const timer = setTimeout(() => {
        this.link?.stopWaiting();
        if (!this.closed) this.opened = true;
        resolve();
      }, OPEN_WAIT_MS);
      opening.then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    }).then(() => (this.closed ? Promise.reject(new CacheClosedError()) : op()));
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.closed = true;
    this.opened = false;
    return (this.#closing = this.#shutdown());
  }

  async #shutdown(): Promise<void> {
    // Connections still being opened are closed once open (their facades see `closed`).
    const waitFor = [...this.#tasks, ...(this.#opening ? [this.#opening] : [])];
    if (waitFor.length > 0) {
      // Not unref'd: close() must resolve even when nothing else keeps the process alive.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)));
      await Promise.race([Promise.allSettled(waitFor), bound]);
      clearTimeout(timer);
    }
    // What is still running is aborted; whoever still waits for it gets CacheClosedError.
    for (const f of [...this.#flights]) {
      const error = new CacheClosedError();
      f.abort(error);
      f.fence();
      this.#done(f);
      f.fail(error);
    }
    await this.link?.close();
    await this.remote?.close();
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    const done = (): void => void this.#tasks.delete(task);
    task.then(done, done);
  }

  // ---------------------------------------------------------------- keys

  /** The key, checked; throws the TypeError SPEC section 6 asks for. */
  checkKey(key: unknown): string {
    if (typeof key !== "string") throw keyError(key, "must be a non-empty string");
    if (key.length === 0) throw keyError(key, "must not be empty");
    if (key.length > this.settings.maxKeyLength) throw keyError(key, `is longer than maxKeyLength (${this.settings.maxKeyLength})`);
    // A lone surrogate becomes U+FFFD on its way to L2 (UTF-8), so two different keys would share one record.
    if (!key.isWellFormed()) throw keyError(key, "is not well-formed Unicode (it contains a lone surrogate)");
    return key;
  }

  // ---------------------------------------------------------------- reads

  /** A fresh value from L1 or L2, else undefined. Never loads, never serves stale. */
  get(ns: Namespace, key: string): Promise<unknown> {
    if (!this.opened) return this.#afterOpen(() => this.get(ns, key));
    const idx = ns.slots.get(key);
    if (idx !== undefined) {
      const part = ns.part;
      const flags = part.flags[idx]!;
      if (this.clock.now() < part.fresh[idx]! && (flags & REVALIDATE) === 0) {
        part.flags[idx] = flags | VISITED;
        this.#hit(ns, key, "l1", 1);
        return Promise.resolve(part.values[idx]);
      }
    }
    if (this.remote === undefined) {
      this.#miss(ns, key, 1);
      return RESOLVED_UNDEFINED;
    }
    return this.#getFromL2(ns, key);
  }

  /** A get that missed L1: one L2 read per key at a time, shared by the gets that join it. */
  #getFromL2(ns: Namespace, key: string): Promise<unknown> {
    const running = ns.peeks?.get(key);
    if (running !== undefined) {
      running.callers++;
      return running.promise;
    }
    const peek = new Peek();
    peek.callers = 1;
    (ns.peeks ??= new Map()).set(key, peek);
    peek.promise = this.#peek(ns, key, peek);
    return peek.promise;
  }

  async #peek(ns: Namespace, key: string, peek: Peek): Promise<unknown> {
    try {
      const found = await this.remote!.read(ns, key);
      const e = found?.entry;
      if (e !== undefined && this.clock.now() < e.times.fresh) {
        // An invalidation that happened while L2 answered must not be undone by this fill.
        if (peek.accepts(found!.gen)) this.#fillL1(ns, key, e);
        this.#hit(ns, key, "l2", peek.callers);
        return e.value;
      }
      this.#miss(ns, key, peek.callers);
      return undefined;
    } finally {
      if (ns.peeks?.get(key) === peek) ns.peeks.delete(key);
      ns.settle();
    }
  }

  /**
   * getOrSet and cached calls. `fn` is the loader (called with `{ signal, stale }`) or, when
   * `args` is given, the cached function (called with `args`).
   */
  read(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined): Promise<unknown> {
    if (!this.opened) return this.#afterOpen(() => this.read(ns, key, p, fn, self, args));
    const idx = ns.slots.get(key);
    if (idx !== undefined) {
      const part = ns.part;
      const now = this.clock.now();
      const flags = part.flags[idx]!;
      const fresh = part.fresh[idx]!;
      if (now < fresh && (flags & REVALIDATE) === 0) {
        part.flags[idx] = flags | VISITED;
        this.#hit(ns, key, "l1", 1);
        if (p.refreshAhead > 0) {
          const born = part.born[idx]!;
          if (now >= born + (fresh - born) * p.refreshAhead) this.#startRefresh(ns, key, p, fn, self, args, now);
        }
        return Promise.resolve(part.values[idx]);
      }
      if (p.background && (flags & REVALIDATE) === 0 && now < fresh + Math.min(part.maxStale[idx]!, p.maxStale)) {
        part.flags[idx] = flags | VISITED;
        this.#staleHit(ns, key, "background", 1);
        this.#startRefresh(ns, key, p, fn, self, args, now);
        return Promise.resolve(part.values[idx]);
      }
    }
    return this.#load(ns, key, p, fn, self, args);
  }

  /** No usable value in L1: join the key's flight, serve a throttled fallback, or start a load. */
  #load(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined): Promise<unknown> {
    const running = ns.flights?.get(key);
    if (running !== undefined) {
      if (running.settled) {
        // It answered early with a held value and goes on loading: that answer, while its window lasts.
        if (this.clock.now() < running.staleUntil || sabotage.staleJoin) {
          this.#staleHit(ns, key, running.servedStale ?? "background", 1);
          return running.promise;
        }
        // Past that window the held value is too old for anybody (SPEC 4.2): wait for the load itself.
        this.#miss(ns, key, 1);
        this.#waitFor(running);
        return running.joinLate();
      }
      // Before its L2 read tells hit from miss, the caller is counted with the others there.
      if (running.loading) this.#miss(ns, key, 1);
      running.callers++;
      this.#waitFor(running);
      return running.promise;
    }
    if (ns.throttles !== undefined) {
      const throttled = this.#throttledFallback(ns, key, p);
      if (throttled !== undefined) {
        this.counters.failSafeHits++;
        this.#staleHit(ns, key, "failSafe", 1);
        return Promise.resolve(throttled.value);
      }
    }
    const f = this.#flight(ns, key, p, this.clock.now(), fn, self, args);
    f.callers = 1;
    f.waited = true;
    this.#track(this.#run(f));
    return f.promise;
  }

  /** A caller now awaits `f`: its timers must keep the process alive until it is answered. */
  #waitFor(f: Flight): void {
    if (f.waited) return;
    f.waited = true;
    if (f.hardTimer !== undefined) this.clock.keepAlive(f.hardTimer);
    if (f.softTimer !== undefined) this.clock.keepAlive(f.softTimer);
  }

  #flight(ns: Namespace, key: string, p: Policy, now: number, fn: Function, self: unknown, args: unknown[] | undefined): Flight {
    const f = new Flight(ns, key, p, now, fn, self, args);
    (ns.flights ??= new Map()).set(key, f);
    this.#flights.add(f);
    return f;
  }

  /** Starts a background refresh unless one is running, the key is cooling down, or the pool is full. */
  #startRefresh(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined, now: number): void {
    if (ns.flights?.has(key)) return;
    if (!this.#acquireRefresh(ns, key, now)) return;
    const f = this.#flight(ns, key, p, now, fn, self, args);
    f.pooled = true;
    this.#track(this.#run(f));
  }

  #acquireRefresh(ns: Namespace, key: string, now: number): boolean {
    const until = ns.cooldowns?.get(key);
    if (until !== undefined) {
      if (now < until) {
        this.#refreshSkipped(ns, key, "cooldown");
        return false;
      }
      ns.cooldowns!.delete(key);
    }
    if (this.#refreshing >= this.settings.refreshConcurrency) {
      this.#refreshSkipped(ns, key, "poolFull");
      return false;
    }
    this.#refreshing++;
    this.counters.refreshStarts++;
    if (this.emitter.l.refreshStart) this.emitter.emit("refreshStart", { key, scope: ns.label });
    return true;
  }

  /** One flight from start to end. Never rejects: every outcome settles the flight. */
  async #run(f: Flight): Promise<void> {
    const { ns, key, policy: p } = f;
    try {
      let held = this.#heldInL1(ns, key, p, f.started);
      if (this.remote !== undefined) {
        const found = await this.remote.read(ns, key);
        if (found !== undefined) {
          f.gen = found.gen;
          const e = found.entry;
          if (e !== undefined && f.accepts(found.gen)) {
            const now = this.clock.now();
            const t = e.times;
            // Another instance loaded it (a refresh only adopts a value newer than the one it replaces).
            if (now < t.fresh && (!f.pooled || held === undefined || t.born > held.born)) {
              this.#fillL1(ns, key, e);
              this.#hit(ns, key, "l2", f.callers);
              if (f.pooled) this.#refreshSucceeded(f);
              this.#done(f);
              f.settle(e.value);
              return;
            }
            const inL2 = heldValue(e.value, t, p, now, e);
            if (inL2 !== undefined && (held === undefined || inL2.born > held.born)) held = inL2;
            if (!f.pooled && p.background && inL2 !== undefined && now < inL2.staleEnd) {
              // L1 had nothing usable but L2 holds a value in its stale window: serve it, refresh behind it.
              this.#fillL1(ns, key, e);
              this.#staleHit(ns, key, "background", f.callers);
              f.servedStale = "background";
              f.staleUntil = inL2.staleEnd;
              f.settle(e.value);
              if (!this.#acquireRefresh(ns, key, now)) return;
              f.pooled = true;
              f.waited = false; // a refresh now: nobody waits for it, unless a caller joins late
            }
          }
        }
      }
      // A refresh invalidated while it read L2, with nobody waiting for it, has nothing left to do.
      if (!f.clean && (f.settled || f.callers === 0)) return;
      this.#miss(ns, key, f.settled ? 0 : f.callers);
      f.loading = true;
      await this.#callLoader(f, held);
    } catch (error) {
      // Only a bug gets here; the callers still get an answer.
      writeLog(this.logger, "error", { key, scope: ns.label, err: error }, "layercache: internal error during a load");
      this.#done(f);
      f.fail(error);
    } finally {
      this.#done(f);
      // A scope that holds nothing any more is reclaimed.
      ns.settle();
    }
  }

  /**
   * Detaches a finished flight (before its callers are answered, so that a caller who reads again
   * at once starts a new load rather than joining this one) and frees its refresh-pool place.
   */
  #done(f: Flight): void {
    const flights = f.ns.flights;
    if (flights?.get(f.key) === f) flights.delete(f.key);
    this.#flights.delete(f);
    if (f.pooled) {
      f.pooled = false;
      this.#refreshing--;
    }
  }

  async #callLoader(f: Flight, held: Held | undefined): Promise<void> {
    const { ns, key, policy: p } = f;
    this.counters.loads++;
    if (this.emitter.l.load) this.emitter.emit("load", { key, scope: ns.label });
    let outcome = f.invoke(held?.value);
    // A timer keeps the process alive while a caller awaits the flight, not for a refresh alone.
    const background = !f.waited;
    if (p.hardTimeout > 0) {
      const timeout = new Promise<never>((_, reject) => {
        f.hardTimer = this.clock.setTimeout(
          () => {
            const error = new LoadTimeoutError(key, p.hardTimeout);
            f.abort(error);
            reject(error);
          },
          p.hardTimeout,
          background,
        );
      });
      outcome = Promise.race([outcome, timeout]);
    }
    if (held !== undefined && p.softTimeout > 0 && !f.settled) {
      // The held value answers only while a window allows it: its stale window or its fail-safe window.
      const until = Math.max(held.staleEnd, held.safeEnd);
      f.softTimer = this.clock.setTimeout(
        () => {
          // An invalidation while the loader ran makes the held value unservable.
          // Nobody waits (a refresh started by a stale read): there is nobody to answer early.
          if (f.settled || !f.clean || !f.waited || this.clock.now() >= until) return;
          this.#staleHit(ns, key, "softTimeout", f.callers);
          f.servedStale = "softTimeout";
          f.staleUntil = until;
          f.settle(held.value);
          // The load goes on in the background: nobody waits for it now, unless a caller joins late.
          f.waited = false;
          if (f.hardTimer !== undefined) this.clock.keepAlive(f.hardTimer, false);
        },
        p.softTimeout,
        background,
      );
    }
    let value: unknown;
    try {
      value = await outcome;
    } catch (error) {
      this.#loadFailed(f, error, held);
      return;
    } finally {
      if (f.hardTimer !== undefined) this.clock.clearTimeout(f.hardTimer);
      if (f.softTimer !== undefined) this.clock.clearTimeout(f.softTimer);
      f.hardTimer = f.softTimer = undefined;
    }
    await this.#commit(f, value);
  }

  #loadFailed(f: Flight, error: unknown, held: Held | undefined): void {
    const { ns, key } = f;
    const now = this.clock.now();
    const refresh = f.pooled;
    this.#done(f);
    this.counters.loadErrors++;
    if (this.emitter.l.loadError) this.emitter.emit("loadError", { key, scope: ns.label, error });
    if (refresh) {
      stamp((ns.cooldowns ??= new Map()), key, now + this.settings.refreshCooldown, now);
      this.counters.refreshFailures++;
      writeLog(this.logger, "warn", { key, scope: ns.label, err: error }, "layercache: background refresh failed; keeping the stale value");
      if (this.emitter.l.refreshFailure) this.emitter.emit("refreshFailure", { key, scope: ns.label, error });
    }
    if (held !== undefined && now < held.safeEnd && f.clean) {
      if (!refresh) {
        // Throttle: a down backend is not called again on every read while the fallback is served.
        if (held.remote !== undefined) this.#fillL1(ns, key, held.remote);
        stamp((ns.throttles ??= new Map()), key, now + this.settings.refreshCooldown, now);
        writeLog(this.logger, "warn", { key, scope: ns.label, err: error }, "layercache: load failed; serving the fail-safe value");
      }
      // Those still waiting: every caller, or after an early answer the late joiners.
      const waiting = f.settled ? f.lateCallers : f.callers;
      if (waiting > 0) {
        this.counters.failSafeHits += waiting;
        this.#staleHit(ns, key, "failSafe", waiting);
      }
      f.settle(held.value);
      return;
    }
    f.fail(error);
  }

  /** Writes a loaded value back: L2 first (conditional on the generation seen), then L1, then peers. */
  async #commit(f: Flight, value: unknown): Promise<void> {
    const { ns, key, policy: p } = f;
    if (value === undefined) {
      // Documented: `undefined` is returned but never cached.
      if (f.pooled) this.#refreshSucceeded(f);
      this.#done(f);
      f.settle(undefined);
      return;
    }
    if (!f.clean) return this.#discard(f, value, "invalidated");
    const now = this.clock.now();
    const times = this.#times(p, now);
    let bytes = 0;
    let published = false;
    // The conditional write is only trustworthy while L2 still remembers the generation the load saw.
    let gen: string | undefined;
    if (this.remote !== undefined && f.gen !== undefined && now - f.started < GENERATION_MEMORY_MS) {
      const enc = this.#encodeForL2(ns, key, value);
      if (enc !== undefined) {
        bytes = enc.bytes;
        if (!enc.tooLarge) {
          // A load keeps the generation it saw: concurrent loads of one value do not conflict.
          gen = f.gen === "" ? this.#newGen() : f.gen;
          const result = await this.remote.put(ns, key, enc, times, gen, f.gen);
          if (result === "conflict") return this.#discard(f, value, "conflict");
          published = result === "written";
        }
      }
      if (!f.clean) return this.#discard(f, value, "invalidated");
    }
    this.#writeL1(ns, key, value, times, bytes);
    ns.throttles?.delete(key);
    ns.cooldowns?.delete(key);
    // With an L2, peers drop their older copies and re-read it; without one, each instance owns its copy.
    if (published && this.link !== undefined) this.#track(this.link.publish("update", ns.path, [key], gen));
    if (f.pooled) this.#refreshSucceeded(f);
    this.#done(f);
    f.settle(value);
  }

  #discard(f: Flight, value: unknown, reason: "invalidated" | "conflict"): void {
    this.counters.loadsDiscarded++;
    if (this.emitter.l.loadDiscarded) this.emitter.emit("loadDiscarded", { key: f.key, scope: f.ns.label, reason });
    this.#done(f);
    f.settle(value);
  }

  /** Serializes for L2 inside a load: an unserializable value stays in L1 only, reported as an L2 error. */
  #encodeForL2(ns: Namespace, key: string, value: unknown): Encoded | undefined {
    try {
      const enc = this.remote!.encode(key, value);
      if (enc.tooLarge) this.#tooLarge(ns, key, enc.bytes, this.settings.maxValueBytes, "l2");
      return enc;
    } catch (error) {
      this.counters.l2Errors++;
      writeLog(this.logger, "warn", { key, scope: ns.label, err: error }, "layercache: value kept in L1 only");
      if (this.emitter.l.l2Error) this.emitter.emit("l2Error", { operation: "serialize", key, scope: ns.label, error });
      return undefined;
    }
  }

  /** The key's value still held in L1 (past its ttl or not), unless it is past every window. */
  #heldInL1(ns: Namespace, key: string, p: Policy, now: number): Held | undefined {
    const idx = ns.slots.get(key);
    if (idx === undefined) return undefined;
    const part = ns.part;
    const held = heldValue(part.values[idx], { born: part.born[idx]!, fresh: part.fresh[idx]!, maxStale: part.maxStale[idx]!, failSafe: part.failSafe[idx]! }, p, now, undefined);
    if (held === undefined) part.deleteSlot(idx); // past every window: dead
    return held;
  }

  #throttledFallback(ns: Namespace, key: string, p: Policy): Held | undefined {
    const until = ns.throttles!.get(key);
    if (until === undefined) return undefined;
    const now = this.clock.now();
    if (now >= until) {
      ns.throttles!.delete(key);
      return undefined;
    }
    const held = this.#heldInL1(ns, key, p, now);
    return held !== undefined && now < held.safeEnd ? held : undefined;
  }

  // ---------------------------------------------------------------- writes

  async set(ns: Namespace, key: string, value: unknown, p: Policy): Promise<void> {
    if (!this.opened) await this.#afterOpen(async () => {});
    if (value === undefined) throw new TypeError(`layercache: cannot set key ${JSON.stringify(key)} to undefined (use remove, or null)`);
    this.#invalidate(ns, key, false);
    const times = this.#times(p, this.clock.now());
    let enc: Encoded | undefined;
    let failure: SerializationError | undefined;
    if (this.remote !== undefined) {
      try {
        enc = this.remote.encode(key, value);
        if (enc.tooLarge) this.#tooLarge(ns, key, enc.bytes, this.settings.maxValueBytes, "l2");
      } catch (error) {
        failure = error as SerializationError;
      }
    }
    this.#writeL1(ns, key, value, times, enc?.bytes ?? 0);
    // A value L2 cannot hold still replaces the old one there: peers must not re-read an outdated value.
    const gen = enc !== undefined && !enc.tooLarge ? this.#newGen() : undefined;
    const remote = this.remote;
    const toL2 = () => (remote === undefined ? undefined : gen !== undefined ? remote.put(ns, key, enc!, times, gen) : remote.remove(ns, key));
    // Peers whose load or read finds this very record in L2 (generation `gen`) may keep it.
    await this.#invalidateOut(toL2, () => this.link?.publish("remove", ns.path, [key], gen));
    if (failure) throw failure;
  }

  async remove(ns: Namespace, key: string): Promise<void> {
    if (!this.opened) await this.#afterOpen(async () => {});
    this.#invalidate(ns, key, true);
    await this.#invalidateOut(
      () => this.remote?.remove(ns, key),
      () => this.link?.publish("remove", ns.path, [key]),
    );
  }

  /**
   * L2 first, then the bus: a peer that drops its copy and re-reads L2 must find the new state.
   * On one order-keeping connection both are sent back to back; otherwise the bus waits for L2.
   */
  async #invalidateOut(toL2: () => Promise<unknown> | undefined, toBus: () => Promise<void> | undefined): Promise<void> {
    if (this.#ordered) {
      const l2 = toL2();
      await Promise.all([l2, toBus()]);
    } else {
      await toL2();
      await toBus();
    }
  }

  async clear(ns: Namespace): Promise<void> {
    if (!this.opened) await this.#afterOpen(async () => {});
    this.#invalidateScope(ns, true);
    await this.link?.publish("clear", ns.path, []);
  }

  removeLocal(ns: Namespace, key: string): void {
    this.#invalidate(ns, key, true);
  }

  clearLocal(ns: Namespace): void {
    this.#invalidateScope(ns, true);
  }

  /**
   * Every invalidation of one key goes through here: its in-flight load and L2 read are fenced and
   * detached (`gen`: the L2 generation of the write that replaced the value, which they may still
   * take from L2).
   */
  #invalidate(ns: Namespace, key: string, drop: boolean, gen?: string): boolean {
    const f = ns.flights?.get(key);
    if (f !== undefined) {
      f.fence(gen);
      ns.flights!.delete(key);
    }
    const peek = ns.peeks?.get(key);
    if (peek !== undefined) {
      peek.fence(gen);
      ns.peeks!.delete(key);
    }
    ns.throttles?.delete(key);
    ns.cooldowns?.delete(key);
    const dropped = drop && ns.part.delete(ns, key);
    ns.settle();
    return dropped;
  }

  /** Fences and detaches everything in flight in a scope and its nested scopes; clears their L1 entries when `drop`. */
  #invalidateScope(ns: Namespace, drop: boolean): number {
    let dropped = 0;
    for (const n of ns.subtree()) {
      for (const map of [n.flights, n.peeks] as (Map<string, Fenced> | undefined)[]) {
        if (map === undefined) continue;
        for (const op of map.values()) op.fence();
        map.clear();
      }
      n.throttles = undefined;
      n.cooldowns = undefined;
      if (drop) dropped += n.part.clearOwner(n);
    }
    return dropped;
  }

  // ---------------------------------------------------------------- peers

  #peerRemove(scope: string[], keys: string[], from: string, gen: string | undefined): void {
    const ns = this.root.find(scope);
    let dropped = 0;
    if (ns !== undefined) for (const key of keys) if (this.#invalidate(ns, key, true, gen)) dropped++;
    this.#peerInvalidated("remove", scope, keys, dropped, from);
  }

  /** A peer's load wrote a newer value to L2: drop the L1 copies (loads in flight are not invalidated). */
  #peerUpdate(scope: string[], keys: string[], from: string, gen: string | undefined): void {
    const ns = this.root.find(scope);
    let dropped = 0;
    if (ns !== undefined) {
      for (const key of keys) {
        // A get reading L2 may only fill L1 with this newer write, not with what it read before.
        const peek = ns.peeks?.get(key);
        if (peek !== undefined) {
          peek.fence(gen);
          ns.peeks!.delete(key);
        }
        if (ns.part.delete(ns, key)) dropped++;
      }
    }
    this.#peerInvalidated("update", scope, keys, dropped, from);
  }

  #peerClear(scope: string[], from: string): void {
    const ns = this.root.find(scope);
    this.#peerInvalidated("clear", scope, [], ns === undefined ? 0 : this.#invalidateScope(ns, true), from);
  }

  #peerInvalidated(op: BusOp, scope: string[], keys: string[], dropped: number, from: string): void {
    this.counters.peerInvalidations++;
    this.counters.peerDropped += dropped;
    if (this.emitter.l.peerInvalidation) this.emitter.emit("peerInvalidation", { op, scope: scope.join("/"), keys, dropped, from });
  }

  /**
   * The bus lost its subscription, or has it again. While it is deaf, L1 keeps serving (that is
   * what it is for when Redis is down). Once it hears again, invalidations sent in the gap may
   * have been missed: entries written before now are no longer served as fresh or stale — the
   * next read revalidates (L2, then the loader), keeping them only as fail-safe fallbacks — and
   * loads in flight will not write back.
   */
  #busGap(edge: "disconnect" | "reconnect" | "caughtUp"): void {
    if (edge === "disconnect") {
      this.counters.busDisconnects++;
      writeLog(this.logger, "warn", {}, "layercache: bus subscription lost; invalidations from peers may be missed until it is back");
      if (this.emitter.l.busDisconnect) this.emitter.emit("busDisconnect", {});
      return;
    }
    if (edge === "caughtUp") {
      this.counters.busCatchUps++;
      writeLog(this.logger, "info", {}, "layercache: bus back; it delivered what peers published meanwhile, nothing to revalidate");
      if (this.emitter.l.busCaughtUp) this.emitter.emit("busCaughtUp", {});
      return;
    }
    this.#invalidateScope(this.root, false);
    let entries = 0;
    for (const part of this.#partitions()) entries += part.markAllRevalidate();
    this.counters.busReconnects++;
    writeLog(this.logger, "info", { entries }, "layercache: bus subscription back; L1 entries will revalidate");
    if (this.emitter.l.busReconnect) this.emitter.emit("busReconnect", { entries });
  }

  // ---------------------------------------------------------------- helpers

  #newGen(): string {
    return `${this.id}.${(++this.#genSeq).toString(36)}`;
  }

  #times(p: Policy, now: number): EntryTimes {
    const ttl = p.jitter > 0 ? p.ttl + Math.random() * p.jitter : p.ttl;
    return { born: now, fresh: now + ttl, maxStale: p.maxStale, failSafe: p.failSafe };
  }

  /** Fills L1 from an L2 record, unless L1 already holds a newer write of the key. */
  #fillL1(ns: Namespace, key: string, e: RemoteEntry): void {
    const idx = ns.slots.get(key);
    if (idx !== undefined && ns.part.born[idx]! > e.times.born) return;
    this.#writeL1(ns, key, e.value, e.times, e.bytes);
  }

  #writeL1(ns: Namespace, key: string, value: unknown, times: EntryTimes, bytes: number): void {
    const part = ns.part;
    const size = part.sizes === undefined ? 0 : bytes > 0 ? bytes : this.#measure(value);
    if (part.write(ns, key, value, times, size) < 0) this.#tooLarge(ns, key, size, part.maxBytes, "l1");
  }

  /** Size of a value for `maxBytes`: the length of its serialized form (0 when it has none). */
  #measure(value: unknown): number {
    try {
      const text = this.serializer.serialize(value);
      return typeof text === "string" ? text.length : 0;
    } catch {
      return 0;
    }
  }

  #partitions(): Set<L1Partition> {
    const parts = new Set<L1Partition>();
    for (const ns of this.root.subtree()) parts.add(ns.part);
    return parts;
  }

  stats(): Stats {
    let entries = 0;
    let bytes = 0;
    let evictions = 0;
    for (const part of this.#partitions()) {
      entries += part.size;
      bytes += part.bytes;
      evictions += part.evictions;
    }
    return {
      ...this.counters,
      evictions,
      entries,
      bytes,
      refreshing: this.#refreshing,
      l2Pending: this.remote?.pending ?? 0,
      busPending: this.link?.pending ?? 0,
    };
  }

  /** Counts (and reports) `n` callers answered with a fresh value. */
  #hit(ns: Namespace, key: string, layer: HitLayer, n: number): void {
    this.counters.hits += n;
    if (layer === "l2") this.counters.l2Hits += n;
    if (this.emitter.l.hit) for (let i = 0; i < n; i++) this.emitter.emit("hit", { key, scope: ns.label, layer });
  }

  #miss(ns: Namespace, key: string, n: number): void {
    this.counters.misses += n;
    if (this.emitter.l.miss) for (let i = 0; i < n; i++) this.emitter.emit("miss", { key, scope: ns.label });
  }

  #staleHit(ns: Namespace, key: string, reason: "background" | "failSafe" | "softTimeout", n: number): void {
    this.counters.staleHits += n;
    if (this.emitter.l.staleHit) for (let i = 0; i < n; i++) this.emitter.emit("staleHit", { key, scope: ns.label, reason });
  }

  #refreshSkipped(ns: Namespace, key: string, reason: "poolFull" | "cooldown"): void {
    this.counters.refreshSkips++;
    if (this.emitter.l.refreshSkipped) this.emitter.emit("refreshSkipped", { key, scope: ns.label, reason });
  }

  #refreshSucceeded(f: Flight): void {
    this.counters.refreshSuccesses++;
    if (this.emitter.l.refreshSuccess) this.emitter.emit("refreshSuccess", { key: f.key, scope: f.ns.label });
  }

  #tooLarge(ns: Namespace, key: string, bytes: number, limit: number, layer: HitLayer): void {
    this.counters.valuesTooLarge++;
    if (this.emitter.l.valueTooLarge) this.emitter.emit("valueTooLarge", { key, scope: ns.label, bytes, limit, layer });
  }
}
