import { Counters, Emitter, type CacheEventName, type CacheEvents, type HitLayer } from "./events.js";
import { LogWriter, type LogLevel, type Logger } from "./logger.js";
import type { TimerClock } from "../shared/clock.js";

/** What a fact adds to besides its event: the counter it counts in, and the log line it writes. */
interface FactSpec {
  counter?: keyof Counters;
  level?: LogLevel;
  message?: string;
}

/** Every fact the cache records through an event, with its counter and log line. */
const FACTS = {
  load: { counter: "loads" },
  loadError: { counter: "loadErrors" },
  loadDiscarded: { counter: "loadsDiscarded" },
  refreshStart: { counter: "refreshStarts" },
  refreshSuccess: { counter: "refreshSuccesses" },
  refreshFailure: { counter: "refreshFailures", level: "warn", message: "layercache: background refresh failed; keeping the stale value" },
  refreshSkipped: { counter: "refreshSkips" },
  valueTooLarge: { counter: "valuesTooLarge" },
  l2Error: { counter: "l2Errors", level: "warn", message: "layercache: L2 operation failed" },
  l2CircuitOpen: { counter: "l2CircuitOpens", level: "error", message: "layercache: L2 circuit opened; reads fall back to L1 and the loader until it recovers" },
  l2CircuitClose: { level: "info", message: "layercache: L2 circuit closed; retrying queued removals" },
  l2Corrupt: { counter: "l2Corrupt", level: "warn", message: "layercache: corrupt L2 record treated as a miss and removed" },
  busError: { counter: "busErrors", level: "warn", message: "layercache: bus operation failed" },
  busDisconnect: { counter: "busDisconnects", level: "warn", message: "layercache: bus subscription lost; invalidations from peers may be missed until it is back" },
  busReconnect: { counter: "busReconnects", level: "info", message: "layercache: bus subscription back; L1 entries will revalidate" },
  busCaughtUp: { counter: "busCatchUps", level: "info", message: "layercache: bus back; it delivered what peers published meanwhile, nothing to revalidate" },
  busMessageDropped: { counter: "busMessagesDropped", level: "warn", message: "layercache: bus message dropped" },
  peerInvalidation: { counter: "peerInvalidations" },
} satisfies { [E in CacheEventName]?: FactSpec };

export type FactName = keyof typeof FACTS;

/** A log line that differs from the fact's usual one. */
export interface LogOverride {
  level?: LogLevel;
  message?: string;
  /** Fields added to the event's own. */
  fields?: object;
}

/**
 * The one place a fact is recorded: its counter (`stats()`), its event (`on(...)`) and its log
 * line, together. The engine and both facades report through it, so observability can grow here —
 * a diagnostics channel, OpenTelemetry — without touching them again. Facts of the read path that
 * happen on every request (hit, miss, stale hit) have methods of their own that build nothing
 * unless somebody listens.
 */
export class Reporter {
  readonly counters = new Counters();
  readonly emitter: Emitter;
  readonly logger: Logger | undefined;
  /** One line per event, failures throttled (see LogWriter). */
  readonly log: LogWriter;

  /** The cache instance's id: diagnostics-channel messages carry it. */
  readonly id: string;

  constructor(logger: Logger | undefined, clock?: TimerClock, id = "") {
    this.logger = logger;
    this.id = id;
    this.log = new LogWriter(logger, clock);
    this.emitter = new Emitter((event, error) => this.log.write("error", "listenerError", { listenerOf: event, err: error }, "layercache: event listener threw"));
  }

  /** Records `name`: counter, log line (as the table says, or as `log` overrides), event. */
  fact<E extends FactName>(name: E, payload: CacheEvents[E], log?: LogOverride): void {
    const spec: FactSpec = FACTS[name];
    if (spec.counter !== undefined) this.counters[spec.counter]++;
    const level = log?.level ?? spec.level;
    if (level !== undefined && this.logger !== undefined) this.log.write(level, name, log?.fields === undefined ? payload : { ...payload, ...log.fields }, log?.message ?? spec.message ?? `layercache: ${name}`);
    if (this.emitter.l[name] !== undefined) this.emitter.emit(name, payload);
  }

  /** A fact with no event of its own: a counter and/or a log line (`event` names its kind in the line). */
  note(counter: keyof Counters | undefined, level: LogLevel | undefined, event: string, fields: object, message: string): void {
    if (counter !== undefined) this.counters[counter]++;
    if (level !== undefined) this.log.write(level, event, fields, message);
  }

  /** `n` callers answered with a fresh value. */
  hit(scope: string, key: string, layer: HitLayer, n: number): void {
    const c = this.counters;
    c.hits += n;
    if (layer === "l2") c.l2Hits += n;
    if (this.emitter.l.hit) for (let i = 0; i < n; i++) this.emitter.emit("hit", { key, scope, layer });
  }

  /** `n` callers found no fresh value. */
  miss(scope: string, key: string, n: number): void {
    this.counters.misses += n;
    if (this.emitter.l.miss) for (let i = 0; i < n; i++) this.emitter.emit("miss", { key, scope });
  }

  /** `n` callers answered with a value past its ttl (a fail-safe answer also counts in `failSafeHits`). */
  staleHit(scope: string, key: string, reason: "background" | "failSafe" | "softTimeout", n: number): void {
    this.counters.staleHits += n;
    if (reason === "failSafe") this.counters.failSafeHits += n;
    if (this.emitter.l.staleHit) for (let i = 0; i < n; i++) this.emitter.emit("staleHit", { key, scope, reason });
  }

  /** A peer's message, and how many entries it dropped here. */
  peerInvalidation(payload: CacheEvents["peerInvalidation"]): void {
    this.counters.peerDropped += payload.dropped;
    this.fact("peerInvalidation", payload);
  }
}
