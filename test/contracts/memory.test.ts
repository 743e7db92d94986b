import { describe, test } from "vitest";
import { MemoryBus } from "../../src/index.js";
import { busContract, FakeClock, l2StoreContract, MemoryStore } from "../../src/testing.js";

/** The in-process backends pass the same contract suites as the Redis ones. */
describe("MemoryStore, expiring on a FakeClock", () => {
  const clock = new FakeClock();
  const store = new MemoryStore({ clock });
  l2StoreContract(() => store, { describe, test, advanceTime: (ms) => clock.advance(ms) });
});

describe("MemoryStore on the real clock", () => {
  const store = new MemoryStore();
  l2StoreContract(() => store, { describe, test });
});

describe("MemoryStore with Memcached's limits (250-byte keys, 1 MiB records)", () => {
  const store = new MemoryStore({ limits: { maxKeyBytes: 250, maxRecordBytes: 1024 * 1024 } });
  l2StoreContract(() => store, { describe, test });
});

describe("MemoryBus", () => {
  const bus = new MemoryBus();
  busContract(() => bus, { describe, test });
});
