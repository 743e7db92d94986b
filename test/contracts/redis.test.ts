import { describe, inject, test } from "vitest";
import { busContract, l2StoreContract } from "../../src/testing.js";
import { CLIENT_KINDS, connect, contractBackends } from "../support/redis-clients.js";

/** RedisStore, RedisBus and RedisStreamsBus pass the contract suites on a real redis-server, with every client library. */
const url = inject("redisUrl");

describe.each(CLIENT_KINDS)("Redis with %s", (kind) => {
  const backends = contractBackends(() => connect(kind, url));
  l2StoreContract(backends.store, { describe, test, name: "RedisStore: the L2Store contract" });
  busContract(backends.bus, { describe, test, name: "RedisBus: the Bus contract" });
  busContract(backends.streamsBus, { describe, test, name: "RedisStreamsBus: the Bus contract" });
});
