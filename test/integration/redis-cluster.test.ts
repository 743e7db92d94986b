import { describe, expect, test } from "vitest";
import { Cluster, Redis } from "ioredis";
import { LayerCache } from "../../src/index.js";
import { RedisStore } from "../../src/backends/redis/index.js";
import { encodeMessage } from "../../src/bus/codec.js";
import { BUS_KINDS, busOf, clusterForTests, eventually, PATIENT, uniquePrefix, type BusKind, type ClusterKind } from "../support/redis-clients.js";
import { gated } from "../support/helpers.js";

/** L2 and bus on a real local Redis Cluster of three masters, with both client libraries. */
const shared = clusterForTests();
const closers = shared.closers;

type Kind = ClusterKind;

const clusterClient = (kind: ClusterKind): Promise<unknown> => shared.client(kind);

async function instances(kind: Kind, n: number, bus: BusKind = "pubsub") {
  const prefix = uniquePrefix();
  const out: LayerCache[] = [];
  for (let i = 0; i < n; i++) {
    const client = await clusterClient(kind);
    const cache = new LayerCache({ prefix, l2: new RedisStore({ client, ...PATIENT }), bus: busOf(bus, { client }) });
    closers.push(() => cache.close());
    out.push(cache);
  }
  await Promise.all(out.map((c) => c.ready()));
  return { caches: out, prefix };
}

/** Keys per master node, read node by node. */
async function keysPerNode(prefix: string): Promise<number[]> {
  const counts: number[] = [];
  for (const node of shared.cluster.nodes) {
    const r = new Redis(node.url);
    counts.push((await r.keys(`${prefix}:*`)).length);
    await r.quit();
  }
  return counts;
}

describe.each(["ioredis-cluster", "node-redis-cluster"] as const)("Redis Cluster with %s", (kind) => {
  test("L2 is shared, keys spread across the masters, and nothing raises CROSSSLOT", async () => {
    const { caches: [a, b], prefix } = await instances(kind, 2);
    const errors: unknown[] = [];
    for (const c of [a!, b!]) c.on("l2Error", (e) => errors.push(e.error));
    let calls = 0;
    // Concurrent reads of many keys: the path that batches on a standalone client.
    await Promise.all(Array.from({ length: 60 }, (_, i) => a!.getOrSet(`k${i}`, async () => (calls++, `v${i}`))));
    const fromB = await Promise.all(Array.from({ length: 60 }, (_, i) => b!.getOrSet(`k${i}`, async () => (calls++, "from b"))));
    expect(fromB).toEqual(Array.from({ length: 60 }, (_, i) => `v${i}`));
    expect(calls).toBe(60);
    await Promise.all(Array.from({ length: 20 }, (_, i) => a!.scope("s").set(`x${i}`, i)));
    await Promise.all(Array.from({ length: 20 }, (_, i) => a!.remove(`k${i}`)));
    expect(errors).toEqual([]);
    const spread = await keysPerNode(prefix);
    expect(spread.filter((n) => n > 0).length).toBe(3);
  });

  test.each(BUS_KINDS)("remove and scope clear reach the peer over the cluster (%s)", async (bus) => {
    const { caches: [a, b] } = await instances(kind, 2, bus);
    await a!.set("k", 1);
    expect(await b!.get("k")).toBe(1);
    await a!.remove("k");
    await eventually(async () => (await b!.get("k")) === undefined);
    await b!.scope("users").getOrSet("u", async () => "b's");
    const clears = (): number => b!.stats().peerInvalidations;
    const before = clears();
    await a!.scope("users").clear();
    await eventually(() => clears() > before);
    expect(b!.stats().entries).toBe(0);
  });

  test("a load that started before a set on the peer does not write back", async () => {
    const { caches: [a, b] } = await instances(kind, 2);
    const load = gated<string>();
    const p = b!.getOrSet("k", load.loader, { hardTimeout: 0 }); // held across a set: no timeout
    await load.started;
    await a!.set("k", "newer");
    load.release("older");
    expect(await p).toBe("older");
    a!.clearMemory();
    expect(await a!.get("k")).toBe("newer");
    await eventually(async () => (await b!.get("k")) === "newer");
  });

  test("Streams: readers cut off on the node holding the stream catch up on what they missed, and keep their L1", async () => {
    const { caches: [a, b], prefix } = await instances(kind, 2, "streams");
    const events: string[] = [];
    b!.on("busCaughtUp", () => events.push("caughtUp"));
    b!.on("busReconnect", () => events.push("reconnect"));
    await a!.set("k", "v1");
    expect(await b!.get("k")).toBe("v1");
    await b!.getOrSet("held", async () => "b's own");
    // The stream is one key, on one master: cut the readers there, and publish while they are away.
    let owner: Redis | undefined;
    for (const node of shared.cluster.nodes) {
      const r = new Redis(node.url);
      if ((await r.exists(`${prefix}:bus`).catch(() => 0)) === 1) owner = r; // elsewhere: MOVED
      else r.disconnect();
    }
    const readers = ((await owner!.call("CLIENT", "LIST")) as string).split("\n").filter((l) => / cmd=xread\b/.test(l)).map((l) => /\bid=(\d+)/.exec(l)![1]!);
    // A peer's removal: L2 first (on whichever master holds the key), then the bus message.
    const any = new Cluster(shared.cluster.startupNodes);
    await any.del(`${prefix}::k`);
    any.disconnect();
    const cut = owner!.multi();
    for (const id of readers) cut.client("KILL", "ID", id);
    await cut
      .xadd(`${prefix}:bus`, "*", "m", encodeMessage({ from: "peer-x", op: "remove", scope: [], keys: ["k"], at: Date.now() }))
      .exec();
    owner!.disconnect();
    await eventually(() => events.includes("caughtUp"), 15_000);
    expect(events).toEqual(["caughtUp"]);
    expect(await b!.get("k")).toBeUndefined();
    expect(b!.stats().busReconnects).toBe(0);
    expect(await b!.get("held")).toBe("b's own");
  });
});
