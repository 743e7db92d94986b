import { checkOptions, optionError, parseDuration, preview, type Duration } from "../../backend.js";
import { Connection, type Reply } from "./connection.js";
import { wireKey, type WireKey } from "./keys.js";
import { Ring } from "./ring.js";

export interface MemcachedClientOptions {
  /**
   * The servers: `"host:port"` (port 11211 when left out; IPv6 as `"[::1]:11211"`) or `{ host, port }`,
   * several of them in an array (or separated by commas). Keys are spread over them by consistent hashing.
   */
  servers: string | readonly (string | { host: string; port?: number })[];
  /**
   * A request waiting longer for its reply fails, and the connection it waits on is reset (every
   * request waiting on it fails too): a server that stopped answering never hangs a caller. Also
   * bounds connecting. Default `"1s"`; `0` disables (not advised).
   */
  timeout?: Duration;
}

const KNOWN = ["servers", "timeout"];
const DEFAULT_PORT = 11211;

/** What a store command did: `stored`, or why not (`notStored`: an add found an item; `exists`: the cas token is stale; `notFound`: no item for the cas). */
export type SetResult = "stored" | "notStored" | "exists" | "notFound";

/** An item's value with its cas token (what `gets` returns). */
export interface Cased {
  readonly value: string;
  readonly cas: string;
}

/** A SERVER_ERROR reply: the server could not do the request (an item over its size limit, no memory for it …). */
export class MemcachedServerError extends Error {
  readonly reply: string;
  constructor(server: string, reply: string) {
    super(`layercache/memcached: ${server} answered ${JSON.stringify(reply)}`);
    this.name = "MemcachedServerError";
    this.reply = reply;
  }
}

interface Address {
  host: string;
  port: number;
}

function parseServer(text: unknown): Address {
  if (text !== null && typeof text === "object" && !Array.isArray(text)) {
    const { host, port = DEFAULT_PORT } = checkOptions(text as { host?: unknown; port?: unknown }, ["host", "port"], "server", "servers[]");
    if (typeof host !== "string" || host === "" || !Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535) {
      throw optionError("servers", `has { host: ${preview(host)}, port: ${preview(port)} }, which is not a host and a port`);
    }
    return { host: host.replace(/^\[(.*)\]$/, "$1"), port: port as number };
  }
  if (typeof text !== "string") throw optionError("servers", `must be "host:port" strings or { host, port } (got ${preview(text)})`);
  const s = text.trim().replace(/^memcached:\/\//, "");
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]/]+))(?::(\d{1,5}))?$/.exec(s);
  const port = m?.[3] === undefined ? DEFAULT_PORT : Number(m[3]);
  if (!m || port < 1 || port > 65535) throw optionError("servers", `has ${preview(text)}, which is not "host:port"`);
  return { host: m[1] ?? m[2]!, port };
}

/** The `servers` option as addresses (at least one, none twice). */
export function parseServers(servers: unknown): Address[] {
  const list = typeof servers === "string" ? servers.split(",").filter((s) => s.trim() !== "") : servers;
  if (!Array.isArray(list) || list.length === 0) throw optionError("servers", `must be "host:port" or a non-empty array of them (got ${preview(servers)})`);
  const out = list.map(parseServer);
  const seen = new Set<string>();
  for (const a of out) {
    const label = `${a.host}:${a.port}`;
    if (seen.has(label)) throw optionError("servers", `names ${label} twice`);
    seen.add(label);
  }
  return out;
}

function valueOf(server: Connection, reply: Reply): string | undefined {
  if (reply.value !== undefined) return reply.value.toString("utf8");
  if (reply.line === "EN") return undefined;
  throw unexpected(server, reply);
}

function unexpected(server: Connection, reply: Reply): Error {
  if (reply.line.startsWith("SERVER_ERROR")) return new MemcachedServerError(server.label, reply.line);
  return new Error(`layercache/memcached: unexpected reply from ${server.label}: ${JSON.stringify(reply.line.slice(0, 80))}`);
}

const mg = (k: WireKey, flags: string): string => `mg ${k.token} ${flags}${k.base64 ? " b" : ""}\r\n`;

/**
 * A small Memcached client on the meta protocol (memcached ≥ 1.6): `mg`/`ms` with cas tokens,
 * keys of any bytes through base64 (`b`), one pipelined connection per server, consistent hashing
 * over servers, per-request timeouts and reconnection on the next request. It speaks only what
 * `MemcachedStore` needs; see docs/memcached.md for why it is not an npm client.
 *
 * Keys are strings: printable ASCII keys go as they are, others as the base64 of their UTF-8 bytes,
 * and keys too long for that as a digest (see keys.ts). Values are UTF-8 text.
 */
export class MemcachedClient {
  /** The servers, as `host:port`. */
  readonly servers: readonly string[];
  readonly #connections: Connection[];
  readonly #ring: Ring<Connection>;
  #closed = false;

  constructor(options: MemcachedClientOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("layercache/memcached: MemcachedClient needs options: { servers }");
    checkOptions(options, KNOWN, "MemcachedClient");
    const timeoutMs = options.timeout === undefined ? 1000 : parseDuration("timeout", options.timeout, false);
    this.#connections = parseServers(options.servers).map((a) => new Connection(a.host, a.port, timeoutMs));
    this.servers = this.#connections.map((c) => c.label);
    this.#ring = new Ring(this.#connections.map((c) => ({ label: c.label, server: c })));
  }

  /** Connects to every server and checks that it answers (a meta no-op); rejects when one does not. */
  async connect(): Promise<void> {
    await Promise.all(
      this.#connections.map(async (c) => {
        const reply = await c.request("mn\r\n");
        if (reply.line !== "MN") throw unexpected(c, reply);
      }),
    );
  }

  /** The value of `key`, or undefined when there is none. */
  async get(key: string): Promise<string | undefined> {
    const k = wireKey(key);
    const c = this.#ring.serverOf(k.token);
    return valueOf(c, await c.request(mg(k, "v")));
  }

  /** The values of `keys` (undefined where there is none), in one pipelined round trip per server. */
  async getMany(keys: readonly string[]): Promise<(string | undefined)[]> {
    const byServer = new Map<Connection, { frames: string[]; at: number[] }>();
    keys.forEach((key, i) => {
      const k = wireKey(key);
      const c = this.#ring.serverOf(k.token);
      let batch = byServer.get(c);
      if (batch === undefined) byServer.set(c, (batch = { frames: [], at: [] }));
      batch.frames.push(mg(k, "v"));
      batch.at.push(i);
    });
    const out = new Array<string | undefined>(keys.length);
    await Promise.all(
      [...byServer].map(async ([c, batch]) => {
        const replies = await Promise.all(c.requestMany(batch.frames));
        replies.forEach((reply, j) => (out[batch.at[j]!] = valueOf(c, reply)));
      }),
    );
    return out;
  }

  /** The value of `key` with its cas token, or undefined when there is none. */
  async gets(key: string): Promise<Cased | undefined> {
    const k = wireKey(key);
    const c = this.#ring.serverOf(k.token);
    const reply = await c.request(mg(k, "v c"));
    const value = valueOf(c, reply);
    if (value === undefined) return undefined;
    const cas = / c(\d+)/.exec(reply.line)?.[1];
    if (cas === undefined) throw unexpected(c, reply);
    return { value, cas };
  }

  /**
   * Stores `value` under `key` with Memcached's `exptime` (seconds up to 30 days, a Unix time
   * beyond, 0 for never: see `exptime` in ttl.ts). With `cas`, only if the item still has that cas
   * token; with `add`, only if there is no item. Rejects with a `MemcachedServerError` when the
   * server refuses the item (too large, no memory for it).
   */
  async set(key: string, value: string, exptime: number, options?: { cas?: string; add?: boolean }): Promise<SetResult> {
    if (!Number.isSafeInteger(exptime) || exptime < 0) throw new RangeError(`layercache/memcached: exptime ${preview(exptime)} is not a non-negative integer`);
    if (options?.cas !== undefined && !/^\d+$/.test(options.cas)) throw new RangeError(`layercache/memcached: cas ${preview(options.cas)} is not a cas token`);
    const k = wireKey(key);
    const c = this.#ring.serverOf(k.token);
    const flags = `T${exptime}${k.base64 ? " b" : ""}${options?.cas !== undefined ? ` C${options.cas}` : ""}${options?.add ? " ME" : ""}`;
    const reply = await c.request(`ms ${k.token} ${Buffer.byteLength(value)} ${flags}\r\n${value}\r\n`);
    switch (reply.line) {
      case "HD":
        return "stored";
      case "NS":
        return "notStored";
      case "EX":
        return "exists";
      case "NF":
        return "notFound";
      default:
        throw unexpected(c, reply);
    }
  }

  /** Waits for the replies still expected, then closes every connection. Later requests reject. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#connections.map((c) => c.close()));
  }
}
