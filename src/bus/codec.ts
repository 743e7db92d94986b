import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Bus message format, version 1: a JSON array
 *
 *   [1, "<sender id>", "<op>", ["scope", "path"], ["key", ...], "<generation>" | null, <sentAtMs>]
 *
 * and, when a shared secret is configured, an eighth element: the base64url HMAC-SHA256 of the
 * JSON text of the first seven. Messages carry keys, never values.
 *
 * - "remove" and "clear" are invalidations: peers drop their copies of the keys (of the whole
 *   scope for "clear") and fence their loads in flight. A "remove" sent by `set` names the L2
 *   generation of the new value: a peer's load or read that finds exactly that record in L2 may
 *   still use it (it is the newest value); nothing older.
 * - "update" says a load just wrote the record of that generation to L2: peers drop their other
 *   L1 copies so their next read takes it from L2, and leave loads in flight alone.
 * - "tag" carries tags in place of keys: peers drop their copies of the scope's entries carrying
 *   any of them and fence their loads that would write such a value (`removeByTag`). Added after
 *   version 1 was out, without a version change: it only adds an operation, and a peer from
 *   before it drops the message as malformed (and counts it) — that peer cannot hold tagged
 *   entries either, since it reads tagged L2 records as corrupt.
 * - sentAtMs is the sender's cache clock (the wall clock unless one was injected); with a secret, a signed message more than 5 minutes away from
 *   the receiver's clock is refused, so a captured message cannot be replayed later.
 */
export const BUS_VERSION = 1;

/** How far a signed message's send time may be from the receiver's clock. */
export const REPLAY_WINDOW_MS = 5 * 60_000;

export type BusOp = "remove" | "clear" | "update" | "tag";

export interface BusMessage {
  from: string;
  op: BusOp;
  scope: string[];
  keys: string[];
  /** L2 generation of the value that replaced the keys' old copies, when there is one. */
  gen?: string;
  /** Sender's clock when sent. */
  at: number;
}

export type Decoded = { ok: true; message: BusMessage } | { ok: false; reason: string };

function sign(secret: Uint8Array, body: string): string {
  return createHmac("sha256", secret).update(body).digest("base64url");
}

function body(m: BusMessage): string {
  return JSON.stringify([BUS_VERSION, m.from, m.op, m.scope, m.keys, m.gen ?? null, m.at]);
}

export function encodeMessage(m: BusMessage, secret?: Uint8Array): string {
  const text = body(m);
  return secret === undefined ? text : `${text.slice(0, -1)},${JSON.stringify(sign(secret, text))}]`;
}

const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === "string");

/** Parses and checks a message; with a secret, unsigned, badly signed or replayed messages are refused. */
export function decodeMessage(text: unknown, secret?: Uint8Array, now: number = Date.now()): Decoded {
  if (typeof text !== "string") return { ok: false, reason: "not text" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { ok: false, reason: "malformed" };
  }
  if (!Array.isArray(parsed)) return { ok: false, reason: "malformed" };
  if (parsed[0] !== BUS_VERSION) return { ok: false, reason: "version" };
  if (parsed.length < 7 || parsed.length > 8) return { ok: false, reason: "malformed" };
  const [, from, op, scope, keys, gen, at, sig] = parsed as unknown[];
  if (typeof from !== "string" || from === "" || (op !== "remove" && op !== "clear" && op !== "update" && op !== "tag") || !isStringArray(scope) || !isStringArray(keys)) {
    return { ok: false, reason: "malformed" };
  }
  if (op !== "clear" && (keys.length === 0 || keys.some((k) => k === ""))) return { ok: false, reason: "malformed" };
  if ((gen !== null && (typeof gen !== "string" || gen === "")) || typeof at !== "number" || !Number.isFinite(at)) return { ok: false, reason: "malformed" };
  const message: BusMessage = { from, op, scope, keys, at };
  if (gen !== null) message.gen = gen;
  if (secret !== undefined) {
    if (typeof sig !== "string") return { ok: false, reason: "unsigned" };
    const expected = Buffer.from(sign(secret, body(message)));
    const given = Buffer.from(sig);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "forged" };
    if (Math.abs(now - at) > REPLAY_WINDOW_MS) return { ok: false, reason: "replayed" };
  } else if (sig !== undefined && typeof sig !== "string") {
    return { ok: false, reason: "malformed" };
  }
  return { ok: true, message };
}
