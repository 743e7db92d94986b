/**
 * The contract suites under node:test, which they find by themselves (no runner passed): run by
 * test/contracts/node-test.test.ts as `node --import tsx --test`. With REDIS_URL set, RedisStore and
 * RedisBus from `{ url }` too.
 */
import { MemoryBus } from "../../../src/index.js";
import { RedisBus, RedisStore } from "../../../src/backends/redis/index.js";
import { busContract, FakeClock, l2StoreContract, MemoryStore } from "../../../src/testing.js";

const clock = new FakeClock();
const store = new MemoryStore({ clock });
l2StoreContract(() => store, { name: "MemoryStore", advanceTime: (ms) => clock.advance(ms) });
const bus = new MemoryBus();
busContract(() => bus, { name: "MemoryBus" });

const url = process.env.REDIS_URL;
if (url) {
  l2StoreContract(() => new RedisStore({ url, timeout: "10s" }), { name: "RedisStore from { url }" });
  busContract(() => new RedisBus({ url, timeout: "10s" }), { name: "RedisBus from { url }" });
}
