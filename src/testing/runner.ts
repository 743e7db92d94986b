import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import { preview } from "../shared/errors.js";

/** A test body as the contract suites write it; `context` is the runner's (used only to mark a test skipped). */
export type ContractTestFn = (context?: unknown) => Promise<void>;

/**
 * The functions of a test runner the contract suites register their tests with: `describe` and
 * `test` (or `it`) from `vitest`, `node:test`, Jest or Mocha. Nothing else is needed: each test
 * opens and closes what it uses itself, so no hooks are called.
 */
export interface TestRunner {
  describe(name: string, fn: () => void): unknown;
  test(name: string, fn: ContractTestFn): unknown;
}

/** Options every contract suite takes. */
export interface ContractOptions {
  /**
   * The runner's `describe` and `test` (or `it`). Needed under vitest, unless its `globals` are on;
   * when they are left out, global `describe` and `test`/`it` are used (Jest, Mocha, vitest with
   * globals), else those of `node:test`.
   */
  describe?: (name: string, fn: () => void) => unknown;
  test?: (name: string, fn: ContractTestFn) => unknown;
  it?: (name: string, fn: ContractTestFn) => unknown;
  /** Title of the suite's `describe` block. */
  name?: string;
  /** Names of tests to leave out, exactly as the suite names them (they are registered as skipped where the runner can). */
  skip?: string[];
  /** Longest wait, in ms, for something that happens asynchronously (a delivery, an expiry). Default 5000. */
  waitMs?: number;
}

type AnyFn = (...args: any[]) => unknown;

/** The runner to register with: the one given, else the globals, else node:test. */
function runnerOf(options: ContractOptions, suite: string): TestRunner {
  const test = options.test ?? options.it;
  if (options.describe !== undefined || test !== undefined) {
    if (typeof options.describe !== "function" || typeof test !== "function") throw new TypeError(`layercache/testing: ${suite} needs both \`describe\` and \`test\` (or \`it\`) of the runner`);
    return { describe: options.describe, test: test as TestRunner["test"] };
  }
  const g = globalThis as { describe?: unknown; test?: unknown; it?: unknown };
  const globalTest = g.test ?? g.it;
  if (typeof g.describe === "function" && typeof globalTest === "function") return { describe: g.describe as TestRunner["describe"], test: globalTest as TestRunner["test"] };
  // Inside a vitest worker (not the environment variable VITEST: child processes inherit it).
  if ((globalThis as { __vitest_worker__?: unknown }).__vitest_worker__ !== undefined) {
    throw new TypeError(`layercache/testing: under vitest, pass the runner: ${suite}(make, { describe, test }) with describe and test imported from "vitest" (or turn on vitest's \`globals\`)`);
  }
  // Loaded only now, and only when no other runner is there: importing this module never starts node:test.
  const nodeTest = createRequire(join(process.cwd(), "noop.js"))("node:test") as { describe: TestRunner["describe"]; test: TestRunner["test"] };
  return { describe: nodeTest.describe, test: nodeTest.test };
}

/** One test of a suite: its name (shown by the runner, used in `skip`) and its body. */
export interface ContractCase {
  name: string;
  run: (skip: () => void) => Promise<void>;
}

/**
 * Registers the cases `build` makes for `make` in a `describe` block named `title` (or
 * `options.name`), with the runner of `options`.
 */
export function register<M, O extends ContractOptions>(suite: string, title: string, make: M, build: (make: M, options: O) => ContractCase[], options: O): void {
  if (typeof make !== "function") throw new TypeError(`layercache/testing: ${suite}() needs a function that makes what it tests`);
  const cases = build(make, options);
  const names = new Set(cases.map((c) => c.name));
  const skip = new Set(options.skip ?? []);
  for (const name of skip) if (!names.has(name)) throw new TypeError(`layercache/testing: ${suite} has no test named ${JSON.stringify(name)} to skip (its tests: ${[...names].map((n) => JSON.stringify(n)).join(", ")})`);
  const runner = runnerOf(options, suite);
  runner.describe(options.name ?? title, () => {
    for (const c of cases) {
      if (skip.has(c.name)) {
        const skipped = (runner.test as unknown as { skip?: AnyFn }).skip;
        if (typeof skipped === "function") skipped.call(runner.test, c.name, async () => {});
        continue;
      }
      // No declared parameter: Jest and Mocha would take one for a `done` callback. The runner's
      // context (vitest, node:test) is only used to mark a test skipped: vitest's `context.skip()`
      // ends the test by throwing, node:test's `t.skip()` only marks it.
      runner.test(c.name, function () {
        const context = arguments[0] as { skip?: AnyFn } | undefined;
        return c.run(() => context?.skip?.());
      });
    }
  });
}

/**
 * What a test opened (stores, connections), closed at its end in the order they were opened.
 */
export class Opened<T> {
  readonly #items: T[] = [];
  readonly #close: (item: T) => Promise<void>;
  constructor(close: (item: T) => Promise<void>) {
    this.#close = close;
  }
  add(item: T): T {
    this.#items.push(item);
    return item;
  }
  /** Closes `item` now; it is not closed again at the end. */
  async close(item: T): Promise<void> {
    this.#items.splice(this.#items.indexOf(item), 1);
    await this.#close(item);
  }
  /** Runs a test's `body`, then closes what it opened; a failing close fails the test, unless the body failed already (its error says more). */
  async around(body: () => Promise<void>): Promise<void> {
    let passed = false;
    try {
      await body();
      passed = true;
    } finally {
      try {
        for (const item of this.#items.splice(0)) await this.#close(item);
      } catch (error) {
        if (passed) throw error;
      }
    }
  }
}

/** The names of the tests `build` makes, in order (`build` is not given anything to call). */
export function testNames<M, O>(build: (make: M, options: O) => ContractCase[]): readonly string[] {
  const unused = (() => {
    throw new Error("not called");
  }) as M;
  return build(unused, {} as O).map((c) => c.name);
}

/** Text a store or bus must carry exactly as given: what a serializer may produce, and stranger. */
export const TEXTS: readonly (readonly [name: string, text: string])[] = [
  ["unicode", "ünïcødé ключ 键 🔑 👩‍👩‍👧 e\u0301 \u2028\u2029 \uFEFF"],
  ["bars", "|a|b||c|"],
  ["newlines", "line 1\nline 2\r\nline 3\r"],
  ["quotes and escapes", "\"double\" 'single' `back` \\ \\n %s %_ * ? [x] {y} $1 ; -- /* */ <tag>&amp;"],
  ["spaces", "  padded\t "],
];

/** A fresh, unique name part, so that tests sharing one server never see each other's keys or channels. */
export function uniqueId(): string {
  return randomBytes(6).toString("hex");
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it is true; fails after `ms` with `what` (and `detail()` for a diagnosis). */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, ms: number, detail: () => string = () => ""): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) {
      const more = detail();
      throw new Error(`layercache/testing: ${what} did not happen within ${ms} ms${more ? `: ${more}` : ""}`);
    }
    await sleep(5);
  }
}

/** Fails the test with `message` unless `ok`. */
export function check(ok: boolean, message: string): asserts ok {
  if (!ok) throw new Error(`layercache/testing: ${message}`);
}

/** `actual` is the text `expected`; on failure the message shows where they first differ. */
export function checkText(actual: unknown, expected: string, what: string): void {
  if (actual === expected) return;
  if (typeof actual !== "string") throw new Error(`layercache/testing: ${what}: expected the text ${preview(expected)}, got ${preview(actual)}`);
  let i = 0;
  while (i < actual.length && actual[i] === expected[i]) i++;
  throw new Error(`layercache/testing: ${what}: the text differs at character ${i} of ${expected.length} (got ${actual.length}): expected …${preview(expected.slice(i, i + 40))}, got …${preview(actual.slice(i, i + 40))}`);
}

/** Text of exactly `bytes` UTF-8 bytes (at least `head`'s): `head`, then 1- to 4-byte characters. */
export function textOfBytes(head: string, bytes: number): string {
  const unit = "é🔑x键"; // 2 + 4 + 1 + 3 bytes
  const left = Math.max(0, bytes - Buffer.byteLength(head));
  return head + unit.repeat(Math.floor(left / 10)) + "x".repeat(left % 10);
}
