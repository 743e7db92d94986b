import { afterAll, beforeAll, describe, test } from "vitest";
import { busContract, l2StoreContract } from "../../src/testing.js";
import { connectCluster, contractBackends, type ClusterKind } from "../support/redis-clients.js";
import { RedisCluster } from "../support/servers.js";

/** RedisStore and RedisBus pass the contract suites on a real Redis Cluster of three masters, with both client libraries. */
let cluster: RedisCluster;
beforeAll(async () => {
  cluster = await RedisCluster.start();
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
});

describe.each(["ioredis-cluster", "node-redis-cluster"] as ClusterKind[])("Redis Cluster with %s", (kind) => {
  const backends = contractBackends(() => connectCluster(kind, cluster));
  l2StoreContract(backends.store, { describe, test, name: "RedisStore: the L2Store contract" });
  busContract(backends.bus, { describe, test, name: "RedisBus: the Bus contract" });
  busContract(backends.streamsBus, { describe, test, name: "RedisStreamsBus: the Bus contract" });
});
