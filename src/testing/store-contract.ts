import type { L2Store } from "../l2/contract.js";
import { encodeRecord, encodeTombstone } from "../l2/envelope.js";
import { isRecordError } from "../shared/errors.js";
import { check, checkText, eventually, Opened, register, testNames, TEXTS, textOfBytes, uniqueId, type ContractCase, type ContractOptions } from "./runner.js";

export interface L2StoreContractOptions extends ContractOptions {
  /** First part of every key the suite writes (each test adds a unique part after it). Default `"layercache-contract"`. */
  keyPrefix?: string;
  /**
   * Moves the clock the store expires records by, when it has one the test controls (a
   * `FakeClock` given to a `MemoryStore`, say): expiry is then checked exactly and without
   * waiting. Without it, expiry is checked in real time with short ttls and bounded waits.
   */
  advanceTime?: (ms: number) => void | Promise<void>;
}

/** Makes a store on the backend under test. Every store it makes must see the same records: they are the instances of a service sharing one backend. */
export type MakeStore = () => L2Store | Promise<L2Store>;

const BORN = 1_700_000_000_000;
const MINUTE = 60_000;
const DAY = 24 * 3600_000;

/** A layercache record of generation `gen` holding `payload`. */
function record(gen: string, payload: string): string {
  return encodeRecord(gen, { born: BORN, ttl: MINUTE, maxStale: 0, failSafe: 0 }, payload);
}

/** Payloads a serializer may produce (and a custom one may make stranger still). */
const PAYLOADS: (readonly [string, string])[] = [["json", '{"id":1,"name":"Ada","tags":["a","b"],"nested":{"n":null}}'], ...TEXTS, ["empty", ""]];

/** Keys of every shape a cache may use (prefix, scope and key, all well-formed Unicode). */
const KEY_NAMES = ["plain", "ünï 键 🔑", "with space", "a:b:c", "{tag}x", "*?[]", "%_", "quote'\"", "back\\slash", "line\nbreak\ttab"];

const GENERATIONS = ["ab12cd.1", "ab12cd.2", "x%_*.?[1]"] as const;
const [G1, G2, G3] = GENERATIONS;

/** Content that is not a readable layercache record: its generation is "". */
const NOT_RECORDS: [string, string][] = [
  ["plain text", "plain text"],
  ["empty text", ""],
  ["JSON", '{"gen":"ab12cd.1"}'],
  ["another format version", "LC2|ab12cd.1|1|2|3|4|{}"],
  ["a header with no end", "LC1|ab12cd.1"],
  ["the bare version", "LC1"],
  ["lower case", "lc1|ab12cd.1|1|2|3|4|x"],
];

const missing = (v: unknown): boolean => v === null || v === undefined;

/** What one test opened: the stores (closed at its end) and its own key space. */
class Fixture extends Opened<L2Store> {
  readonly prefix: string;
  readonly #make: MakeStore;

  constructor(make: MakeStore, keyPrefix: string) {
    super(async (store) => void (await store.close?.()));
    this.#make = make;
    this.prefix = `${keyPrefix}:${uniqueId()}:`;
  }

  /** A store, connected as the cache connects it. */
  async store(): Promise<L2Store> {
    const store = this.add(await this.#make());
    await store.connect?.();
    return store;
  }

  key(name: string): string {
    return this.prefix + name;
  }
}

async function expectRecord(store: L2Store, key: string, expected: string, what: string): Promise<void> {
  checkText(await store.get(key), expected, `${what}: get(${JSON.stringify(key)})`);
}

async function expectMissing(store: L2Store, key: string, what: string): Promise<void> {
  const v = await store.get(key);
  check(missing(v), `${what}: get(${JSON.stringify(key)}) should find nothing, got ${JSON.stringify(v)}`);
}

/** A conditional write that must give `expected`. */
async function expectWrite(store: L2Store, key: string, rec: string, ifGeneration: string | undefined, expected: boolean, what: string): Promise<void> {
  const written = await store.set(key, rec, MINUTE, ifGeneration);
  check(written === expected, `${what}: set(…, ifGeneration ${ifGeneration === undefined ? "none" : JSON.stringify(ifGeneration)}) should resolve ${expected}, got ${JSON.stringify(written)}`);
}

function cases(make: MakeStore, options: L2StoreContractOptions): ContractCase[] {
  const keyPrefix = options.keyPrefix ?? "layercache-contract";
  const waitMs = options.waitMs ?? 5000;
  const advance = options.advanceTime;
  const test = (name: string, body: (f: Fixture, skip: () => void) => Promise<void>): ContractCase => ({
    name,
    run: (skip) => {
      const f = new Fixture(make, keyPrefix);
      return f.around(() => body(f, skip));
    },
  });

  return [
    test("a key never written reads as null or undefined", async (f) => {
      const s = await f.store();
      await expectMissing(s, f.key("never"), "a missing key");
      if (s.getMany) {
        const got = await s.getMany([f.key("never-1"), f.key("never-2")]);
        check(got.length === 2 && got.every(missing), `getMany of two missing keys should give two nulls or undefineds, got ${JSON.stringify(got)}`);
      }
    }),

    test("get returns exactly the text set stored, for every payload and key shape, on every instance", async (f) => {
      const [a, b] = [await f.store(), await f.store()];
      const written: [string, string][] = [
        ...PAYLOADS.map(([name, payload]): [string, string] => [f.key(`payload:${name}`), record(G1, payload)]),
        ...KEY_NAMES.map((name, i): [string, string] => [f.key(name), record(G1, `key ${i}`)]),
        [f.key("tombstone"), encodeTombstone(G1, BORN)],
      ];
      for (const [key, rec] of written) await expectWrite(a, key, rec, undefined, true, "an unconditional write");
      for (const [key, rec] of written) {
        await expectRecord(a, key, rec, "read on the instance that wrote it");
        await expectRecord(b, key, rec, "read on another instance");
      }
    }),

    test("an unconditional set replaces whatever is there (a record of another generation, a tombstone, other content) and resolves true", async (f) => {
      const s = await f.store();
      const k = f.key("k");
      for (const [i, rec] of [record(G1, "1"), record(G2, "2"), encodeTombstone(G3, BORN), "not a record", record(G1, "3"), record(G1, "4")].entries()) {
        await expectWrite(s, k, rec, undefined, true, `write ${i + 1}`);
        await expectRecord(s, k, rec, `after write ${i + 1}`);
      }
    }),

    test('a conditional write to a missing key succeeds when it expects "" and fails when it expects a generation', async (f) => {
      const [a, b] = [await f.store(), await f.store()];
      await expectWrite(a, f.key("k1"), record(G1, "v"), G1, false, "expecting a generation where there is no record");
      await expectMissing(b, f.key("k1"), "after a failed conditional write");
      await expectWrite(a, f.key("k2"), record(G1, "v"), "", true, 'expecting "" where there is no record');
      await expectRecord(b, f.key("k2"), record(G1, "v"), 'after a conditional write expecting ""');
    }),

    test("a conditional write to a record succeeds only when it expects that record's generation, on any instance", async (f) => {
      const [a, b] = [await f.store(), await f.store()];
      const k = f.key("k");
      const first = record(G1, "first");
      await expectWrite(a, k, first, undefined, true, "the first write");
      for (const expected of [G2, "", G3, "ab12cd", "ab12cd.10"]) {
        await expectWrite(b, k, record(G2, "lost"), expected, false, `another instance, a record of generation ${JSON.stringify(G1)}`);
        await expectRecord(a, k, first, `after a conditional write expecting ${JSON.stringify(expected)}`);
      }
      await expectWrite(b, k, record(G2, "second"), G1, true, "expecting the record's generation");
      await expectRecord(a, k, record(G2, "second"), "after the conditional write");
      await expectWrite(a, k, record(G3, "third"), G1, false, "expecting the generation it replaced");
      await expectWrite(a, k, record(G3, "third"), G2, true, "expecting the new generation");
      await expectRecord(b, k, record(G3, "third"), "after the second conditional write");
    }),

    test("a tombstone has a generation: a conditional write must expect it", async (f) => {
      const s = await f.store();
      const k = f.key("k");
      await expectWrite(s, k, encodeTombstone(G1, BORN), undefined, true, "writing a tombstone");
      await expectWrite(s, k, record(G2, "v"), "", false, 'expecting "" where a tombstone is');
      await expectWrite(s, k, record(G2, "v"), G2, false, "expecting another generation where a tombstone is");
      await expectWrite(s, k, record(G2, "v"), G1, true, "expecting the tombstone's generation");
      await expectRecord(s, k, record(G2, "v"), "after replacing the tombstone");
    }),

    test('content that is not a layercache record has generation "": a conditional write expecting "" replaces it', async (f) => {
      const s = await f.store();
      for (const [name, content] of NOT_RECORDS) {
        const k = f.key(`not-record:${name}`);
        await expectWrite(s, k, content, undefined, true, `storing ${name}`);
        await expectWrite(s, k, record(G2, "v"), G1, false, `expecting ${JSON.stringify(G1)} over ${name}`);
        await expectWrite(s, k, record(G2, "v"), "", true, `expecting "" over ${name}`);
        await expectRecord(s, k, record(G2, "v"), `after replacing ${name}`);
      }
    }),

    test("of concurrent conditional writes expecting the same generation, from two instances, exactly one wins", async (f) => {
      const [a, b] = [await f.store(), await f.store()];
      const writers = 16;
      for (let round = 0; round < 6; round++) {
        const k = f.key(`race-${round}`);
        let expected = "";
        if (round % 3 === 1) {
          await expectWrite(a, k, record(G1, "before"), undefined, true, "the record raced for");
          expected = G1;
        } else if (round % 3 === 2) {
          await expectWrite(a, k, encodeTombstone(G1, BORN), undefined, true, "the tombstone raced for");
          expected = G1;
        }
        const recs = Array.from({ length: writers }, (_, i) => record(`w${round}.${i}`, `writer ${i}`));
        const results = await Promise.all(recs.map((rec, i) => (i % 2 === 0 ? a : b).set(k, rec, MINUTE, expected)));
        const winners = results.flatMap((won, i) => (won === true ? [i] : []));
        check(winners.length === 1, `${winners.length} of ${writers} concurrent writes expecting ${JSON.stringify(expected)} won (round ${round + 1}): ${JSON.stringify(results)}`);
        await expectRecord(b, k, recs[winners[0]!]!, "the winner's record");
      }
    }),

    test("a record expires after its ttl; a set replaces the ttl too; a conditional write expecting \"\" then succeeds", async (f) => {
      const s = await f.store();
      const [short, extended, long] = [f.key("short"), f.key("extended"), f.key("long")];
      const ttl = advance ? 1000 : 400;
      const started = Date.now();
      await expectWrite(s, long, record(G1, "long"), undefined, true, "a record with a long ttl");
      check((await s.set(short, record(G1, "short"), ttl)) === true, "a set with a short ttl should resolve true");
      check((await s.set(extended, record(G1, "extended"), ttl)) === true, "a set with a short ttl should resolve true");
      check((await s.set(extended, record(G2, "extended"), MINUTE)) === true, "a set should resolve true");
      if (advance) {
        await advance(ttl / 2);
        await expectRecord(s, short, record(G1, "short"), "half-way through its ttl");
        await advance(ttl);
        await expectMissing(s, short, "past its ttl");
      } else {
        const early = await s.get(short);
        // Only a read that surely ended before the ttl ran out must find the record.
        if (Date.now() - started < ttl) checkText(early, record(G1, "short"), "a record read before its ttl ran out");
        await eventually(`expiry of a record with a ttl of ${ttl} ms`, async () => missing(await s.get(short)), ttl + waitMs);
      }
      await expectRecord(s, extended, record(G2, "extended"), "a record whose short ttl was replaced by a longer one");
      await expectRecord(s, long, record(G1, "long"), "a record with a long ttl");
      if (s.getMany) {
        const got = await s.getMany([short, long]);
        check(missing(got[0]), `getMany of an expired record should give null or undefined, got ${JSON.stringify(got[0])}`);
      }
      await expectWrite(s, short, record(G2, "again"), G1, false, "expecting the generation of an expired record");
      await expectWrite(s, short, record(G2, "again"), "", true, 'expecting "" where a record expired');
    }),

    test("ttl Infinity never expires; long ttls (over 30 days) and fractional ttls are kept, never cut short", async (f) => {
      const s = await f.store();
      const ttls: [string, number][] = [
        ["Infinity", Infinity],
        ["31 days", 31 * DAY],
        ["400 days", 400 * DAY],
        ["a fractional 2 minutes", 2 * MINUTE + 0.5],
      ];
      for (const [name, ttl] of ttls) check((await s.set(f.key(name), record(G1, name), ttl)) === true, `a set with ttl ${name} should resolve true`);
      for (const [name, ttl] of ttls) check((await s.set(f.key(`cas ${name}`), record(G1, name), ttl, "")) === true, `a conditional set with ttl ${name} should resolve true`);
      for (const [name] of ttls) {
        await expectRecord(s, f.key(name), record(G1, name), `a record with ttl ${name}`);
        await expectRecord(s, f.key(`cas ${name}`), record(G1, name), `a conditionally written record with ttl ${name}`);
      }
      if (advance) {
        await advance(30 * DAY);
        for (const name of ["Infinity", "31 days", "400 days"]) await expectRecord(s, f.key(name), record(G1, name), `30 days later, a record with ttl ${name}`);
        await expectMissing(s, f.key("a fractional 2 minutes"), "30 days later, a record with a ttl of 2 minutes");
        await advance(370 * DAY);
        await expectRecord(s, f.key("Infinity"), record(G1, "Infinity"), "400 days later, a record with ttl Infinity");
      }
    }),

    test("getMany returns the records in key order, null or undefined for missing keys", async (f, skip) => {
      const s = await f.store();
      if (!s.getMany) return skip(); // optional: the store has none
      const keys = Array.from({ length: 300 }, (_, i) => f.key(`many-${i}`));
      const expected = keys.map((_, i) => (i % 3 === 0 ? undefined : record(G1, `value ${i}`)));
      for (const [i, rec] of expected.entries()) if (rec !== undefined) await expectWrite(s, keys[i]!, rec, undefined, true, "writing a record");
      for (const ask of [keys, [...keys].reverse(), [keys[1]!, keys[0]!, keys[1]!, keys[2]!, keys[1]!]]) {
        const got = await s.getMany(ask);
        check(got.length === ask.length, `getMany of ${ask.length} keys gave ${got.length} results`);
        for (const [i, key] of ask.entries()) {
          const want = expected[keys.indexOf(key)];
          if (want === undefined) check(missing(got[i]), `getMany: result ${i} (a missing key) should be null or undefined, got ${JSON.stringify(got[i])}`);
          else {
            check(!isRecordError(got[i]), `getMany: result ${i} is a RecordError: ${(got[i] as Error).message}`);
            checkText(got[i], want, `getMany: result ${i}`);
          }
        }
      }
    }),

    test("keys and records as large as the store's limits (without limits: a 4 KiB key, a record over 1 MiB)", async (f) => {
      const s = await f.store();
      const limits = (s as { limits?: { maxKeyBytes?: number; maxRecordBytes?: number } }).limits;
      const keyBytes = Math.min(limits?.maxKeyBytes ?? 4096, 64 * 1024);
      const recordBytes = Math.min(limits?.maxRecordBytes ?? 1024 * 1024 + 1024, 8 * 1024 * 1024);
      const key = textOfBytes(f.key("long-key:"), keyBytes);
      check(Buffer.byteLength(key) === keyBytes, `the suite could not make a key of ${keyBytes} bytes from the prefix ${JSON.stringify(f.prefix)}: shorten keyPrefix`);
      const head = record(G1, "");
      const big = textOfBytes(head, Math.max(recordBytes, Buffer.byteLength(head)));
      await expectWrite(s, key, record(G1, "at the key limit"), undefined, true, `a key of ${keyBytes} bytes`);
      await expectRecord(s, key, record(G1, "at the key limit"), `a key of ${keyBytes} bytes`);
      await expectWrite(s, key, record(G2, "again"), G1, true, `a conditional write to a key of ${keyBytes} bytes`);
      await expectWrite(s, f.key("big"), big, undefined, true, `a record of ${recordBytes} bytes`);
      await expectRecord(s, f.key("big"), big, `a record of ${recordBytes} bytes`);
      await expectWrite(s, f.key("big"), big.replace(`|${G1}|`, `|${G2}|`), G1, true, `a conditional write of a record of ${recordBytes} bytes`);
      if (s.getMany) {
        const got = await s.getMany([key, f.key("big")]);
        checkText(got[0], record(G2, "again"), `getMany of a key of ${keyBytes} bytes`);
        checkText(got[1], big.replace(`|${G1}|`, `|${G2}|`), `getMany of a record of ${recordBytes} bytes`);
      }
    }),

    test("close() resolves, and what the instance wrote stays for the others", async (f) => {
      const [a, b] = [await f.store(), await f.store()];
      await expectWrite(a, f.key("k"), record(G1, "v"), undefined, true, "a write");
      await f.close(a);
      await expectRecord(b, f.key("k"), record(G1, "v"), "read on another instance after the writer closed");
      const c = await f.store();
      await expectRecord(c, f.key("k"), record(G1, "v"), "read on an instance made after the writer closed");
      await expectWrite(c, f.key("k"), record(G2, "w"), G1, true, "a conditional write on an instance made after the writer closed");
    }),
  ];
}

/**
 * Registers the L2 store contract — what every store must do for the cache to keep its promises —
 * as one `describe` block of tests, each on a key space of its own. `makeStore` is called for every
 * store a test needs (some need two, to check what holds across instances); every store it makes
 * is connected with `connect()` (if it has one) and closed with `close()` at the test's end.
 */
export function l2StoreContract(makeStore: MakeStore, options: L2StoreContractOptions = {}): void {
  register("l2StoreContract", "L2Store contract", makeStore, cases, options);
}

/** The names of the contract's tests (for `skip`). */
export const L2_STORE_CONTRACT_TESTS: readonly string[] = testNames(cases);
