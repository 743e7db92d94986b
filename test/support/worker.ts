/**
 * A layercache instance in a child process, driven over IPC by a test (see processes.ts).
 * Argv: <redis:// or postgres:// url> <prefix> [<memcached servers>]: the store and bus of that
 * server's family; with memcached servers, the L2 is a MemcachedStore (the bus stays on the URL's family).
 */
import { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { MemcachedStore } from "../../src/backends/memcached/index.js";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import { PATIENT } from "./patient.js";

const [url, prefix, extra] = process.argv.slice(2) as [string, string, string | undefined];
// The third argument: "lock" (the distributed lock on), or memcached servers (the L2 on them).
const lock = extra === "lock";
const memcached = lock ? undefined : extra;
// Patient timeouts, and no hard timeout: a gated load is held across several IPC round trips on a
// machine that may be busy (three processes just started on two cores); these tests are about
// races between processes, not about timeouts.
const postgres = /^postgres(ql)?:/.test(url);
const l2 = memcached ? new MemcachedStore({ servers: memcached, ...PATIENT }) : postgres ? new PostgresStore({ connectionString: url, ...PATIENT }) : new RedisStore({ url, ...PATIENT });
// On PostgreSQL alone, the bus is paired with the store (as docs/postgres.md recommends).
const bus = postgres ? new PostgresBus(l2 instanceof PostgresStore ? { store: l2, ...PATIENT } : { connectionString: url, ...PATIENT }) : new RedisBus({ url, ...PATIENT });
const cache = new LayerCache({ prefix, l2, bus, hardTimeout: 0, distributedLock: lock });
let loaderCalls = 0;
const gates = new Map<string, (value: unknown) => void>();

interface Command {
  id: number;
  op: "ready" | "get" | "set" | "remove" | "clear" | "getOrSet" | "release" | "stats" | "close" | "removeByTag" | "stampede" | "loaderCalls" | "getOrSetMany";
  key?: string;
  keys?: string[];
  value?: unknown;
  gate?: string;
  tags?: string[];
  /** stampede: concurrent callers, and how long the loader takes (ms). */
  n?: number;
  ms?: number;
}

const send = (m: unknown): void => void process.send!(m);

process.on("message", async (m: Command) => {
  try {
    let result: unknown;
    switch (m.op) {
      case "ready":
        await cache.ready();
        break;
      case "get":
        result = await cache.get(m.key!);
        break;
      case "set":
        await cache.set(m.key!, m.value, m.tags && { tags: m.tags });
        break;
      case "removeByTag":
        await cache.removeByTag(m.tags!);
        break;
      case "stampede": {
        const loader = async (): Promise<unknown> => {
          loaderCalls++;
          await new Promise((r) => setTimeout(r, m.ms ?? 0));
          return m.value;
        };
        result = await Promise.all(Array.from({ length: m.n ?? 1 }, () => cache.getOrSet(m.key!, loader)));
        result = [...new Set(result as unknown[])];
        break;
      }
      case "loaderCalls":
        result = loaderCalls;
        break;
      case "getOrSetMany":
        result = await cache.getOrSetMany(m.keys!, async (keys) => {
          loaderCalls++;
          send({ event: "loadMany", keys });
          if (m.gate !== undefined) await new Promise((resolve) => gates.set(m.gate!, resolve));
          return keys.map((k) => `${String(m.value)}:${k}`);
        });
        break;
      case "remove":
        await cache.remove(m.key!);
        break;
      case "clear":
        await cache.clear();
        break;
      case "getOrSet":
        result = await cache.getOrSet(
          m.key!,
          () => {
            if (m.gate === undefined) return m.value;
            send({ event: "loading", gate: m.gate });
            return new Promise((resolve) => gates.set(m.gate!, resolve));
          },
          m.tags && { tags: m.tags },
        );
        break;
      case "release":
        gates.get(m.gate!)?.(m.value);
        break;
      case "stats":
        result = cache.stats();
        break;
      case "close":
        await cache.close();
        send({ id: m.id, ok: true });
        process.exit(0);
    }
    send({ id: m.id, ok: true, result });
  } catch (error) {
    send({ id: m.id, ok: false, error: String(error) });
  }
});
process.on("unhandledRejection", (error) => {
  send({ event: "unhandledRejection", error: String(error) });
});
send({ event: "started" });
