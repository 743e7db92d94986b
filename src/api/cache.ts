import { toTimerClock } from "../shared/clock.js";
import { Engine } from "../core/engine.js";
import type { CacheEventListener, CacheEventName, Stats } from "../telemetry/events.js";
import { checkOptionNames, parseBounds, parseCacheSettings, parseEntryLayer, toPolicy, type CacheOptions } from "./options.js";
import { CacheScope, ScopeCore } from "./scope.js";
import { jsonSerializer } from "../l2/serializer.js";
import type { Logger } from "../telemetry/logger.js";

/**
 * A multi-tier cache: L1 in this process, an optional shared L2, an optional invalidation bus.
 * It is the root scope: every method of `CacheScope` works on keys outside any named scope.
 */
export class LayerCache extends CacheScope {
  readonly #engine: Engine;

  constructor(options?: CacheOptions) {
    const o = checkOptionNames(options, "cache");
    const settings = parseCacheSettings(o);
    const policy = toPolicy(parseEntryLayer(o));
    const engine = new Engine({
      settings,
      bounds: parseBounds(o),
      clock: toTimerClock(o.clock as CacheOptions["clock"]),
      logger: o.logger as Logger | undefined,
      serializer: (o.serializer as CacheOptions["serializer"]) ?? jsonSerializer,
      store: o.l2 as CacheOptions["l2"],
      bus: o.bus as CacheOptions["bus"],
    });
    // Scopes that hold nothing are reclaimed; expired cooldowns and throttles do not count (SPEC 1.1).
    engine.root.useClock(engine.clock);
    super(new ScopeCore(engine, engine.root, policy));
    this.#engine = engine;
  }

  /** This instance's id, as peers see it in bus messages. */
  get instanceId(): string {
    return this.#engine.id;
  }

  /** Opens L2 and bus connections now (otherwise the first operation does). Never rejects for a down server: the cache then runs degraded. */
  ready(): Promise<void> {
    return this.#engine.open();
  }

  /** Stops the bus, waits (up to 5 s) for background work, and releases connections the cache opened. */
  close(): Promise<void> {
    return this.#engine.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Counters since creation, plus the current L1 size. */
  stats(): Stats {
    return this.#engine.stats();
  }

  on<E extends CacheEventName>(event: E, listener: CacheEventListener<E>): this {
    this.#engine.report.emitter.on(event, listener);
    return this;
  }

  off<E extends CacheEventName>(event: E, listener: CacheEventListener<E>): this {
    this.#engine.report.emitter.off(event, listener);
    return this;
  }

  once<E extends CacheEventName>(event: E, listener: CacheEventListener<E>): this {
    const wrapped: CacheEventListener<E> = (payload) => {
      this.off(event, wrapped);
      listener(payload);
    };
    return this.on(event, wrapped);
  }
}
