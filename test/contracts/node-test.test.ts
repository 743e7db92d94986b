import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { expect, inject, test } from "vitest";
import { BUS_CONTRACT_TESTS, L2_STORE_CONTRACT_TESTS } from "../../src/testing.js";

const root = resolve(import.meta.dirname, "..", "..");

test("under node --test the suites find node:test by themselves, and pass on the in-memory and the Redis backends", async () => {
  const { stdout } = await promisify(execFile)("node", ["--import", "tsx", "--test", "--test-reporter=tap", "test/contracts/node/contracts.node.ts"], {
    cwd: root,
    env: { ...process.env, REDIS_URL: inject("redisUrl") },
    timeout: 120_000,
  });
  expect(stdout).toMatch(/^# fail 0$/m);
  expect(stdout).toMatch(/^# skipped 0$/m);
  expect(stdout).toMatch(new RegExp(`^# pass ${2 * (L2_STORE_CONTRACT_TESTS.length + BUS_CONTRACT_TESTS.length)}$`, "m"));
}, 150_000);

test.each([
  ["examples/custom-store.ts", L2_STORE_CONTRACT_TESTS.length - 1, 1], // it has no getMany: that test skips itself
  ["examples/custom-bus.ts", BUS_CONTRACT_TESTS.length, 0],
])("the docs' example %s passes its contract suite", async (file, passed, skipped) => {
  const { stdout } = await promisify(execFile)("node", ["--import", "tsx", "--test-reporter=tap", file], { cwd: root, timeout: 120_000 });
  expect(stdout).toMatch(/^# fail 0$/m);
  expect(stdout).toMatch(new RegExp(`^# pass ${passed}$`, "m"));
  expect(stdout).toMatch(new RegExp(`^# skipped ${skipped}$`, "m"));
}, 150_000);
