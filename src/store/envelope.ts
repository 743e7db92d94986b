/**
 * The L2 record format (version 1), one line of text:
 *
 *   LC1|<generation>|<bornMs>|<ttlMs>|<maxStaleMs>|<failSafeMs>|<payload>
 *   LC1|<generation>|<bornMs>|-              (tombstone: the key was removed at bornMs)
 *
 * - The generation changes on every `set` and `remove`. A load writes back only if the
 *   generation it saw when it started is still there: a load that started before an
 *   invalidation cannot resurrect an old value (SPEC 4.4).
 * - bornMs is the write time. A `set` or `remove` never replaces a record written later, so a
 *   write retried after an outage (or stuck in a client's offline queue) cannot undo a newer one.
 * - Durations are decimal milliseconds, `Infinity` where unbounded. The payload is the
 *   serializer's text, last, so it may contain `|`.
 *
 * A backend's conditional write reads the generation (field 2).
 */

export const RECORD_VERSION = "LC1";
const HEAD = RECORD_VERSION + "|";

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
}

export class CorruptRecordError extends Error {
  constructor(reason: string) {
    super(`corrupt L2 record: ${reason}`);
    this.name = "CorruptRecordError";
  }
}

export function encodeRecord(gen: string, t: RecordTimes, payload: string): string {
  return `${HEAD}${gen}|${t.born}|${t.ttl}|${t.maxStale}|${t.failSafe}|${payload}`;
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

export function decodeRecord(text: unknown): DecodedRecord {
  if (typeof text !== "string") throw new CorruptRecordError(`not text (${typeof text})`);
  if (!text.startsWith(HEAD)) {
    throw new CorruptRecordError(/^LC\d+\|/.test(text) ? `format version ${text.slice(0, text.indexOf("|"))} is not ${RECORD_VERSION}` : "not a layercache envelope");
  }
  const fields: string[] = [];
  let at = HEAD.length;
  for (let i = 0; i < 5; i++) {
    const bar = text.indexOf("|", at);
    if (bar < 0) {
      if (i === 2 && text.slice(at) === "-") break; // tombstone
      throw new CorruptRecordError("too few fields");
    }
    fields.push(text.slice(at, bar));
    at = bar + 1;
  }
  const gen = fields[0]!;
  const born = Number(fields[1]);
  if (gen === "" || !Number.isFinite(born)) throw new CorruptRecordError("bad header");
  if (fields.length === 2) return { gen, born };
  const times = { born, ttl: Number(fields[2]), maxStale: Number(fields[3]), failSafe: Number(fields[4]) };
  if (!(times.ttl >= 0) || !(times.maxStale >= 0) || !(times.failSafe >= 0)) throw new CorruptRecordError("bad header");
  return { gen, born, times, payload: text.slice(at) };
}
