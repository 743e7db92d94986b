/**
 * The L2 record format (version 1), one line of text:
 *
 *   LC1|<generation>|<bornMs>|<ttlMs>|<maxStaleMs>|<failSafeMs>|<payload>
 *   LC1|<generation>|<bornMs>|-              (tombstone: the key was removed at bornMs)
 *   LC1|<generation>|<bornMs>|<ttlMs>|<maxStaleMs>|<failSafeMs>~<n>|<tags><payload>   (tagged value)
 *
 * - A tagged value carries, as `<tags>` (JSON, `<n>` UTF-16 units long), the pairs
 *   `[tag, tag generation]` seen before its value was produced (see docs/tags.md): it is valid only
 *   while each of those tags' records still holds that generation. The "~" sits in a numeric
 *   field, so a reader from before tags reads such a record as corrupt (a miss), never as a value
 *   without its tags.
 * - The generation changes on every `set` and `remove`. A load writes back only if the
 *   generation it saw when it started is still there: a load that started before an
 *   invalidation cannot resurrect an old value (SPEC 4.4).
 * - `set` and `remove` are unconditional: they always win, whatever record is there, even one
 *   written later (SPEC 8.1). What makes a late write harmless is what is retried: after an outage
 *   only tombstones are written again, never values (see `PendingTombstone` in remote.ts), so a
 *   late retry can at worst remove a newer value — a miss and a reload from the source — and never
 *   bring an old value back. (A `set` held in a client's offline queue and delivered late is
 *   followed on the same connection by the tombstone queued when it timed out.)
 * - bornMs is the write time; readers derive the windows from it. Nothing compares it to decide
 *   which write wins.
 * - Durations are decimal milliseconds, `Infinity` where unbounded. The payload is the
 *   serializer's text, last, so it may contain `|`.
 *
 * A backend's conditional write reads the generation (field 2); anything that is not a readable
 * record — other text, or a key of another type (a Redis hash, say) — has generation "".
 */

export const RECORD_VERSION = "LC1";
const HEAD = RECORD_VERSION + "|";

/** Longest generation (UTF-8 bytes) layercache writes into a record; its own are 24 characters at most. */
export const MAX_GENERATION_BYTES = 128;

/**
 * Most UTF-8 bytes before the payload in a record layercache writes: "LC1|", a generation (at most
 * `MAX_GENERATION_BYTES`), four numbers (at most 24 characters each, as JavaScript prints them) and
 * six "|". A value is stored in L2 only when its payload fits in the store's `maxRecordBytes` less this.
 */
export const RECORD_HEADER_BYTES = 256;

export interface RecordTimes {
  born: number;
  ttl: number;
  maxStale: number;
  failSafe: number;
}

export interface DecodedRecord {
  gen: string;
  born: number;
  /** Absent for a tombstone. */
  times?: RecordTimes;
  payload?: string;
  /** A tagged value's `[tag, generation]` pairs. */
  tags?: TagSnapshot;
}

/** The generation of each tag of a value, as seen before the value was produced. */
export type TagSnapshot = readonly (readonly [tag: string, gen: string])[];

export class CorruptRecordError extends Error {
  constructor(reason: string) {
    super(`corrupt L2 record: ${reason}`);
    this.name = "CorruptRecordError";
  }
}

export function encodeRecord(gen: string, t: RecordTimes, payload: string, tags?: TagSnapshot): string {
  if (tags === undefined || tags.length === 0) return `${HEAD}${gen}|${t.born}|${t.ttl}|${t.maxStale}|${t.failSafe}|${payload}`;
  const text = JSON.stringify(tags);
  return `${HEAD}${gen}|${t.born}|${t.ttl}|${t.maxStale}|${t.failSafe}~${text.length}|${text}${payload}`;
}

function isSnapshot(v: unknown): v is TagSnapshot {
  return Array.isArray(v) && v.length > 0 && v.every((p) => Array.isArray(p) && p.length === 2 && typeof p[0] === "string" && p[0] !== "" && typeof p[1] === "string" && p[1] !== "");
}

export function encodeTombstone(gen: string, born: number): string {
  return `${HEAD}${gen}|${born}|-`;
}

/** The generation of a stored record ("" when unreadable), as conditional writes compare it. */
export function generationOf(record: string): string {
  if (!record.startsWith(HEAD)) return "";
  const end = record.indexOf("|", HEAD.length);
  return end < 0 ? "" : record.slice(HEAD.length, end);
}

/** A non-negative decimal integer read in place (no slicing); anything else goes through Number(). */
function numberAt(text: string, from: number, to: number): number {
  if (to <= from) return NaN;
  let n = 0;
  for (let i = from; i < to; i++) {
    const d = text.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return Number(text.slice(from, to)); // "Infinity", fractions
    n = n * 10 + d;
  }
  return n;
}

/** Parses a record; every L2 read goes through here, so it reads fields in place instead of splitting. */
export function decodeRecord(text: unknown): DecodedRecord {
  if (typeof text !== "string") throw new CorruptRecordError(`not text (${typeof text})`);
  if (!text.startsWith(HEAD)) {
    throw new CorruptRecordError(/^LC\d+\|/.test(text) ? `format version ${text.slice(0, text.indexOf("|"))} is not ${RECORD_VERSION}` : "not a layercache envelope");
  }
  const g = text.indexOf("|", HEAD.length);
  const b = g < 0 ? -1 : text.indexOf("|", g + 1);
  if (b < 0) throw new CorruptRecordError("too few fields");
  const gen = text.slice(HEAD.length, g);
  const born = numberAt(text, g + 1, b);
  if (gen === "" || !Number.isFinite(born)) throw new CorruptRecordError("bad header");
  if (text.length === b + 2 && text.charCodeAt(b + 1) === 45 /* "-" */) return { gen, born }; // tombstone
  const t = text.indexOf("|", b + 1);
  const m = t < 0 ? -1 : text.indexOf("|", t + 1);
  const f = m < 0 ? -1 : text.indexOf("|", m + 1);
  if (f < 0) throw new CorruptRecordError("too few fields");
  // A tagged value: "~<n>" ends the fail-safe field (searched in the field only, never in the payload).
  let tilde = -1;
  for (let i = m + 1; i < f; i++) {
    if (text.charCodeAt(i) === 126 /* "~" */) {
      tilde = i;
      break;
    }
  }
  const times = { born, ttl: numberAt(text, b + 1, t), maxStale: numberAt(text, t + 1, m), failSafe: numberAt(text, m + 1, tilde < 0 ? f : tilde) };
  if (!(times.ttl >= 0) || !(times.maxStale >= 0) || !(times.failSafe >= 0)) throw new CorruptRecordError("bad header");
  if (tilde < 0) return { gen, born, times, payload: text.slice(f + 1) };
  const n = numberAt(text, tilde + 1, f);
  if (!Number.isInteger(n) || n <= 0 || f + 1 + n > text.length) throw new CorruptRecordError("bad tags");
  let tags: unknown;
  try {
    tags = JSON.parse(text.slice(f + 1, f + 1 + n));
  } catch {
    throw new CorruptRecordError("bad tags");
  }
  if (!isSnapshot(tags)) throw new CorruptRecordError("bad tags");
  return { gen, born, times, payload: text.slice(f + 1 + n), tags };
}
