/**
 * The contract an L2 backend implements. It stores opaque text records written by layercache
 * (see `envelope.ts`); the only part of a record a backend reads is its generation — the second
 * `|`-separated field — which the conditional write compares.
 */
export interface L2Store {
  /** Opens connections; called once, by `cache.ready()` or the first operation. */
  connect?(): Promise<void>;
  /** The stored record, or null/undefined when there is none. */
  get(key: string): Promise<string | null | undefined>;
  /**
   * Stores `record` under `key`, expiring after `ttlMs` (`Infinity`: never).
   * With `ifGeneration`, the write happens only when the stored record's generation equals it
   * (`""` meaning "no record"), atomically; the result says whether it was written.
   */
  set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean>;
  /** Releases what the store opened itself (never a client the user passed in). */
  close?(): Promise<void>;
}
