import { randomBytes } from "node:crypto";
import type { TimerClock } from "../shared/clock.js";
import { BusLink } from "../bus/link.js";
import type { Bus } from "../bus/contract.js";
import { CacheClosedError, LoadTimeoutError, SerializationError, keyError } from "../shared/errors.js";
import type { Counters, Emitter, HitLayer, Stats } from "../telemetry/events.js";
import type { Logger } from "../telemetry/logger.js";
import { Reporter } from "../telemetry/reporter.js";
import { channels } from "../telemetry/channels.js";
import { L1Partition, REVALIDATE, VISITED, type EntryTimes } from "../l1/partition.js";
import { DEFAULTS, type CacheSettings, type L1Bounds, type Policy } from "../api/options.js";
import type { L2Store } from "../l2/contract.js";
import { GENERATION_MEMORY_MS, RemoteLayer, type Encoded, type RemoteEntry, type RemoteRead } from "../l2/remote.js";
import type { Serializer } from "../l2/serializer.js";
import { BulkRead, Flight, Peek } from "./flight.js";
import { LoadBatch, Later, type LoadMany } from "./batch.js";
import { Namespace } from "./namespace.js";
import { invalidateKey, invalidateScope, invalidateTags, partitionsOf, peerHandlers, tagFenced } from "./invalidation.js";
import type { TagSnapshot } from "../l2/envelope.js";
import { Lifecycle } from "./lifecycle.js";
import { RefreshPool, stamp } from "./refresh-pool.js";
import { sabotage } from "./sabotage.js";


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

/** A key's L2 read done before its flight started (by `readMany`): the flight uses it instead of reading again. */
interface Known {
  /** What L2 held (undefined: unreachable). */
  found: RemoteRead | undefined;
  /** When the read started, and the engine's tag sequence number then: the flight counts from there. */
  started: number;
  tagSeq: number;
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
  /** Where every fact is recorded (counters, events, logs). */
  readonly report: Reporter;
  readonly root: Namespace;
  readonly remote: RemoteLayer | undefined;
  readonly link: BusLink | undefined;
  /** Opening, background work, closing. */
  readonly life: Lifecycle;
  readonly #pool: RefreshPool;
  #genSeq = 0;
  /** Counts tag invalidations (local and peers'): flights and L2 reads remember it when they start. */
  #tagSeq = 0;
  /** L2 and bus send on one connection that keeps call order: an invalidation needs no round trip in between. */
  readonly #ordered: boolean;
  /** Every flight not yet done, detached ones included (for close). */
  readonly #flights = new Set<Flight>();

  constructor(init: EngineInit) {
    this.clock = init.clock;
    this.settings = init.settings;
    this.logger = init.logger;
    this.serializer = init.serializer;
    this.report = new Reporter(init.logger, init.clock, this.id);
    this.#pool = new RefreshPool(init.settings.refreshConcurrency, init.settings.refreshCooldown, this.report);
    const part = new L1Partition(init.bounds.maxEntries ?? DEFAULTS.maxEntries, init.bounds.maxBytes);
    this.root = new Namespace(undefined, "", part, init.bounds);
    const common = { report: this.report };
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
        onRetried: (ns, key, tag) => void this.link?.publish(tag ? "tag" : "remove", ns.path, [key]),
      });
    this.link =
      init.bus &&
      new BusLink(init.bus, {
        ...common,
        channel: `${init.settings.prefix}:bus`,
        id: this.id,
        secret: init.settings.busSecret,
        clock: init.clock,
        peer: peerHandlers(this.root, this.report, () => ++this.#tagSeq),
      });
    this.life = new Lifecycle(
      {
        connect: async () => {
          await this.remote?.connect();
          await this.link?.connect();
        },
        stopWaiting: () => this.link?.stopWaiting(),
        // What is still running is aborted; whoever still waits for it gets CacheClosedError.
        abortAll: () => {
          // Every flight aborted before any ends: ending one may start a getOrSetMany's loadMany,
          // which must find all its keys' signals aborted already (and leave them out).
          const closing = [...this.#flights].map((f) => ({ f, error: new CacheClosedError() }));
          for (const { f, error } of closing) {
            f.abort(error);
            f.fence();
          }
          for (const { f, error } of closing) this.#finish(f, "error", error);
        },
        release: async () => {
          await this.link?.close();
          await this.remote?.close();
        },
      },
      this.remote === undefined && this.link === undefined,
    );
    this.#ordered = init.store?.connection !== undefined && init.store.connection === init.bus?.connection;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Connects L2 and the bus (each bounded by its own timeouts); `cache.ready()`. */
  open(): Promise<void> {
    return this.life.open();
  }

  close(): Promise<void> {
    // Failure lines still held back by the log throttle are summed up now, not lost.
    return this.life.close().finally(() => this.report.log.flush());
  }

  get opened(): boolean {
    return this.life.opened;
  }

  get closed(): boolean {
    return this.life.closed;
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
    const trace = channels.get;
    if (trace.hasSubscribers) return trace.tracePromise(this.#get, { cache: this.id, scope: ns.label, key }, this, ns, key);
    return this.#get(ns, key);
  }

  #get(ns: Namespace, key: string): Promise<unknown> {
    if (!this.opened) return this.life.afterOpen(() => this.#get(ns, key));
    const idx = ns.slots.get(key);
    if (idx !== undefined) {
      const part = ns.part;
      const flags = part.flags[idx]!;
      if (this.clock.now() < part.fresh[idx]! && (flags & REVALIDATE) === 0) {
        part.flags[idx] = flags | VISITED;
        this.report.hit(ns.label, key, "l1", 1);
        return Promise.resolve(part.values[idx]);
      }
    }
    if (this.remote === undefined) {
      this.report.miss(ns.label, key, 1);
      return RESOLVED_UNDEFINED;
    }
    return this.#getFromL2(ns, key);
  }

  /**
   * Fresh values of several keys (undefined for a miss): L1 first, then the L1 misses in one
   * multi-key L2 read (`#bulkRead`) — as `get` of each key, without a shared read per key. What
   * is read is returned; it fills L1 unless an invalidation fenced the key while the read ran.
   * With tracing on (the get channel), each key is a traced `get`.
   */
  getMany(ns: Namespace, keys: readonly string[]): Promise<unknown[]> {
    if (!this.opened) return this.life.afterOpen(() => this.getMany(ns, keys));
    if (channels.get.hasSubscribers) return Promise.all(keys.map((k) => this.get(ns, k)));
    const out: unknown[] = new Array(keys.length);
    let cold: number[] | undefined;
    const part = ns.part;
    const now = this.clock.now();
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const idx = ns.slots.get(key);
      if (idx !== undefined) {
        const flags = part.flags[idx]!;
        if (now < part.fresh[idx]! && (flags & REVALIDATE) === 0) {
          part.flags[idx] = flags | VISITED;
          this.report.hit(ns.label, key, "l1", 1);
          out[i] = part.values[idx];
          continue;
        }
      }
      if (this.remote === undefined) this.report.miss(ns.label, key, 1);
      else (cold ??= []).push(i);
    }
    if (cold === undefined) return Promise.resolve(out);
    return this.#bulkRead(ns, keys, cold, undefined, undefined, (i, key, found, bulk, now) => {
      const e = found?.entry;
      if (e !== undefined && now < e.times.fresh) {
        if (!bulk.fenced(ns, key) && !tagFenced(ns, e.tags, bulk.tagSeq)) this.#fillL1(ns, key, e);
        this.report.hit(ns.label, key, "l2", 1);
        out[i] = e.value;
      } else this.report.miss(ns.label, key, 1);
    }).then(() => out);
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
    peek.tagSeq = this.#tagSeq;
    ns.started();
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
        if (peek.accepts(found!.gen) && !tagFenced(ns, e.tags, peek.tagSeq)) this.#fillL1(ns, key, e);
        this.report.hit(ns.label, key, "l2", peek.callers);
        return e.value;
      }
      this.report.miss(ns.label, key, peek.callers);
      return undefined;
    } finally {
      if (ns.peeks?.get(key) === peek) ns.peeks.delete(key);
      ns.ended();
    }
  }

  /**
   * getOrSet and cached calls. `fn` is the loader (called with `{ signal, stale }`) or, when
   * `args` is given, the cached function (called with `args`).
   */
  read(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined): Promise<unknown> {
    const trace = channels.getOrSet;
    if (trace.hasSubscribers) return trace.tracePromise(this.#read, { cache: this.id, scope: ns.label, key }, this, ns, key, p, fn, self, args);
    return this.#read(ns, key, p, fn, self, args);
  }

  #read(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined, known?: Known): Promise<unknown> {
    if (!this.opened) return this.life.afterOpen(() => this.#read(ns, key, p, fn, self, args));
    const idx = ns.slots.get(key);
    if (idx !== undefined) {
      const part = ns.part;
      const now = this.clock.now();
      const flags = part.flags[idx]!;
      const fresh = part.fresh[idx]!;
      if (now < fresh && (flags & REVALIDATE) === 0) {
        part.flags[idx] = flags | VISITED;
        this.report.hit(ns.label, key, "l1", 1);
        if (p.refreshAhead > 0) {
          const born = part.born[idx]!;
          if (now >= born + (fresh - born) * p.refreshAhead) this.#startRefresh(ns, key, p, fn, self, args, now);
        }
        return Promise.resolve(part.values[idx]);
      }
      if (p.background && (flags & REVALIDATE) === 0 && now < fresh + Math.min(part.maxStale[idx]!, p.maxStale)) {
        part.flags[idx] = flags | VISITED;
        this.report.staleHit(ns.label, key, "background", 1);
        this.#startRefresh(ns, key, p, fn, self, args, now);
        return Promise.resolve(part.values[idx]);
      }
    }
    return this.#load(ns, key, p, fn, self, args, known);
  }

  /**
   * getOrSetMany (and cachedBatch): the answers in key order — a value, or a `Later` for a key
   * that takes getOrSet's way. One pass over L1: fresh hits are answered at once; keys that
   * getOrSet would not send straight to L2 (a flight to join, a throttled fallback, a stale value
   * to serve while it refreshes, a refresh ahead) take getOrSet's way; the rest are read from L2
   * in one multi-key read (`RemoteLayer.readMany`) with no flight, promise or timer per key. A key
   * found fresh there fills L1 unless an invalidation fenced it while the read ran (`BulkRead`);
   * every other key takes getOrSet's way with that read — its flight does not read L2 again.
   * Keys that need the loader go to ONE `loadMany` call (`LoadBatch`). With tracing on (the
   * getOrSet channel), every key takes getOrSet's way, traced as one.
   */
  readMany(ns: Namespace, keys: readonly string[], p: Policy, loadMany: LoadMany<unknown>): Promise<unknown[]> {
    if (!this.opened) return this.life.afterOpen(() => this.readMany(ns, keys, p, loadMany));
    const out: unknown[] = new Array(keys.length);
    let batch: LoadBatch<unknown> | undefined;
    // A key that takes getOrSet's way, its loader joining the batch (`known`: its L2 read, done already).
    const single = (i: number, known?: Known): void => {
      const key = keys[i]!;
      const fn = (batch ??= new LoadBatch(loadMany)).loaderFor(key, i);
      out[i] = new Later(known === undefined ? this.read(ns, key, p, fn, undefined, undefined) : this.#read(ns, key, p, fn, undefined, undefined, known));
      const f = ns.flights?.get(key);
      if (f !== undefined && f.fn === fn) f.onDone = batch.expect(key);
    };
    const begin = (): unknown[] => {
      batch?.begin();
      return out;
    };
    const traced = channels.getOrSet.hasSubscribers;
    let cold: number[] | undefined;
    const part = ns.part;
    const now = this.clock.now();
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const idx = traced ? undefined : ns.slots.get(key);
      if (idx !== undefined && (part.flags[idx]! & REVALIDATE) === 0) {
        const fresh = part.fresh[idx]!;
        if (now < fresh && p.refreshAhead === 0) {
          part.flags[idx]! |= VISITED;
          this.report.hit(ns.label, key, "l1", 1);
          out[i] = part.values[idx];
          continue;
        }
        // A refresh ahead, or a stale value to serve while it refreshes: getOrSet's way.
        if (now < fresh || (p.background && now < fresh + Math.min(part.maxStale[idx]!, p.maxStale))) {
          single(i);
          continue;
        }
      }
      if (traced || this.remote === undefined || ns.flights?.has(key) || ns.throttles?.has(key)) single(i);
      else (cold ??= []).push(i);
    }
    if (cold === undefined) return Promise.resolve(begin());
    return this.#readCold(ns, keys, p, cold, out, single).then(begin, (error: unknown) => {
      // Only a bug gets here: the loads already started must still get their loadMany call, and
      // their outcomes, which nobody will read now, must not become unhandled rejections.
      begin();
      for (const r of out) if (r instanceof Later) r.promise.catch(() => {});
      throw error;
    });
  }

  /** `readMany`'s keys that go to L2 (`cold`, indices into `keys`): hits answered, the rest handed on to getOrSet's way. */
  #readCold(ns: Namespace, keys: readonly string[], p: Policy, cold: number[], out: unknown[], single: (i: number, known?: Known) => void): Promise<void> {
    return this.#bulkRead(ns, keys, cold, this.#tagsToRead(ns, p), p.tags, (i, key, found, bulk, now) => {
      // An invalidation while the read ran: nothing read for the key may be used (getOrSet's way reads L2 again).
      if (found === null || bulk.fenced(ns, key)) return single(i);
      const e = found?.entry;
      if (e !== undefined && now < e.times.fresh && !tagFenced(ns, e.tags, bulk.tagSeq)) {
        this.#fillL1(ns, key, e);
        this.report.hit(ns.label, key, "l2", 1);
        out[i] = e.value;
        return;
      }
      single(i, { found, started: bulk.started, tagSeq: bulk.tagSeq });
    });
  }

  /**
   * One multi-key L2 read of the keys `keys[i]`, i in `cold`, fenced per key while it runs
   * (`BulkRead`: `declared` are the tags of the loads it stands for). `take` gets each key's read
   * — undefined: L2 unreachable; null: not read (a bug stopped the read) — while the fences still
   * hold, and `now`.
   */
  async #bulkRead(
    ns: Namespace,
    keys: readonly string[],
    cold: number[],
    tags: readonly string[] | undefined,
    declared: readonly string[] | undefined,
    take: (i: number, key: string, found: RemoteRead | undefined | null, bulk: BulkRead, now: number) => void,
  ): Promise<void> {
    const bulk = new BulkRead(this.#tagSeq, ns.fenceSeq, declared, this.clock.now());
    (ns.bulkReads ??= new Set()).add(bulk);
    ns.started();
    let reads: (RemoteRead | undefined)[] | undefined;
    try {
      reads = await this.remote!.readMany(
        ns,
        cold.map((i) => keys[i]!),
        tags,
      );
    } catch (error) {
      this.report.note(undefined, "error", "internalError", { scope: ns.label, err: error }, "layercache: internal error during a bulk L2 read");
    }
    try {
      const now = this.clock.now();
      for (let j = 0; j < cold.length; j++) take(cold[j]!, keys[cold[j]!]!, reads === undefined ? null : reads[j], bulk, now);
    } finally {
      ns.endBulkRead(bulk);
      ns.ended();
    }
  }

  /** No usable value in L1: join the key's flight, serve a throttled fallback, or start a load. */
  #load(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined, known?: Known): Promise<unknown> {
    const running = ns.flights?.get(key);
    if (running !== undefined) {
      if (running.answer === "early") {
        // It answered early with a held value and goes on loading: that answer, while its window lasts.
        if (this.clock.now() < running.staleUntil || sabotage.staleJoin) {
          this.report.staleHit(ns.label, key, running.earlyReason!, 1);
          return running.promise;
        }
        // Past that window the held value is too old for anybody (SPEC 4.2): wait for the load itself.
        this.report.miss(ns.label, key, 1);
        this.#waitFor(running);
        return running.joinLate();
      }
      // Before its L2 read tells hit from miss, the caller is counted with the others there.
      if (running.phase === "loading") this.report.miss(ns.label, key, 1);
      running.callers++;
      this.#waitFor(running);
      return running.promise;
    }
    if (ns.throttles !== undefined) {
      const throttled = this.#throttledFallback(ns, key, p);
      if (throttled !== undefined) {
        this.report.staleHit(ns.label, key, "failSafe", 1);
        return Promise.resolve(throttled.value);
      }
    }
    const f = this.#flight(ns, key, p, known?.started ?? this.clock.now(), fn, self, args);
    if (known !== undefined) f.tagSeq = known.tagSeq;
    f.callers = 1;
    f.waited = true;
    this.life.track(this.#run(f, known));
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
    f.tagSeq = this.#tagSeq;
    ns.started(); // until #run ends
    (ns.flights ??= new Map()).set(key, f);
    this.#flights.add(f);
    return f;
  }

  /** Starts a background refresh unless one is running, the key is cooling down, or the pool is full. */
  #startRefresh(ns: Namespace, key: string, p: Policy, fn: Function, self: unknown, args: unknown[] | undefined, now: number): void {
    if (ns.flights?.has(key)) return;
    if (!this.#pool.acquire(ns, key, now)) return;
    const f = this.#flight(ns, key, p, now, fn, self, args);
    f.kind = "refresh";
    const trace = channels.refresh;
    this.life.track(trace.hasSubscribers ? trace.tracePromise(this.#run, { cache: this.id, scope: ns.label, key }, this, f) : this.#run(f));
  }

  /** One flight from start to end. Never rejects: every outcome settles the flight. */
  async #run(f: Flight, known?: Known): Promise<void> {
    const { ns, key, policy: p } = f;
    try {
      let held = this.#heldInL1(ns, key, p, f.started);
      if (this.remote !== undefined) {
        const found = known !== undefined ? known.found : await this.remote.read(ns, key, this.#tagsToRead(ns, p));
        if (found !== undefined) {
          f.gen = found.gen;
          f.tagGens = found.tagGens;
          const e = found.entry;
          if (e !== undefined && f.accepts(found.gen) && !tagFenced(ns, e.tags, f.tagSeq)) {
            const now = this.clock.now();
            const t = e.times;
            // Another instance loaded it (a refresh only adopts a value newer than the one it replaces).
            if (now < t.fresh && (f.kind === "load" || held === undefined || t.born > held.born)) {
              this.#fillL1(ns, key, e);
              this.report.hit(ns.label, key, "l2", f.callers);
              this.#finish(f, "value", e.value, true);
              return;
            }
            const inL2 = heldValue(e.value, t, p, now, e);
            if (inL2 !== undefined && (held === undefined || inL2.born > held.born)) held = inL2;
            if (f.kind === "load" && p.background && inL2 !== undefined && now < inL2.staleEnd) {
              // L1 had nothing usable but L2 holds a value in its stale window: serve it, refresh behind it.
              this.#fillL1(ns, key, e);
              this.report.staleHit(ns.label, key, "background", f.callers);
              f.answerEarly(e.value, "background", inL2.staleEnd);
              if (!this.#pool.acquire(ns, key, now)) return;
              f.kind = "refresh";
              f.waited = false; // a refresh now: nobody waits for it, unless a caller joins late
            }
          }
        }
      }
      // A refresh invalidated while it read L2, with nobody waiting for it, has nothing left to do.
      // (Callers who joined after its early answer wait for its own outcome: it loads for them.)
      if (!f.clean && !f.awaited) return;
      // Distributed single flight: take the key's lease, or wait for the instance holding it.
      if (this.settings.lock !== undefined && f.gen !== undefined && f.clean) {
        if (await this.#awaitLease(f)) return;
        if (!f.clean && !f.awaited) return;
      }
      this.report.miss(ns.label, key, f.answer === "none" ? f.callers : 0);
      f.phase = "loading";
      await this.#callLoader(f, held);
    } catch (error) {
      // Only a bug gets here; the callers still get an answer.
      this.report.note(undefined, "error", "internalError", { key, scope: ns.label, err: error }, "layercache: internal error during a load");
      this.#finish(f, "error", error);
    } finally {
      this.#done(f);
      if (f.lease !== undefined) this.life.track(this.remote!.releaseLease(ns, key, f.lease));
      // Nothing more to write; a scope that holds nothing any more is reclaimed.
      ns.ended();
    }
  }

  /**
   * Distributed single flight (SPEC 10). Takes the key's lease in L2, or — while another instance
   * holds it — waits for that instance's value: woken by its "update" message or re-reading L2
   * every `poll`, and trying the lease again each time (a holder that died lets it expire), for
   * `wait` at most. True when the flight was answered with a value another instance loaded; false
   * when it should load itself (it holds the lease, the wait is over, L2 is unreachable, or an
   * invalidation fenced it).
   */
  async #awaitLease(f: Flight): Promise<boolean> {
    const lock = this.settings.lock!;
    const remote = this.remote!;
    const { ns, key } = f;
    const deadline = this.clock.now() + lock.waitMs;
    for (;;) {
      const got = await remote.lease(ns, key, lock.leaseMs);
      if (got === undefined) return false;
      if (got === null) {
        const now = this.clock.now();
        if (now >= deadline || !f.clean) return false;
        await this.#leaseWait(f, Math.min(lock.pollMs, deadline - now));
        if (!f.clean) return false;
      } else f.lease = got; // given back when the flight ends
      // Read again: with the lease, because the previous holder may have written and let it go
      // since this flight last read L2 (one loader call per value across the fleet); without it,
      // to see whether the holder's value has come.
      const found = await remote.read(ns, key, this.#tagsToRead(ns, f.policy));
      if (found === undefined) return false;
      const e = found.entry;
      if (e !== undefined && f.accepts(found.gen) && !tagFenced(ns, e.tags, f.tagSeq) && this.clock.now() < e.times.fresh) {
        this.#fillL1(ns, key, e);
        this.report.hit(ns.label, key, "l2", f.answer === "early" ? f.lateCallers : f.callers);
        this.#finish(f, "value", e.value, true);
        return true;
      }
      // Our own load, if it comes to that, writes back over what is there now.
      f.gen = found.gen;
      f.tagGens = found.tagGens;
      if (f.lease !== undefined) return false;
    }
  }

  /** Waits `ms`, or until a peer's message says the key's value is in L2. */
  #leaseWait(f: Flight, ms: number): Promise<void> {
    const { ns, key } = f;
    return new Promise((resolve) => {
      const all = (ns.leaseWaits ??= new Map());
      const waits = all.get(key) ?? new Set();
      all.set(key, waits);
      const wake = (): void => {
        this.clock.clearTimeout(timer);
        waits.delete(wake);
        if (waits.size === 0 && ns.leaseWaits?.get(key) === waits) ns.leaseWaits!.delete(key);
        resolve();
      };
      waits.add(wake);
      // A caller awaits this flight: the timer keeps the process alive (a refresh alone does not).
      const timer = this.clock.setTimeout(wake, ms, !f.waited);
    });
  }

  /**
   * Detaches a finished flight (before its callers are answered, so that a caller who reads again
   * at once starts a new load rather than joining this one) and frees its refresh-pool place.
   */
  #done(f: Flight): void {
    if (f.phase === "done") return;
    f.phase = "done";
    const flights = f.ns.flights;
    if (flights?.get(f.key) === f) flights.delete(f.key);
    this.#flights.delete(f);
    f.onDone?.();
    if (f.kind === "refresh") this.#pool.release();
  }

  /**
   * The one place a flight ends: detached (`#done`), a refresh that brought a value counted, and
   * whoever still waits answered — with the value, or the error.
   */
  #finish(f: Flight, outcome: "value" | "error", result: unknown, refreshed = false): void {
    if (refreshed && f.kind === "refresh" && f.phase !== "done") this.#pool.succeeded(f.ns, f.key);
    this.#done(f);
    if (outcome === "value") f.settle(result);
    else f.fail(result);
  }

  async #callLoader(f: Flight, held: Held | undefined): Promise<void> {
    const { ns, key, policy: p } = f;
    this.report.fact("load", { key, scope: ns.label });
    const trace = channels.load;
    let outcome = trace.hasSubscribers ? trace.tracePromise(f.invoke, { cache: this.id, scope: ns.label, key, kind: f.kind }, f, held?.value) : f.invoke(held?.value);
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
    if (held !== undefined && p.softTimeout > 0 && f.answer === "none") {
      // The held value answers only while a window allows it: its stale window or its fail-safe window.
      const until = Math.max(held.staleEnd, held.safeEnd);
      f.softTimer = this.clock.setTimeout(
        () => {
          // An invalidation while the loader ran makes the held value unservable.
          // Nobody waits (a refresh started by a stale read): there is nobody to answer early.
          if (f.answer !== "none" || !f.clean || !f.waited || this.clock.now() >= until) return;
          this.report.staleHit(ns.label, key, "softTimeout", f.callers);
          f.answerEarly(held.value, "softTimeout", until);
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
    // A refresh still running (one aborted at close has ended already).
    const refresh = f.kind === "refresh" && f.phase !== "done";
    this.#done(f);
    this.report.fact("loadError", { key, scope: ns.label, error });
    if (refresh) {
      this.#pool.failed(ns, key, error, now);
    }
    if (held !== undefined && now < held.safeEnd && f.clean) {
      if (!refresh) {
        // Throttle: a down backend is not called again on every read while the fallback is served.
        if (held.remote !== undefined && !tagFenced(ns, held.remote.tags, f.tagSeq)) this.#fillL1(ns, key, held.remote);
        stamp((ns.throttles ??= new Map()), key, now + this.settings.refreshCooldown, now);
        this.report.note(undefined, "warn", "failSafe", { key, scope: ns.label, err: error }, "layercache: load failed; serving the fail-safe value");
      }
      // Those still waiting: every caller, or after an early answer the late joiners.
      const waiting = f.answer === "early" ? f.lateCallers : f.callers;
      if (waiting > 0) {
        this.report.staleHit(ns.label, key, "failSafe", waiting);
      }
      this.#finish(f, "value", held.value);
      return;
    }
    this.#finish(f, "error", error);
  }

  /** Writes a loaded value back: L2 first (conditional on the generation seen), then L1, then peers. */
  async #commit(f: Flight, value: unknown): Promise<void> {
    const { ns, key } = f;
    // The options the value is written with: the call's, or what the loader set (`setOptions`).
    const p = f.written ?? f.policy;
    if (value === undefined || f.uncached) {
      // Documented: `undefined` is returned but never cached; nor is a value the loader said not to cache.
      this.#finish(f, "value", value, true);
      return;
    }
    const tags = p.tags;
    if (!f.clean || tagFenced(ns, tags, f.tagSeq)) return this.#discard(f, value, "invalidated");
    const now = this.clock.now();
    const times = this.#times(p, now);
    let bytes = 0;
    let published = false;
    // The conditional write is only trustworthy while L2 still remembers the generation the load saw.
    let gen: string | undefined;
    if (this.remote !== undefined && f.gen !== undefined && now - f.started < GENERATION_MEMORY_MS) {
      const enc = this.#encodeForL2(ns, key, value);
      if (enc instanceof SerializationError) {
        // An unserializable loaded value stays in L1 only, reported as an L2 error.
        this.report.fact("l2Error", { operation: "serialize", key, scope: ns.label, error: enc }, { message: "layercache: value kept in L1 only" });
      } else {
        bytes = enc.bytes;
        // A tagged value goes to L2 only with the generations its tags had before it was loaded.
        const snapshot = tags === undefined ? undefined : await this.#loadSnapshot(f, tags);
        if (!enc.tooLarge && snapshot !== null) {
          // A load keeps the generation it saw: concurrent loads of one value do not conflict. Under a
          // lease it takes a new one: a holder that outlived its lease cannot overwrite the next one's value.
          gen = f.gen === "" || f.lease !== undefined ? this.#newGen() : f.gen;
          const result = await this.remote.put(ns, key, enc, times, gen, f.gen, snapshot);
          if (result === "conflict") return this.#discard(f, value, "conflict");
          published = result === "written";
        }
      }
      if (!f.clean || tagFenced(ns, tags, f.tagSeq)) return this.#discard(f, value, "invalidated");
    }
    this.#writeL1(ns, key, value, times, bytes, tags);
    ns.throttles?.delete(key);
    ns.cooldowns?.delete(key);
    // With an L2, peers drop their older copies and re-read it; without one, each instance owns its copy.
    if (published && this.link !== undefined) this.life.track(this.link.publish("update", ns.path, [key], gen));
    this.#finish(f, "value", value, true);
  }

  /**
   * The tag generations a loaded value is written to L2 with, or null: not to L2 (L1 only). Tags
   * the call declared were read with the key, before the loader ran; a tag without a record then
   * gets one now, unless somebody wrote it meanwhile (it may have been invalidated while the loader
   * ran). Tags first named by the loader (`setOptions`) are read now and count only if the scope's
   * tag epoch — read with the key — did not change since (no `removeByTag` in the scope while the
   * loader ran); the epoch is read by loads of scopes whose loaders have named tags that way.
   */
  async #loadSnapshot(f: Flight, tags: readonly string[]): Promise<TagSnapshot | null> {
    const { ns } = f;
    const remote = this.remote!;
    const seen = f.tagGens;
    const gens = new Map<string, string>();
    const late: string[] = [];
    for (const t of tags) {
      const g = seen?.get(t);
      if (g === undefined) late.push(t);
      else gens.set(t, g);
    }
    if (late.length > 0) {
      ns.lateTags = true;
      const epoch = seen?.get("");
      if (epoch === undefined) return null;
      const now = await remote.tagGenerations(ns, late);
      // The epoch is read after the tags: a tag invalidated before they were read moved it first.
      const after = now && (await remote.tagGenerations(ns, [""]));
      if (now === undefined || after === undefined || after.get("") !== epoch) return null;
      for (const [t, g] of now) gens.set(t, g);
    }
    return (await remote.tagSnapshot(ns, gens, false)) ?? null;
  }

  /** Tags a load reads with its key: the declared ones, and the scope's tag epoch ("") once its loaders name tags of their own. */
  #tagsToRead(ns: Namespace, p: Policy): readonly string[] | undefined {
    if (!ns.lateTags) return p.tags;
    return p.tags === undefined ? [""] : [...p.tags, ""];
  }

  #discard(f: Flight, value: unknown, reason: "invalidated" | "conflict"): void {
    this.report.fact("loadDiscarded", { key: f.key, scope: f.ns.label, reason });
    this.#finish(f, "value", value);
  }

  /**
   * Serializes a value for L2 (a `set`'s or a load's). A value too large for L2 — over
   * `maxValueBytes`, or over what the store's record limit leaves — is reported here and kept out
   * of L2 by the caller; it never reaches the store, so it never counts as a failure of it.
   */
  #encodeForL2(ns: Namespace, key: string, value: unknown): Encoded | SerializationError {
    const remote = this.remote!;
    try {
      const enc = remote.encode(key, value);
      if (enc.tooLarge) this.#tooLarge(ns, key, enc.bytes, remote.maxPayloadBytes, "l2");
      return enc;
    } catch (error) {
      return error as SerializationError;
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
    if (!this.opened) await this.life.afterOpen(async () => {});
    if (value === undefined) throw new TypeError(`layercache: cannot set key ${JSON.stringify(key)} to undefined (use remove, or null)`);
    invalidateKey(ns, key, false);
    const times = this.#times(p, this.clock.now());
    const tags = p.tags;
    let enc: Encoded | undefined;
    let failure: SerializationError | undefined;
    if (this.remote !== undefined) {
      const encoded = this.#encodeForL2(ns, key, value);
      if (encoded instanceof SerializationError) failure = encoded;
      else enc = encoded;
    }
    const seq = this.#tagSeq;
    this.#writeL1(ns, key, value, times, enc?.bytes ?? 0, tags);
    // A value L2 cannot hold still replaces the old one there: peers must not re-read an outdated value.
    const gen = enc !== undefined && !enc.tooLarge ? this.#newGen() : undefined;
    const remote = this.remote;
    const put = async (): Promise<unknown> => {
      ns.started(); // a removeByTag while the tags are read leaves a fence for the check below
      try {
        const gens = await remote!.tagGenerations(ns, tags!);
        const snapshot = gens && (await remote!.tagSnapshot(ns, gens, true));
        // Tags whose generations could not be read (no value in L2 without them), or a removeByTag
        // here while they were read (the value it removed must not reach L2, and neither may the
        // one this set replaced, which L1 dropped already): L2 gets the removal.
        if (snapshot === undefined || tagFenced(ns, tags, seq)) return await remote!.remove(ns, key);
        return await remote!.put(ns, key, enc!, times, gen!, undefined, snapshot);
      } finally {
        ns.ended();
      }
    };
    const toL2 = () =>
      remote === undefined ? undefined : gen === undefined ? remote.remove(ns, key) : tags === undefined ? remote.put(ns, key, enc!, times, gen) : put();
    // Peers whose load or read finds this very record in L2 (generation `gen`) may keep it.
    await this.#invalidateOut(toL2, () => this.link?.publish("remove", ns.path, [key], gen), tags === undefined && this.#atOnce(ns, key));
    if (failure) throw failure;
  }

  async remove(ns: Namespace, key: string): Promise<void> {
    if (!this.opened) await this.life.afterOpen(async () => {});
    invalidateKey(ns, key, true);
    await this.#invalidateOut(
      () => this.remote?.remove(ns, key),
      () => this.link?.publish("remove", ns.path, [key]),
      this.#atOnce(ns, key),
    );
  }

  /** Whether an L2 write of `key` asked for now is sent at once — not held back behind an earlier write of the key, which a message sent with it would overtake. */
  #atOnce(ns: Namespace, key: string): boolean {
    return this.remote === undefined || this.remote.writesAtOnce(ns, key);
  }

  /**
   * L2 first, then the bus: a peer that drops its copy and re-reads L2 must find the new state.
   * On one order-keeping connection both are sent back to back; otherwise the bus waits for L2.
   * `oneStep`: `toL2` sends its writes to the store before it returns.
   */
  async #invalidateOut(toL2: () => Promise<unknown> | undefined, toBus: () => Promise<void> | undefined, oneStep: boolean): Promise<void> {
    // Back to back only when the L2 write is sent at once: one that reads first (tags), or waits for an earlier write of its key, must land before the message.
    if (this.#ordered && oneStep) {
      const l2 = toL2();
      await Promise.all([l2, toBus()]);
      return;
    }
    // The caller waits one timeout at most in all: what the L2 write used is not waited again for
    // the bus — a publish still under way then finishes (or is queued) in the background.
    const started = this.clock.now();
    await toL2();
    const bus = toBus();
    if (bus === undefined) return;
    const left = this.#invalidateBudget() - (this.clock.now() - started);
    if (left === Infinity) return bus;
    if (left <= 0) return this.life.track(bus);
    let timer: unknown;
    const budget = new Promise<void>((resolve) => (timer = this.clock.setTimeout(resolve, left)));
    await Promise.race([bus, budget]);
    this.clock.clearTimeout(timer);
    this.life.track(bus);
  }

  /** The longest an invalidation keeps its caller: the longer of the L2 and bus timeouts (0: no bound). */
  #invalidateBudget(): number {
    const l2 = this.remote?.timeoutMs ?? 0;
    const bus = this.link?.timeoutMs ?? 0;
    return l2 > 0 && bus > 0 ? Math.max(l2, bus) : Infinity;
  }

  async clear(ns: Namespace): Promise<void> {
    if (!this.opened) await this.life.afterOpen(async () => {});
    invalidateScope(ns, true);
    await this.link?.publish("clear", ns.path, []);
  }

  /**
   * Invalidates every entry of scope `ns` carrying one of `tags`: here (L1, and loads in flight
   * that would write such a value), in L2 (each tag's record gets a new generation, which every
   * tagged value written before no longer matches), then on peers.
   */
  async removeByTag(ns: Namespace, tags: readonly string[]): Promise<void> {
    if (!this.opened) await this.life.afterOpen(async () => {});
    // Fences for what is running here are kept while it runs (see Namespace.running).
    invalidateTags(ns, tags, ++this.#tagSeq);
    const remote = this.remote;
    await this.#invalidateOut(
      remote === undefined ? () => undefined : () => Promise.all(tags.map((t) => remote.invalidateTag(ns, t))),
      () => this.link?.publish("tag", ns.path, [...tags]),
      false,
    );
  }

  /** Removes several keys: L1 here, L2 (in parallel), then one bus message for all of them. */
  async removeMany(ns: Namespace, keys: readonly string[]): Promise<void> {
    if (!this.opened) await this.life.afterOpen(async () => {});
    for (const key of keys) invalidateKey(ns, key, true);
    const remote = this.remote;
    await this.#invalidateOut(
      remote === undefined ? () => undefined : () => Promise.all(keys.map((k) => remote.remove(ns, k))),
      () => this.link?.publish("remove", ns.path, [...keys]),
      keys.every((k) => this.#atOnce(ns, k)),
    );
  }

  removeLocal(ns: Namespace, key: string): void {
    invalidateKey(ns, key, true);
  }

  clearLocal(ns: Namespace): void {
    invalidateScope(ns, true);
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
    this.#writeL1(ns, key, e.value, e.times, e.bytes, e.tags);
  }

  #writeL1(ns: Namespace, key: string, value: unknown, times: EntryTimes, bytes: number, tags?: readonly string[]): void {
    const part = ns.part;
    const size = part.sizes === undefined ? 0 : bytes > 0 ? bytes : this.#measure(value);
    if (part.write(ns, key, value, times, size, tags) < 0) this.#tooLarge(ns, key, size, part.maxBytes, "l1");
    else if (tags !== undefined) ns.tag(key, tags);
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

  stats(): Stats {
    let entries = 0;
    let bytes = 0;
    let evictions = 0;
    for (const part of partitionsOf(this.root)) {
      entries += part.size;
      bytes += part.bytes;
      evictions += part.evictions;
    }
    return {
      ...this.report.counters,
      evictions,
      entries,
      bytes,
      refreshing: this.#pool.running,
      l2Pending: this.remote?.pending ?? 0,
      busPending: this.link?.pending ?? 0,
    };
  }

  #tooLarge(ns: Namespace, key: string, bytes: number, limit: number, layer: HitLayer): void {
    this.report.fact("valueTooLarge", { key, scope: ns.label, bytes, limit, layer });
  }
}
