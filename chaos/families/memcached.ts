/** Memcached in the chaos run: MemcachedStore on one memcached (an L2 only: the bus comes from another family). */
import { MemcachedStore } from "../../src/backends/memcached/index.js";
import { MemcachedServer } from "../../test/support/memcached-server.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

async function start(): Promise<ChaosServer> {
  const server = await MemcachedServer.start();
  return {
    url: server.address,
    ...processFaults(server),
    // No cutClients: memcached has no command that closes other clients' connections.
  };
}

export const memcached: ChaosFamily = {
  start,
  store: (url, s) => new MemcachedStore({ servers: url, timeout: s.timeoutMs, circuitBreaker: s.circuitBreaker }),
};
