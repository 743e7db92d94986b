/**
 * The L2 record format (version 1), one line of text:
 *
 *   LC1|<generation>|<bornMs>|<ttlMs>|<maxStaleMs>|<failSafeMs>|<payload>
 *   LC1|<generation>|-                       (tombstone: the key was removed)
 *
 * The generation changes on every `set` and `remove`; a load writes back only if the generation
 * it saw when it started is still there, which is how a load that started before an
 * invalidation is kept from resurrecting an old value (SPEC 4.4). Durations are decimal
 * milliseconds, `Infinity` where unbounded. The payload is the serializer's text, last, so it
 * may contain `|`.
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

export function encodeTombstone(gen: string): string {
  return `${HEAD}${gen}|-`;
}

/** The generation of a stored record, as the conditional write compares it ("" when unreadable). */
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
      if (i === 1 && text.slice(at) === "-") return { gen: fields[0]! };
      throw new CorruptRecordError("too few fields");
    }
    fields.push(text.slice(at, bar));
    at = bar + 1;
  }
  const [gen, born, ttl, maxStale, failSafe] = fields as [string, string, string, string, string];
  const times = { born: Number(born), ttl: Number(ttl), maxStale: Number(maxStale), failSafe: Number(failSafe) };
  if (!Number.isFinite(times.born) || !(times.ttl >= 0) || !(times.maxStale >= 0) || !(times.failSafe >= 0) || gen === "") {
    throw new CorruptRecordError("bad header");
  }
  return { gen, times, payload: text.slice(at) };
}
