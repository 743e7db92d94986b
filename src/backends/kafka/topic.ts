import { createHash } from "node:crypto";

/**
 * How a bus channel maps to a Kafka topic, and what a message is keyed by. Kafka topic names allow
 * only `[A-Za-z0-9._-]`, at most 249 characters, and Kafka refuses a topic whose name differs from
 * an existing one only by `.` against `_` (their metric names would collide). So letters, digits
 * and `-` stay as they are and every other UTF-8 byte — `_` and `.` included — is written `_xx`
 * (two lowercase hex digits): two channels never share a topic, and no name holds a `.`. A name
 * that would be longer than the limit becomes its first part and a SHA-256 of the whole channel
 * after `__`, which an escaped name never contains (its `_` is always followed by hex digits).
 */
export const MAX_TOPIC_LENGTH = 249;

export function topicFor(channel: string): string {
  let name = "";
  for (const byte of Buffer.from(channel, "utf8")) {
    const c = String.fromCharCode(byte);
    name += /[A-Za-z0-9-]/.test(c) ? c : `_${byte.toString(16).padStart(2, "0")}`;
  }
  if (name.length <= MAX_TOPIC_LENGTH) return name;
  const hash = createHash("sha256").update(channel).digest("hex");
  // Cut before an escape, so the kept part stays readable: never in the middle of `_xx`.
  let head = name.slice(0, MAX_TOPIC_LENGTH - hash.length - 2);
  const cut = head.lastIndexOf("_");
  if (cut >= head.length - 2) head = head.slice(0, cut);
  return `${head}__${hash}`;
}

/** Longest key kept as it is; a longer scope path is keyed by its hash (the key only picks a partition). */
const MAX_KEY_BYTES = 128;

/**
 * The key of a message: its scope path, for a message of the cache's format (`[1, sender, op,
 * [scope...], ...]`), so that one scope's invalidations land on one partition and stay in order;
 * `fallback` (the publishing connection's own key) for any other text, so that one publisher's
 * messages stay in order. Read without trusting the text: anything unexpected takes the fallback.
 */
export function keyOf(message: string, fallback: string): string {
  if (!message.startsWith("[1,")) return fallback;
  let parsed: unknown;
  try {
    parsed = JSON.parse(message);
  } catch {
    return fallback;
  }
  const scope = Array.isArray(parsed) ? (parsed[3] as unknown) : undefined;
  if (!Array.isArray(scope) || !scope.every((s) => typeof s === "string")) return fallback;
  const key = `s${JSON.stringify(scope)}`;
  return Buffer.byteLength(key) <= MAX_KEY_BYTES ? key : `h${createHash("sha256").update(key).digest("base64url")}`;
}
