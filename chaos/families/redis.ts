/** Redis in the chaos run: RedisStore, RedisBus ("pubsub") and RedisStreamsBus ("streams") on one redis-server. */
import { Redis } from "ioredis";
import { RedisBus, RedisStore, RedisStreamsBus } from "../../src/backends/redis/index.js";
import { RedisServer } from "../../test/support/servers.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

/** One client per worker process, shared by its store and bus (as a user would). */
let client: Redis | undefined;
function clientFor(url: string): Redis {
  if (!client) {
    client = new Redis(url, { maxRetriesPerRequest: 1 });
    client.on("error", () => {});
  }
  return client;
}

async function start(): Promise<ChaosServer> {
  const server = await RedisServer.start();
  const admin = new Redis(server.url, { maxRetriesPerRequest: 1 });
  admin.on("error", () => {});
  const killType = (type: string) => admin.call("CLIENT", "KILL", "TYPE", type, "SKIPME", "yes").then(() => {}, () => {});
  return {
    url: server.url,
    ...processFaults(server),
    // The listening connections of a Streams bus are normal clients blocked in XREAD: cut those.
    cutListeners: (busKind) => (busKind === "streams" ? killReaders(admin) : killType("pubsub")),
    cutClients: () => killType("normal"),
    stop: async () => {
      admin.disconnect();
      await server.stop(); // resumes a paused server first
    },
  };
}

/** CLIENT KILL of every connection whose last command is XREAD (the readers of Streams buses). */
async function killReaders(admin: Redis): Promise<void> {
  const list = (await admin.call("CLIENT", "LIST").catch(() => "")) as string;
  for (const line of list.split("\n")) {
    const id = / cmd=xread\b/.test(line) ? /\bid=(\d+)/.exec(line)?.[1] : undefined;
    if (id !== undefined) await admin.call("CLIENT", "KILL", "ID", id).catch(() => {});
  }
}

export const redis: ChaosFamily = {
  start,
  store: (url, s) => new RedisStore({ client: clientFor(url), timeout: s.timeoutMs, circuitBreaker: s.circuitBreaker }),
  buses: {
    pubsub: (url, s) => new RedisBus({ client: clientFor(url), heartbeat: s.heartbeat }),
    streams: (url, s) => new RedisStreamsBus({ client: clientFor(url), heartbeat: s.heartbeat }),
  },
  close: async () => {
    client?.disconnect();
    client = undefined;
  },
};
