import sjson from "secure-json-parse";

/** Encodes values for L2. The text is stored inside layercache's envelope. */
export interface Serializer {
  serialize(value: unknown): string;
  deserialize(text: string): unknown;
}

function rejectNonJson(_key: string, value: unknown): unknown {
  const t = typeof value;
  if (t === "function" || t === "symbol") throw new TypeError(`a ${t} is not JSON data`);
  return value;
}

const PARSE_OPTIONS = { protoAction: "remove", constructorAction: "remove" } as const;

/**
 * The default serializer: JSON, strict about what it encodes (functions, symbols, bigints and
 * cycles are errors rather than silently dropped) and inert against prototype pollution on the
 * way back (`__proto__` and `constructor.prototype` keys are removed while parsing).
 */
export const jsonSerializer: Serializer = {
  serialize(value: unknown): string {
    const text = JSON.stringify(value, rejectNonJson);
    if (text === undefined) throw new TypeError(`a ${typeof value} is not JSON data`);
    return text;
  },
  deserialize(text: string): unknown {
    // Text that cannot spell a dangerous key (no "__proto__", no "constructor", no \u escape that
    // could hide one) is plain JSON; secure-json-parse handles the rest.
    if (!text.includes("__proto__") && !text.includes("constructor") && !text.includes("\\u")) return JSON.parse(text);
    return sjson.parse(text, undefined, PARSE_OPTIONS);
  },
};
