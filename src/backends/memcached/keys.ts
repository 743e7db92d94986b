import { createHash } from "node:crypto";

/**
 * How a cache key becomes a Memcached key. Memcached keys are byte strings of at most 250 bytes
 * without spaces or control characters on the wire; the meta protocol's `b` flag carries any bytes
 * as base64, but the base64 text must fit in those 250 characters too (186 bytes of key).
 *
 * A key is stored under its UTF-8 bytes, sent as they are when they are printable ASCII, else in
 * base64 — the same bytes either way, so every instance finds the same item. A key whose bytes do
 * not fit in base64 (a key of 187 to 250 bytes with a space or a non-ASCII character in it) is
 * stored under `0xFF` + SHA-256 of its bytes + the start of its bytes. UTF-8 never contains the
 * byte 0xFF, so such a key can never equal the bytes of another key; two of them are equal only if
 * their SHA-256 are. A string that is not well-formed UTF-16 (a lone surrogate) has no exact UTF-8
 * form: it is stored under `0xFE` + SHA-256 of its UTF-16 code units (0xFE is not in UTF-8 either).
 */

/** The longest key a Memcached server takes, in bytes (its KEY_MAX_LENGTH). */
export const MEMCACHED_MAX_KEY_BYTES = 250;
/** Most bytes whose base64 fits in MEMCACHED_MAX_KEY_BYTES characters. */
const MAX_BASE64_KEY_BYTES = 186;
const HASHED_HEAD_BYTES = MAX_BASE64_KEY_BYTES - 33;

/** A key as the meta protocol sends it: the token, and whether it is base64 (the `b` flag). */
export interface WireKey {
  readonly token: string;
  readonly base64: boolean;
}

/** Printable ASCII but space: what a key token may hold as it is. */
function plainToken(key: string): boolean {
  if (key.length > MEMCACHED_MAX_KEY_BYTES) return false;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return key.length > 0;
}

function hashed(marker: number, digestOf: Buffer, head: Buffer): WireKey {
  const digest = createHash("sha256").update(digestOf).digest();
  const bytes = Buffer.concat([Buffer.of(marker), digest, head.subarray(0, HASHED_HEAD_BYTES)]);
  return { token: bytes.toString("base64"), base64: true };
}

export function wireKey(key: string): WireKey {
  if (plainToken(key)) return { token: key, base64: false };
  if (!key.isWellFormed()) return hashed(0xfe, Buffer.from(key, "utf16le"), Buffer.alloc(0));
  const bytes = Buffer.from(key, "utf8");
  if (bytes.length <= MAX_BASE64_KEY_BYTES && bytes.length > 0) return { token: bytes.toString("base64"), base64: true };
  return hashed(0xff, bytes, bytes);
}
