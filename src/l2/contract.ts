import type { RecordError } from "../shared/errors.js";

/**
 * The contract an L2 backend implements. It stores opaque text records written by layercache
 * (see `envelope.ts`); the only part of a record a backend reads is its generation, which the
 * conditional write compares.
 *
 * Failures come in two kinds. A rejection with any error is a failure of the backend: it counts
 * toward the circuit breaker, and enough of them in a row stop every L2 call for a while. A problem
 * of one record while the backend works — a key holding something the store cannot read (a Redis
 * key of another type), a record it refuses to store — is a `RecordError` (exported by
 * `layercache`): `get` and `set` reject with it, `getMany` places it in its result for that key.
 * The cache treats it as a corrupt record on a read (a miss; the record is replaced by a tombstone;
 * `l2Corrupt`) and as a failed write of that record alone on a write (`l2Error`; after a failed
 * `set` the old record is replaced by a tombstone). The server answered, so a `RecordError` counts
 * as a working backend for the breaker: one bad record never takes L2 down for the other keys.
 */
export interface L2Store {
  /** Opens connections; called once, by `cache.ready()` or the first operation. */
  connect?(): Promise<void>;
  /** The stored record, or null/undefined when there is none; rejects with a `RecordError` when that record cannot be read. */
  get(key: string): Promise<string | null | undefined>;
  /**
   * Optional: several records in one call (same order as `keys`). When present, the reads of one
   * tick are batched through it — one round trip, one timeout and one breaker check per batch. A
   * record that cannot be read is a `RecordError` in its place; the other keys are still read. (A
   * `getMany` that rejects with a `RecordError` as a whole makes the cache read the batch again key
   * by key with `get`.)
   */
  getMany?(keys: string[]): Promise<(string | null | undefined | RecordError)[]>;
  /**
   * Stores `record` under `key`, expiring after `ttlMs` (`Infinity`: never); the result says
   * whether it was written. With `ifGeneration` (a load's write-back) the write happens only when
   * the stored record's generation equals it (`""` meaning "no record"), atomically. See
   * `generationOf` in store/envelope.ts: content that is not a readable record has generation `""`,
   * so a write-back that saw a miss replaces it. Without it the write is unconditional and
   * replaces whatever is there. Rejects with a `RecordError` when this record cannot be stored.
   */
  set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean>;
  /** Releases what the store opened itself (never a client the user passed in). */
  close?(): Promise<void>;
  /** How the cache guards calls to this store (defaults below apply to any field left out). */
  readonly resilience?: L2Resilience;
  /**
   * The largest key and record this store accepts. The cache never sends it more: a longer key is
   * mapped to a shorter hashed form, a larger record is not written (its value stays in L1, see
   * `L2Limits`). Leave it out, or leave a field out, for "no limit".
   */
  readonly limits?: L2Limits;
  /**
   * The client object this store sends on, when it was given one (or any object the store and
   * its bus share to say they send in call order, as `PostgresStore` with `PostgresBus({ store })`).
   * When the bus publishes on the very same object (`Bus.connection`) and both write their commands
   * in call order, an invalidation's L2 write and its bus message are handed to them in the same
   * tick, back to back — the server still runs them in order — instead of waiting a round trip in
   * between. (Not when the cache holds the write back behind an earlier write of the same key still
   * under way: then the message waits for the write.)
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

/**
 * Sizes a store cannot take, in **UTF-8 bytes** of the JavaScript strings passed to `get`, `getMany`
 * and `set` (what `Buffer.byteLength(text)` returns). A store that transforms keys or records on the
 * way (base64, a table row's overhead) declares the limit of the text it is given, not of what it
 * sends. The cache keeps within them before calling the store, so a backend's hard limit never
 * shows up as a failure of the backend (nothing counts toward the circuit breaker):
 *
 * - a key longer than `maxKeyBytes` (`<prefix>:<scope>:<key>`, as the store sees it) is replaced by
 *   `<prefix>:<scope>%#<sha256>:<head of the key>`, cut to fit — deterministic, so every instance
 *   with the same limit maps a key the same way, and never equal to an unhashed key ("%#" cannot
 *   appear in an escaped prefix or scope);
 * - a record longer than `maxRecordBytes` (envelope header plus payload; layercache counts the
 *   header as `RECORD_HEADER_BYTES`) is not written: the value stays in L1 only, with a
 *   `valueTooLarge` event, and a `set` leaves a tombstone in place of the old record instead.
 */
export interface L2Limits {
  /** Longest key, in UTF-8 bytes. At least `L2_LIMIT_MINIMUMS.maxKeyBytes`; default: no limit. */
  readonly maxKeyBytes?: number;
  /** Longest record (the whole text given to `set`), in UTF-8 bytes. At least `L2_LIMIT_MINIMUMS.maxRecordBytes`; default: no limit. */
  readonly maxRecordBytes?: number;
}

/** The smallest limits a store may declare: room for a hashed key, and for a tombstone and a small value. */
export const L2_LIMIT_MINIMUMS: Required<L2Limits> = { maxKeyBytes: 64, maxRecordBytes: 1024 };

export const RESILIENCE_DEFAULTS: Required<L2Resilience> = { timeoutMs: 1000, breakerThreshold: 3, breakerCooldownMs: 5000 };
