import { randomBytes } from "node:crypto";
import { Cluster, Redis } from "ioredis";
import { Redis as Redis6 } from "ioredis-v6";
import { createClient, createCluster } from "redis";
import { createClient as createClient4 } from "redis-v4";
import { afterAll, beforeAll } from "vitest";
import type { LayerCache } from "../../src/index.js";
import { RedisBus, RedisStore, RedisStreamsBus } from "../../src/backends/redis/index.js";
import { PATIENT } from "./patient.js";
import { RedisCluster } from "./servers.js";

export { PATIENT };

/** The client libraries (and majors) the peer dependency ranges promise, plus `{ url }`. */
export type ClientKind = "ioredis" | "ioredis@6" | "node-redis" | "node-redis@4" | "url";
export const CLIENT_KINDS: ClientKind[] = ["ioredis", "ioredis@6", "node-redis", "node-redis@4", "url"];

/** A unique prefix per test, so test files can share one redis-server. */
export function uniquePrefix(): string {
  return `t${randomBytes(5).toString("hex")}`;
}

export interface Wiring {
  store: RedisStore;
  bus: RedisBus | RedisStreamsBus;
  close(): Promise<void>;
}

/** How a store or bus reaches Redis: `{ client }` (closed by `close`) or `{ url }` (each opens its own). */
export interface Connected {
  options: { client: unknown } | { url: string };
  close(): Promise<void>;
}

/** A client of `kind`, connected the way a user would connect it. */
export async function connect(kind: ClientKind, url: string): Promise<Connected> {
  if (kind === "url") return { options: { url }, close: async () => {} };
  if (kind === "ioredis" || kind === "ioredis@6") {
    const client = kind === "ioredis" ? new Redis(url) : new Redis6(url);
    return { options: { client }, close: async () => void (await client.quit()) };
  }
  const client = kind === "node-redis" ? createClient({ url }) : createClient4({ url });
  client.on("error", () => {});
  await client.connect();
  return { options: { client }, close: async () => void (await client.quit()) };
}

export type ClusterKind = "ioredis-cluster" | "node-redis-cluster";

/** A client of `kind` on `cluster`, connected the way a user would connect it. */
export async function connectCluster(kind: ClusterKind, cluster: RedisCluster): Promise<Connected> {
  if (kind === "ioredis-cluster") {
    const client = new Cluster(cluster.startupNodes);
    client.on("error", () => {});
    return { options: { client }, close: async () => void (await client.quit()) };
  }
  const client = createCluster({ rootNodes: cluster.startupNodes.map((n) => ({ url: `redis://${n.host}:${n.port}` })) });
  client.on("error", () => {});
  await client.connect();
  return { options: { client }, close: async () => void (await client.close()) };
}

/** The Redis buses: pub/sub (`RedisBus`) and Streams (`RedisStreamsBus`). */
export type BusKind = "pubsub" | "streams";
export const BUS_KINDS: BusKind[] = ["pubsub", "streams"];

/** A bus of `kind` on `connection` (`{ client }` or `{ url }`), with PATIENT timeouts and `extra` options. */
export function busOf(kind: BusKind, connection: { client: unknown } | { url: string }, extra: Record<string, unknown> = {}): RedisBus | RedisStreamsBus {
  return kind === "streams" ? new RedisStreamsBus({ ...connection, ...PATIENT, ...extra }) : new RedisBus({ ...connection, ...PATIENT, ...extra });
}

/** A RedisStore and a bus (a RedisBus unless `bus` says otherwise) built the way a user would with `kind` (with PATIENT timeouts). */
export async function wire(kind: ClientKind, url: string, bus: BusKind = "pubsub", busOptions: Record<string, unknown> = {}): Promise<Wiring> {
  const { options, close } = await connect(kind, url);
  return { store: new RedisStore({ ...options, ...PATIENT }), bus: busOf(bus, options, busOptions), close };
}

/**
 * A 3-master Redis Cluster of the test file's own (or its `describe`'s), started before its tests and
 * stopped after them, and what the tests opened on it (`closers`: closed first, newest first).
 */
export function clusterForTests(): { readonly cluster: RedisCluster; closers: (() => Promise<unknown>)[]; client(kind: ClusterKind): Promise<unknown> } {
  let cluster: RedisCluster | undefined;
  const closers: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    cluster = await RedisCluster.start();
  }, 60_000);
  afterAll(async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
    await cluster?.stop();
  });
  return {
    get cluster() {
      return cluster!;
    },
    closers,
    async client(kind) {
      const { options, close } = await connectCluster(kind, cluster!);
      closers.push(close);
      return (options as { client: unknown }).client;
    },
  };
}

/**
 * Stores and buses for the contract suites, which make a new one for every instance a test needs:
 * on two clients taken in turn (so that two instances use two connections), or from the URL each
 * time. The clients are closed after the tests of the file (or `describe`).
 */
export function contractBackends(open: () => Promise<Connected>): { store(): Promise<RedisStore>; bus(): Promise<RedisBus>; streamsBus(): Promise<RedisStreamsBus> } {
  const clients: Promise<Connected>[] = [];
  let turn = 0;
  const next = (): Promise<Connected> => (clients[turn++ % 2] ??= open());
  afterAll(async () => {
    for (const c of clients) await (await c).close();
  });
  return {
    store: async () => new RedisStore({ ...(await next()).options, ...PATIENT }),
    bus: async () => new RedisBus({ ...(await next()).options, ...PATIENT }),
    streamsBus: async () => new RedisStreamsBus({ ...(await next()).options, ...PATIENT }),
  };
}

/**
 * What the tests of a file (or of a `describe`) open on the shared server: push caches and wirings
 * here and they are closed after those tests — caches first, then their connections.
 */
export function closedAfterAll(): { caches: LayerCache[]; wirings: Wiring[] } {
  const open: { caches: LayerCache[]; wirings: Wiring[] } = { caches: [], wirings: [] };
  afterAll(async () => {
    await Promise.all(open.caches.map((c) => c.close()));
    await Promise.all(open.wirings.map((w) => w.close()));
  });
  return open;
}

/** A plain client to look at (or tamper with) what is stored. */
export function rawClient(url: string): Redis {
  return new Redis(url);
}

/** A plain client for the tests of a file (or of a `describe`), closed after them. */
export function rawClientClosedAfterAll(url: string): Redis {
  const client = rawClient(url);
  afterAll(async () => void (await client.quit()));
  return client;
}

/** Polls `check` until it is true, within `ms` (bounded waits for asynchronous delivery). */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Puts `message` on the bus of `prefix` as a peer (or an intruder) would: PUBLISH, or XADD to the stream. */
export async function sendRaw(raw: Redis, kind: BusKind, prefix: string, message: string | Buffer): Promise<void> {
  if (kind === "streams") await raw.xadd(`${prefix}:bus`, "*", "m", message);
  else await raw.publish(`${prefix}:bus`, message);
}
