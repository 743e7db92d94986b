import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Bus message format, version 1: a JSON array
 *
 *   [1, "<sender id>", "<op>", ["scope", "path"], ["key", ...], <born> | null]
 *
 * and, when a shared secret is configured, a seventh element: the base64url HMAC-SHA256 of the
 * JSON text of the first six. Messages carry keys, never values.
 *
 * - "remove" and "clear" are invalidations: peers drop their copies of the keys (of the whole
 *   scope for "clear") and stop loads in flight from writing back. A "remove" sent by `set`
 *   carries the new value's write time (`born`): a peer keeps a copy with exactly that write time
 *   (it already read the new value from L2), and drops any other.
 * - "update" says a load just wrote the value with write time `born` to L2: peers drop other L1
 *   copies so their next read takes it from L2, and leave loads in flight alone.
 */
export const BUS_VERSION = 1;

export type BusOp = "remove" | "clear" | "update";

export interface BusMessage {
  from: string;
  op: BusOp;
  scope: string[];
  keys: string[];
  /** Write time of the value that replaced the keys' old copies, when there is one. */
  born?: number;
}

export type Decoded = { ok: true; message: BusMessage } | { ok: false; reason: string };

function sign(secret: Uint8Array, body: string): string {
  return createHmac("sha256", secret).update(body).digest("base64url");
}

function body(m: BusMessage): string {
  return JSON.stringify([BUS_VERSION, m.from, m.op, m.scope, m.keys, m.born ?? null]);
}

export function encodeMessage(m: BusMessage, secret?: Uint8Array): string {
  const text = body(m);
  return secret === undefined ? text : `${text.slice(0, -1)},${JSON.stringify(sign(secret, text))}]`;
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
  if (!Array.isArray(parsed) || parsed.length < 6) return { ok: false, reason: Array.isArray(parsed) && parsed[0] !== BUS_VERSION ? "version" : "malformed" };
  if (parsed[0] !== BUS_VERSION) return { ok: false, reason: "version" };
  if (parsed.length > 7) return { ok: false, reason: "malformed" };
  const [, from, op, scope, keys, born, sig] = parsed as unknown[];
  if (typeof from !== "string" || from === "" || (op !== "remove" && op !== "clear" && op !== "update") || !isStringArray(scope) || !isStringArray(keys)) {
    return { ok: false, reason: "malformed" };
  }
  if (op !== "clear" && (keys.length === 0 || keys.some((k) => k === ""))) return { ok: false, reason: "malformed" };
  if (born !== null && !(typeof born === "number" && Number.isFinite(born))) return { ok: false, reason: "malformed" };
  const message: BusMessage = { from, op, scope, keys };
  if (born !== null) message.born = born;
  if (secret !== undefined) {
    if (typeof sig !== "string") return { ok: false, reason: "unsigned" };
    const expected = Buffer.from(sign(secret, body(message)));
    const given = Buffer.from(sig);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "forged" };
  } else if (sig !== undefined && typeof sig !== "string") {
    return { ok: false, reason: "malformed" };
  }
  return { ok: true, message };
}
