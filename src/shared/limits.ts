import { optionError, preview } from "./errors.js";

/**
 * Byte limits of backends (`L2Store.limits`, `Bus.limits`): reading a declared limit, and measuring
 * text against one in UTF-8 without measuring when its length alone already answers.
 */

/** A limit the backend behind `option` declares (`Infinity` when it declares none); a TypeError when it is not a number ≥ `min`. */
export function declaredLimit(option: "l2" | "bus", limits: object | undefined, field: string, min: number): number {
  const value: unknown = limits === undefined || limits === null ? undefined : (limits as Record<string, unknown>)[field];
  if (value === undefined) return Infinity;
  if (typeof value !== "number" || Number.isNaN(value) || value < min) {
    throw optionError(option, `declares limits.${field} = ${preview(value)}; it must be a number of bytes, at least ${min}`);
  }
  return Math.floor(value);
}

/** Whether `text` takes more than `max` bytes in UTF-8. Measures only when its length leaves a doubt. */
export function overBytes(text: string, max: number): boolean {
  if (text.length * 3 <= max) return false; // a UTF-16 unit is at most 3 bytes (a surrogate pair: 4 for 2)
  if (text.length > max) return true; // and at least 1
  return Buffer.byteLength(text) > max;
}

/** The longest start of `text` that takes at most `max` bytes in UTF-8, never ending inside a code point. */
export function cutToBytes(text: string, max: number): string {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const pair = c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    const size = c < 0x80 ? 1 : c < 0x800 ? 2 : pair ? 4 : 3;
    if (bytes + size > max) return text.slice(0, i);
    bytes += size;
    if (pair) i++;
  }
  return text;
}
