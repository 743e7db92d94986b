import { describe, test } from "vitest";
import { busContract, l2StoreContract } from "../../src/testing.js";
import { clusterForTests, connectCluster, contractBackends, type ClusterKind } from "../support/redis-clients.js";

/** RedisStore and RedisBus pass the contract suites on a real Redis Cluster of three masters, with both client libraries. */
const shared = clusterForTests();

describe.each(["ioredis-cluster", "node-redis-cluster"] as ClusterKind[])("Redis Cluster with %s", (kind) => {
  const backends = contractBackends(() => connectCluster(kind, shared.cluster));
  l2StoreContract(backends.store, { describe, test, name: "RedisStore: the L2Store contract" });
  busContract(backends.bus, { describe, test, name: "RedisBus: the Bus contract" });
  busContract(backends.streamsBus, { describe, test, name: "RedisStreamsBus: the Bus contract" });
});
