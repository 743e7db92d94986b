import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Bus message format, version 1: a JSON array
 *
 *   [1, "<sender id>", "remove" | "clear" | "update", ["scope", "path"], ["key", ...]]
 *
 * "remove" and "clear" are invalidations: peers drop their copies and stop loads in flight from
 * writing back. "update" says a load just wrote a newer value to L2: peers drop their (older) L1
 * copies so their next read takes it from L2, but loads in flight are left alone.
 *
 * and, when a shared secret is configured, a sixth element: the base64url HMAC-SHA256 of the
 * JSON text of the first five. Messages carry keys, never values.
 */
export const BUS_VERSION = 1;

export type BusOp = "remove" | "clear" | "update";

export interface BusMessage {
  from: string;
  op: BusOp;
  scope: string[];
  keys: string[];
}

export type Decoded = { ok: true; message: BusMessage } | { ok: false; reason: string };

function sign(secret: Uint8Array, body: string): string {
  return createHmac("sha256", secret).update(body).digest("base64url");
}

export function encodeMessage(m: BusMessage, secret?: Uint8Array): string {
  const body = JSON.stringify([BUS_VERSION, m.from, m.op, m.scope, m.keys]);
  return secret === undefined ? body : `${body.slice(0, -1)},${JSON.stringify(sign(secret, body))}]`;
}

const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === "string");

/** Parses and checks a message; with a secret, unsigned or badly signed messages are refused. */
export function decodeMessage(text: unknown, secret?: Uint8Array): Decoded {
  if (typeof text !== "string") return { ok: false, reason: "not text" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { ok: false, reason: "malformed" };
  }
  if (!Array.isArray(parsed) || parsed.length < 5) return { ok: false, reason: "malformed" };
  if (parsed[0] !== BUS_VERSION) return { ok: false, reason: "version" };
  if (parsed.length > 6) return { ok: false, reason: "malformed" };
  const [, from, op, scope, keys, sig] = parsed as unknown[];
  if (typeof from !== "string" || from === "" || (op !== "remove" && op !== "clear" && op !== "update") || !isStringArray(scope) || !isStringArray(keys)) {
    return { ok: false, reason: "malformed" };
  }
  if (op !== "clear" && (keys.length === 0 || keys.some((k) => k === ""))) return { ok: false, reason: "malformed" };
  if (secret !== undefined) {
    if (typeof sig !== "string") return { ok: false, reason: "unsigned" };
    const expected = Buffer.from(sign(secret, JSON.stringify([BUS_VERSION, from, op, scope, keys])));
    const given = Buffer.from(sig);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "forged" };
  } else if (sig !== undefined && typeof sig !== "string") {
    return { ok: false, reason: "malformed" };
  }
  return { ok: true, message: { from, op, scope, keys } };
}
