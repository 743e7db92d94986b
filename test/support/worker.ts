/**
 * A layercache instance in a child process, driven over IPC by a test (see processes.ts).
 * Argv: <redis url> <prefix> [<memcached servers>]: the bus is a RedisBus; the L2 a RedisStore, or a
 * MemcachedStore when memcached servers are given.
 */
import { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore } from "../../src/backends/redis/index.js";
import { MemcachedStore } from "../../src/backends/memcached/index.js";
import { PATIENT } from "./patient.js";

const [url, prefix, memcached] = process.argv.slice(2) as [string, string, string | undefined];
// Patient timeouts, and no hard timeout: a gated load is held across several IPC round trips on a
// machine that may be busy (three processes just started on two cores); these tests are about
// races between processes, not about timeouts.
const cache = new LayerCache({ prefix, l2: memcached ? new MemcachedStore({ servers: memcached, ...PATIENT }) : new RedisStore({ url, ...PATIENT }), bus: new RedisBus({ url, ...PATIENT }), hardTimeout: 0 });
const gates = new Map<string, (value: unknown) => void>();

interface Command {
  id: number;
  op: "ready" | "get" | "set" | "remove" | "clear" | "getOrSet" | "release" | "stats" | "close";
  key?: string;
  value?: unknown;
  gate?: string;
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
        await cache.set(m.key!, m.value);
        break;
      case "remove":
        await cache.remove(m.key!);
        break;
      case "clear":
        await cache.clear();
        break;
      case "getOrSet":
        result = await cache.getOrSet(m.key!, () => {
          if (m.gate === undefined) return m.value;
          send({ event: "loading", gate: m.gate });
          return new Promise((resolve) => gates.set(m.gate!, resolve));
        });
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
