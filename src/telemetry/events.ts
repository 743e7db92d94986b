
/** Where a fresh value came from. */
export type HitLayer = "l1" | "l2";

export interface KeyEvent {
  /** The key as the user gave it (without scope or prefix). */
  key: string;
  /** Scope path joined with "/" ("" for the cache itself). */
  scope: string;
}

/** Payloads of every event `cache.on(name, listener)` can receive. */
export interface CacheEvents {
  /** A fresh value was returned without running the loader. */
  hit: KeyEvent & { layer: HitLayer };
  /** No fresh value in L1 or L2: a load follows (getOrSet) or `undefined` is returned (get). */
  miss: KeyEvent;
  /** A value past its ttl was returned: inside the background stale window, as a fail-safe fallback, or after a soft timeout. */
  staleHit: KeyEvent & { reason: "background" | "failSafe" | "softTimeout" };
  /** The loader was called. */
  load: KeyEvent;
  /** The loader threw, rejected or timed out. */
  loadError: KeyEvent & { error: unknown };
  refreshStart: KeyEvent;
  refreshSuccess: KeyEvent;
  refreshFailure: KeyEvent & { error: unknown };
  /** A background refresh was not started because the pool was full or the key is cooling down after a failure. */
  refreshSkipped: KeyEvent & { reason: "poolFull" | "cooldown" };
  /** A loaded value was returned to its callers but not cached, because the key was invalidated while it loaded (or L2 holds a newer generation). */
  loadDiscarded: KeyEvent & { reason: "invalidated" | "conflict" };
  /** A value too large for L2 (`maxValueBytes`, or the store's record limit) or for L1 (`maxBytes`) was kept out of that layer; `limit` is the one that applied. */
  valueTooLarge: KeyEvent & { bytes: number; limit: number; layer: HitLayer };
  /** An L2 operation failed (it is retried in the background where that makes sense). */
  l2Error: { operation: string; key?: string; scope?: string; error: unknown };
  /** Consecutive L2 failures opened the circuit breaker: L2 is skipped until a probe succeeds. */
  l2CircuitOpen: Record<string, never>;
  /** A probe succeeded: L2 is used again and queued writes are retried. */
  l2CircuitClose: Record<string, never>;
  /** An L2 payload could not be decoded; it was treated as a miss and removed. */
  l2Corrupt: KeyEvent & { error: unknown };
  /** The bus failed to connect, subscribe or publish. */
  busError: { operation: string; error: unknown };
  /** The bus lost its subscription: peers' invalidations may be missed until it is back. */
  busDisconnect: Record<string, never>;
  /** The bus regained its subscription after a gap; L1 entries written before it revalidate. */
  busReconnect: { entries: number };
  /** A durable bus (Redis Streams) is back and delivered every message published while it was away: no L1 repair needed. */
  busCaughtUp: Record<string, never>;
  /** A peer's message dropped entries here ("update": a peer loaded a newer value into L2; "tag": a peer's `removeByTag`, `keys` being the tags). */
  peerInvalidation: { op: "remove" | "clear" | "update" | "tag"; scope: string; keys: string[]; dropped: number; from: string };
  /** A bus message was malformed, of another version, unsigned or forged, and was ignored. */
  busMessageDropped: { reason: string };
}

export type CacheEventName = keyof CacheEvents;
export type CacheEventListener<E extends CacheEventName> = (payload: CacheEvents[E]) => void;

/** Counters readable through `cache.stats()`. */
export class Counters {
  hits = 0;
  l2Hits = 0;
  misses = 0;
  staleHits = 0;
  failSafeHits = 0;
  loads = 0;
  loadErrors = 0;
  loadsDiscarded = 0;
  refreshStarts = 0;
  refreshSuccesses = 0;
  refreshFailures = 0;
  refreshSkips = 0;
  evictions = 0;
  peerInvalidations = 0;
  peerDropped = 0;
  busMessagesDropped = 0;
  busErrors = 0;
  busDisconnects = 0;
  busReconnects = 0;
  /** Reconnects after which the bus caught up on what it missed (no L1 repair). */
  busCatchUps = 0;
  /** Publishes dropped because too many were waiting for retry (replaced by a clear of everything). */
  busPublishesCollapsed = 0;
  l2Errors = 0;
  /** L2 calls answered at once because the circuit breaker was open (or half-open: a read that draws the probe is answered so too, while the probe goes out in the background). */
  l2ShortCircuits = 0;
  l2CircuitOpens = 0;
  /** Failed L2 writes dropped because too many were waiting for retry. */
  l2WritesDropped = 0;
  l2Corrupt = 0;
  valuesTooLarge = 0;
}

export type Stats = { [K in keyof Counters]: number } & {
  /** Entries in L1 now (fresh or not), across every scope. */
  entries: number;
  /** Bytes counted against `maxBytes` (only measured where a byte bound is set). */
  bytes: number;
  /** Background refreshes running now. */
  refreshing: number;
  /** Failed L2 writes waiting for retry now. */
  l2Pending: number;
  /** Bus messages waiting for retry now. */
  busPending: number;
};

type ListenerTable = { [E in CacheEventName]?: CacheEventListener<E>[] };

/**
 * A small typed emitter. Listeners are called synchronously; one that throws is logged and the
 * cache goes on (an event handler must never break a read).
 */
export class Emitter {
  /** Listener arrays by event; read directly on hot paths (`if (emitter.l.hit)`). */
  readonly l: ListenerTable = Object.create(null);
  readonly #onError: (event: string, error: unknown) => void;

  constructor(onListenerError: (event: string, error: unknown) => void) {
    this.#onError = onListenerError;
  }

  on<E extends CacheEventName>(name: E, listener: CacheEventListener<E>): void {
    if (typeof listener !== "function") throw new TypeError(`layercache: listener for "${String(name)}" must be a function`);
    const list = this.l[name] as CacheEventListener<E>[] | undefined;
    (this.l as Record<string, unknown>)[name] = list ? [...list, listener] : [listener];
  }

  off<E extends CacheEventName>(name: E, listener: CacheEventListener<E>): void {
    const list = this.l[name] as CacheEventListener<E>[] | undefined;
    if (!list) return;
    const rest = list.filter((l) => l !== listener);
    (this.l as Record<string, unknown>)[name] = rest.length > 0 ? rest : undefined;
  }

  emit<E extends CacheEventName>(name: E, payload: CacheEvents[E]): void {
    const list = this.l[name] as CacheEventListener<E>[] | undefined;
    if (!list) return;
    for (const listener of list) {
      try {
        listener(payload);
      } catch (error) {
        this.#onError(name, error);
      }
    }
  }
}
