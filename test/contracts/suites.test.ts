import { afterEach, describe, expect, test } from "vitest";
import { MemoryBus } from "../../src/index.js";
import type { Bus, BusConnection, BusHandlers } from "../../src/backend.js";
import { BUS_CONTRACT_TESTS, busContract, FakeClock, L2_STORE_CONTRACT_TESTS, l2StoreContract, MemoryStore } from "../../src/testing.js";

/**
 * The suites themselves: registered through any runner's `describe`/`test`, and each of their
 * tests fails for the backend bug it is there to catch. The suites are run here by a runner that
 * only collects the tests, then each test is called directly.
 */
interface Collected {
  name: string;
  fn: (context?: unknown) => Promise<void>;
  skipped: boolean;
}

function collector() {
  const tests: Collected[] = [];
  const suites: string[] = [];
  const testFn = (name: string, fn: Collected["fn"]) => void tests.push({ name, fn, skipped: false });
  testFn.skip = (name: string, fn: Collected["fn"]) => void tests.push({ name, fn, skipped: true });
  return { tests, suites, describe: (name: string, fn: () => void) => (suites.push(name), fn()), test: testFn };
}

/** The names of the tests that fail, each with the start of its error. */
async function failing(register: (runner: { describe: (name: string, fn: () => void) => void; test: (name: string, fn: Collected["fn"]) => void }) => void): Promise<Record<string, string>> {
  const c = collector();
  register(c);
  const failed: Record<string, string> = {};
  for (const t of c.tests) {
    try {
      await t.fn({ skip: () => {} });
    } catch (error) {
      failed[t.name] = String(error).slice(0, 300);
    }
  }
  return failed;
}

/** Short names for the suites' tests, in their order. */
function named<K extends string>(keys: K[], names: readonly string[]): Record<K, string> {
  return Object.fromEntries(keys.map((k, i) => [k, names[i]!])) as Record<K, string>;
}
const STORE = named(["missing", "roundTrip", "unconditional", "casMissing", "casRecord", "casTombstone", "notRecords", "race", "expiry", "longTtl", "getMany", "limits", "close"], L2_STORE_CONTRACT_TESTS);
const BUS = named(["delivery", "text", "order", "channels", "close"], BUS_CONTRACT_TESTS);

test("the short names cover every test once", () => {
  expect(Object.values(STORE)).toEqual(L2_STORE_CONTRACT_TESTS);
  expect(Object.values(BUS)).toEqual(BUS_CONTRACT_TESTS);
  expect(new Set([...L2_STORE_CONTRACT_TESTS, ...BUS_CONTRACT_TESTS]).size).toBe(L2_STORE_CONTRACT_TESTS.length + BUS_CONTRACT_TESTS.length);
});

// ------------------------------------------------------------------------ broken stores

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads the generation, then writes in a later turn: another write can come in between. */
class NonAtomicStore extends MemoryStore {
  override async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    if (ifGeneration === undefined) return super.set(key, record, ttlMs);
    const current = await this.get(key);
    await sleep(1);
    if (((current && /^LC1\|([^|]*)\|/.exec(current)?.[1]) || "") !== ifGeneration) return false;
    return super.set(key, record, ttlMs);
  }
}

/** Never expires anything. */
class NoExpiryStore extends MemoryStore {
  override set(key: string, record: string, _ttlMs: number, ifGeneration?: string): Promise<boolean> {
    return super.set(key, record, Infinity, ifGeneration);
  }
}

/** Takes the second `|` field of anything as its generation. */
class NaiveGenerationStore extends MemoryStore {
  override set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    if (ifGeneration !== undefined && (this.records.get(key)?.record.split("|")[1] ?? "") !== ifGeneration) return Promise.resolve(false);
    return super.set(key, record, ttlMs);
  }
}

/** Memcached's trap: a ttl over 30 days read as a date in 1970, so the record is gone at once. */
class ThirtyDayStore extends MemoryStore {
  override async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    const written = await super.set(key, record, ttlMs, ifGeneration);
    if (written && ttlMs > 30 * 24 * 3600_000) this.records.get(key)!.expires = Math.floor(ttlMs / 1000);
    return written;
  }
}

/** getMany answers in key order, not in the order asked. */
class SortedGetManyStore extends MemoryStore {
  override async getMany(keys: string[]): Promise<(string | undefined)[]> {
    return super.getMany([...keys].sort());
  }
}

/** Stores text as Latin-1 bytes. */
class Latin1Store extends MemoryStore {
  override set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    return super.set(key, Buffer.from(record, "latin1").toString("latin1"), ttlMs, ifGeneration);
  }
}

/** Forgets everything when one instance closes. */
class ForgetfulStore extends MemoryStore {
  override async close(): Promise<void> {
    this.records.clear();
  }
}

describe("l2StoreContract fails the store bug it is there to catch", () => {
  const cases: [string, () => MemoryStore, string[]][] = [
    ["a correct store", () => new MemoryStore(), []],
    ["a conditional write that is not atomic", () => new NonAtomicStore(), [STORE.race]],
    ["no expiry", () => new NoExpiryStore(), [STORE.expiry]],
    ['a generation read from content that is not a record', () => new NaiveGenerationStore(), [STORE.notRecords]],
    ["ttls over 30 days read as dates", () => new ThirtyDayStore(), [STORE.longTtl]],
    ["getMany in another order", () => new SortedGetManyStore(), [STORE.getMany, STORE.expiry, STORE.limits]],
    ["text stored as Latin-1", () => new Latin1Store(), [STORE.roundTrip, STORE.limits]],
    ["close() that drops the records", () => new ForgetfulStore(), [STORE.close]],
  ];
  test.each(cases)("%s", async (_name, make, expected) => {
    const store = make();
    const failed = await failing((runner) => l2StoreContract(() => store, { ...runner, waitMs: 300 }));
    expect(Object.keys(failed).sort()).toEqual([...expected].sort());
  });

  test("with advanceTime, expiry follows the store's clock", async () => {
    const clock = new FakeClock();
    const ok = new MemoryStore({ clock });
    expect(await failing((runner) => l2StoreContract(() => ok, { ...runner, advanceTime: (ms) => clock.advance(ms) }))).toEqual({});
    // A store on the real clock does not expire when the test moves its clock.
    const realClock = new MemoryStore();
    const failed = await failing((runner) => l2StoreContract(() => realClock, { ...runner, advanceTime: (ms) => clock.advance(ms) }));
    expect(Object.keys(failed).sort()).toEqual([STORE.expiry, STORE.longTtl].sort());
  });
});

// ------------------------------------------------------------------------ broken buses

/** A MemoryBus whose connections misbehave as `change` says. */
function brokenBus(change: (inner: BusConnection, handlers: BusHandlers, deliver: (m: string) => void) => Partial<BusConnection> & { onMessage?: (m: string) => void }, channelOf: (channel: string) => string = (c) => c): Bus {
  const inner = new MemoryBus();
  return {
    async connect(channel, handlers) {
      let onMessage = (m: string) => handlers.onMessage(m);
      const relay: BusHandlers = { ...handlers, onMessage: (m) => onMessage(m), onDisconnect: () => handlers.onDisconnect(), onReconnect: () => handlers.onReconnect(), onError: (e, op) => handlers.onError(e, op) };
      const connection = await inner.connect(channelOf(channel), relay);
      const changed = change(connection, handlers, (m) => handlers.onMessage(m));
      if (changed.onMessage) onMessage = changed.onMessage;
      return { publish: changed.publish ?? ((m) => connection.publish(m)), close: changed.close ?? (() => connection.close()) };
    },
  };
}

describe("busContract fails the bus bug it is there to catch", () => {
  const cases: [string, () => Bus, string[]][] = [
    ["a correct bus", () => new MemoryBus(), []],
    ["a bus that delivers nothing", () => brokenBus(() => ({ publish: async () => {} })), [BUS.delivery, BUS.text, BUS.order, BUS.channels, BUS.close]],
    ["a bus that delivers twice", () => brokenBus((_c, _h, deliver) => ({ onMessage: (m) => (deliver(m), deliver(m)) })), [BUS.delivery, BUS.text, BUS.order, BUS.channels]],
    ["a bus that reorders", () => brokenBus((_c, _h, deliver) => {
      let n = 0; // every third message is held back a little
      return { onMessage: (m) => (n++ % 3 !== 1 ? deliver(m) : void setTimeout(() => deliver(m), 3)) };
    }), [BUS.order]],
    ["a bus that normalizes line ends", () => brokenBus((_c, _h, deliver) => ({ onMessage: (m) => deliver(m.replace(/\r\n?/g, "\n")) })), [BUS.text]],
    ["a bus with one channel for all", () => brokenBus(() => ({}), () => "everything"), [BUS.channels]],
    ["a bus that delivers after close", () => brokenBus(() => ({ close: async () => {} })), [BUS.close]],
  ];
  test.each(cases)("%s", async (_name, make, expected) => {
    const bus = make();
    const failed = await failing((runner) => busContract(() => bus, { ...runner, waitMs: 300, quietMs: 50 }));
    expect(Object.keys(failed).sort()).toEqual([...expected].sort());
  });
});

// ------------------------------------------------------------------------ registration

describe("registering with a runner", () => {
  const saved = { describe: (globalThis as Record<string, unknown>).describe, it: (globalThis as Record<string, unknown>).it };
  afterEach(() => Object.assign(globalThis, saved));

  test("under vitest, without describe and test (and without vitest's globals), the suites say what to pass", () => {
    expect(() => l2StoreContract(() => new MemoryStore())).toThrow(/under vitest, pass the runner: l2StoreContract\(make, \{ describe, test \}\)/);
    expect(() => busContract(() => new MemoryBus())).toThrow(/under vitest, pass the runner: busContract/);
    expect(() => l2StoreContract(() => new MemoryStore(), { describe: () => {} })).toThrow(/needs both `describe` and `test`/);
    expect(() => l2StoreContract(undefined as never)).toThrow(TypeError);
  });

  test("global describe and it (Jest, Mocha, vitest with globals) are found by themselves; `name` titles the block", () => {
    const c = collector();
    Object.assign(globalThis, { describe: c.describe, it: c.test });
    busContract(() => new MemoryBus(), { name: "my bus" });
    expect(c.suites).toEqual(["my bus"]);
    expect(c.tests.map((t) => t.name)).toEqual(BUS_CONTRACT_TESTS);
  });

  test("skip: the named tests are registered as skipped; a name that is not a test is a TypeError", () => {
    const c = collector();
    l2StoreContract(() => new MemoryStore(), { ...c, skip: [STORE.race, STORE.limits] });
    expect(c.suites).toEqual(["L2Store contract"]);
    expect(c.tests.filter((t) => t.skipped).map((t) => t.name)).toEqual([STORE.race, STORE.limits]);
    expect(c.tests).toHaveLength(L2_STORE_CONTRACT_TESTS.length);
    expect(() => l2StoreContract(() => new MemoryStore(), { ...collector(), skip: ["concurrency"] })).toThrow(/no test named "concurrency"/);
  });

  test("a store without getMany: that test marks itself skipped through the runner's context", async () => {
    const c = collector();
    const store = { get: async () => undefined, set: async () => true };
    l2StoreContract(() => store, c);
    let skipped = 0;
    await c.tests.find((t) => t.name === STORE.getMany)!.fn({ skip: () => skipped++ });
    expect(skipped).toBe(1);
  });

  test("each store a test makes is connected before use and closed at its end, also when the test fails", async () => {
    const log: string[] = [];
    let n = 0;
    const make = () => {
      const id = ++n;
      const inner = new MemoryStore();
      return { get: (k: string) => inner.get(k), set: () => Promise.reject(new Error("down")), connect: async () => void log.push(`connect ${id}`), close: async () => void log.push(`close ${id}`) };
    };
    const failed = await failing((runner) => l2StoreContract(make, runner));
    expect(Object.keys(failed).length).toBeGreaterThan(0);
    const opened = log.filter((l) => l.startsWith("connect")).map((l) => l.slice(8));
    const closed = log.filter((l) => l.startsWith("close")).map((l) => l.slice(6));
    expect(closed.sort()).toEqual(opened.sort());
  });
});
