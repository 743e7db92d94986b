import { afterAll, describe, inject, test } from "vitest";
import { MemcachedClient, MemcachedStore } from "../../src/backends/memcached/index.js";
import { l2StoreContract } from "../../src/testing.js";

/** MemcachedStore passes the L2 store contract on a real memcached: with its own connections, and on a client passed in. */
const servers = inject("memcachedServer");

describe("Memcached", () => {
  l2StoreContract(() => new MemcachedStore({ servers }), { describe, test, name: "MemcachedStore { servers }: the L2Store contract" });

  const shared = new MemcachedClient({ servers });
  afterAll(() => shared.close());
  l2StoreContract(() => new MemcachedStore({ client: shared }), { describe, test, name: "MemcachedStore { client }: the L2Store contract" });
});
