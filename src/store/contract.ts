/**
 * The contract an L2 backend implements. It stores opaque text records written by layercache
 * (see `envelope.ts`); the only part of a record a backend reads is its generation, which the
 * conditional write compares.
 */
export interface L2Store {
  /** Opens connections; called once, by `cache.ready()` or the first operation. */
  connect?(): Promise<void>;
  /** The stored record, or null/undefined when there is none. */
  get(key: string): Promise<string | null | undefined>;
  /**
   * Optional: several records in one call (same order as `keys`). When present, the reads of one
   * tick are batched through it — one round trip, one timeout and one breaker check per batch.
   */
  getMany?(keys: string[]): Promise<(string | null | undefined)[]>;
  /**
   * Stores `record` under `key`, expiring after `ttlMs` (`Infinity`: never); the result says
   * whether it was written. With `ifGeneration` (a load's write-back) the write happens only when
   * the stored record's generation equals it (`""` meaning "no record"), atomically — see
   * `generationOf` in store/envelope.ts. Without it the write is unconditional.
   */
  set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean>;
  /** Releases what the store opened itself (never a client the user passed in). */
  close?(): Promise<void>;
  /** How the cache guards calls to this store (defaults below apply to any field left out). */
  readonly resilience?: L2Resilience;
  /**
   * The client object this store sends on, when it was given one. When the bus publishes on the
   * very same object (`Bus.connection`) and both write their commands in call order, an
   * invalidation's L2 write and its bus message are sent back to back — the server still runs them
   * in order — instead of waiting a round trip in between.
   */
  readonly connection?: object;
}

export interface L2Resilience {
  /** An operation taking longer counts as failed; `0` disables. Default 1000 ms. */
  timeoutMs?: number;
  /** Consecutive failures that open the circuit breaker; `0` disables it. Default 3. */
  breakerThreshold?: number;
  /** How long the breaker stays open before one probe call is let through. Default 5000 ms. */
  breakerCooldownMs?: number;
}

export const RESILIENCE_DEFAULTS: Required<L2Resilience> = { timeoutMs: 1000, breakerThreshold: 3, breakerCooldownMs: 5000 };
