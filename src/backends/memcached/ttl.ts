/**
 * Memcached's expiry (`exptime`) from a lifetime in milliseconds. Memcached counts whole seconds on
 * a clock that ticks once a second, reads 0 as "never expire", and reads any value over 30 days
 * (2 592 000) as an absolute Unix time — so a lifetime of 31 days sent as seconds would be a date
 * in 1970, and the item would expire at once. Here:
 *
 * - `Infinity` → 0 (never);
 * - otherwise whole seconds rounded up, plus one: the server's clock may be up to a second behind
 *   when the item is stored, and a lifetime is never cut short (nor to 0, which would mean never);
 * - over 30 days → the Unix time of the end of the lifetime, by `nowMs` (this host's clock; the
 *   server's should agree within seconds, negligible against 30 days);
 * - an end past what the protocol can carry (a signed 32-bit time: January 2038) → 0 (never): the
 *   item is kept longer than asked, never shorter — the cache reads its own times from the record.
 */
export const MAX_RELATIVE_EXPTIME = 30 * 24 * 3600;
const MAX_EXPTIME = 2 ** 31 - 1;

export function exptime(ttlMs: number, nowMs: number): number {
  if (ttlMs === Infinity || Number.isNaN(ttlMs)) return 0;
  const seconds = Math.max(1, Math.ceil(ttlMs / 1000)) + 1;
  if (seconds <= MAX_RELATIVE_EXPTIME) return seconds;
  const at = Math.ceil(nowMs / 1000) + seconds;
  return at > MAX_EXPTIME ? 0 : at;
}
