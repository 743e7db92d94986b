import { execFile } from "node:child_process";
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, inject, test } from "vitest";

const root = resolve(import.meta.dirname, "..");
const run = promisify(execFile);
const tsx = join(root, "node_modules", "tsx", "dist", "cli.mjs");
const env = { ...process.env, REDIS_URL: "", DATABASE_URL: "" };
const withRedis = { ...process.env, REDIS_URL: inject("redisUrl") };
const withPostgres = { ...process.env, REDIS_URL: "", DATABASE_URL: inject("postgresUrl") };

describe("examples run", () => {
  test("npm run demo narrates every step and ends cleanly", async () => {
    const { stdout } = await run("npm", ["run", "--silent", "demo"], { cwd: root, env });
    expect(stdout).toMatch(/database was asked 1 time\(s\)/);
    expect(stdout).toMatch(/B dropped 1 entry \(remove user:42\)/);
    expect(stdout).toMatch(/the stale value at once/);
    expect(stdout).toMatch(/refreshed/);
    expect(stdout).toMatch(/A's copy: undefined/);
  }, 60_000);

  test("npm run demo with REDIS_URL: two processes, an invalidation crossing between them", async () => {
    const { stdout } = await run("npm", ["run", "--silent", "demo"], { cwd: root, env: withRedis });
    expect(stdout).toMatch(/B's loader was not called/);
    expect(stdout).toMatch(/\[process B\] dropped its copy of user:42 on A's word \(remove\)/);
    expect(stdout).toMatch(/\[process B\] get user:42 → undefined/);
    expect(stdout).toMatch(/Done\./);
  }, 60_000);

  test("npm run demo with DATABASE_URL (PostgreSQL alone): two processes, an invalidation crossing between them", async () => {
    const { stdout } = await run("npm", ["run", "--silent", "demo"], { cwd: root, env: withPostgres });
    expect(stdout).toMatch(/layercache demo with PostgreSQL/);
    expect(stdout).toMatch(/B's loader was not called/);
    expect(stdout).toMatch(/\[process B\] dropped its copy of user:42 on A's word \(remove\)/);
    expect(stdout).toMatch(/\[process B\] get user:42 → undefined/);
    expect(stdout).toMatch(/Done\./);
  }, 60_000);

  for (const file of readdirSync(join(root, "examples")).filter((f) => f.endsWith(".ts") && !f.startsWith("demo"))) {
    test(file, async () => {
      // The outage picture is drawn to a temporary file: running the tests never changes the repository.
      const env = { ...withRedis, OTEL_OUTAGE_SVG: join(tmpdir(), `layercache-otel-outage-${process.pid}.svg`) };
      const { stderr } = await run("node", [tsx, join("examples", file)], { cwd: root, env });
      expect(stderr.replace(/npm warn.*\n/g, "")).toBe("");
    }, 60_000);
  }
});
