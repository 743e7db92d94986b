import { describe, expect, test } from "vitest";
import { CorruptRecordError, decodeRecord, encodeRecord, encodeTombstone, generationOf } from "../src/l2/envelope.js";

describe("L2 record format", () => {
  test("round trip, with whole, fractional and infinite durations", () => {
    for (const t of [
      { born: 1_700_000_000_123, ttl: 60_000, maxStale: 60_000, failSafe: 300_000 },
      { born: 1_700_000_000_123.5, ttl: 1234.567, maxStale: 0, failSafe: 0 },
      { born: 5, ttl: Infinity, maxStale: Infinity, failSafe: Infinity },
    ]) {
      const text = encodeRecord("g1", t, '{"a":"x|y"}');
      expect(decodeRecord(text)).toEqual({ gen: "g1", born: t.born, times: t, payload: '{"a":"x|y"}' });
      expect(generationOf(text)).toBe("g1");
    }
  });

  test("tombstones", () => {
    const text = encodeTombstone("g2", 42);
    expect(decodeRecord(text)).toEqual({ gen: "g2", born: 42 });
    expect(generationOf(text)).toBe("g2");
  });

  test.each([
    ["not an envelope", "hello"],
    ["other version", "LC2|g|1|2|3|4|x"],
    ["too few fields", "LC1|g|1|2"],
    ["empty generation", "LC1||1|2|3|4|x"],
    ["bad write time", "LC1|g|soon|2|3|4|x"],
    ["negative window", "LC1|g|1|-2|3|4|x"],
    ["missing window", "LC1|g|1||3|4|x"],
    ["no fields at all", "LC1|"],
  ])("%s is corrupt", (_name, text) => {
    expect(() => decodeRecord(text)).toThrow(CorruptRecordError);
  });

  test("non-text is corrupt", () => {
    expect(() => decodeRecord(42)).toThrow(CorruptRecordError);
  });
});
