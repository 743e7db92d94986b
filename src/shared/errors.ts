/**
 * Errors thrown by layercache. Bad input (keys, options, values) is reported with the built-in
 * `TypeError` so that `instanceof TypeError` works as users expect; everything else derives from
 * `LayerCacheError` and carries a stable `code`.
 */

export class LayerCacheError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The loader ran longer than `hardTimeout`; its `signal` was aborted with this error. */
export class LoadTimeoutError extends LayerCacheError {
  readonly key: string;
  readonly timeoutMs: number;
  constructor(key: string, timeoutMs: number) {
    super("ELAYERCACHE_TIMEOUT", `layercache: loader for key ${preview(key)} exceeded hardTimeout (${timeoutMs} ms)`);
    this.key = key;
    this.timeoutMs = timeoutMs;
  }
}

/** The L2 serializer could not encode (or decode) a value. */
export class SerializationError extends LayerCacheError {
  readonly key: string;
  constructor(key: string, cause: unknown) {
    super(
      "ELAYERCACHE_SERIALIZE",
      `layercache: value of key ${preview(key)} cannot be serialized for L2: ${cause instanceof Error ? cause.message : preview(cause)}`,
      { cause },
    );
    this.key = key;
  }
}

/** An operation was called after `close()`. */
export class CacheClosedError extends LayerCacheError {
  constructor() {
    super("ELAYERCACHE_CLOSED", "layercache: the cache is closed");
  }
}

/** A TypeError whose message starts with the offending option's name. */
export function optionError(option: string, problem: string): TypeError {
  const err = new TypeError(`layercache: option "${option}" ${problem}`);
  (err as TypeError & { option: string }).option = option;
  return err;
}

export function keyError(key: unknown, problem: string): TypeError {
  const err = new TypeError(`layercache: key ${preview(key)} ${problem}`);
  (err as TypeError & { key: unknown }).key = key;
  return err;
}

/** A short printable form of a key or option value for messages (long strings are cut; nothing else is called into). */
export function preview(key: unknown): string {
  if (typeof key !== "string") {
    // Never call into a non-string (its toString may throw or lie): describe it by type.
    if (key === null || key === undefined) return String(key);
    if (typeof key === "number" || typeof key === "boolean") return `${String(key)} (${typeof key})`;
    if (typeof key === "bigint") return `${String(key)}n (bigint)`;
    if (typeof key === "symbol") return `a symbol`;
    return Array.isArray(key) ? "an array" : typeof key === "object" ? "an object" : `a ${typeof key}`;
  }
  return key.length > 64 ? JSON.stringify(key.slice(0, 60)) + `… (${key.length} chars)` : JSON.stringify(key);
}

const RECORD_ERROR_CODE = "ELAYERCACHE_RECORD";

/**
 * A problem with one L2 record, not with the backend: the server answered, but this record cannot be
 * read (a Redis key of another type under a layercache key, for example) or written (a record the
 * backend refuses). An `L2Store` reports it by rejecting `get` or `set` with it, or by placing it in
 * the result array of `getMany` for that key. The cache then treats a read as a corrupt record (a
 * miss; the record is replaced by a tombstone; `l2Corrupt`) and a write as a failed write of that
 * record alone (`l2Error`; a `set` removes the old record instead) — never as a backend failure: it
 * does not count toward the circuit breaker.
 */
export class RecordError extends LayerCacheError {
  /** The store key of the record, when the store names it. */
  readonly key: string | undefined;
  constructor(message: string, options?: { key?: string; cause?: unknown }) {
    super(RECORD_ERROR_CODE, message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.key = options?.key;
  }
}

/** Whether `error` is a RecordError (also one created by another copy of this package, recognized by its code). */
export function isRecordError(error: unknown): error is RecordError {
  return error instanceof RecordError || (error instanceof Error && (error as { code?: unknown }).code === RECORD_ERROR_CODE);
}
