import { describe, expect, test } from "vitest";
import { ensureBinary, findBinary, freePort } from "./support/servers.js";

describe("test harness", () => {
  test("a missing server binary that may not be installed fails with one line saying what to install", () => {
    process.env.LAYERCACHE_NO_INSTALL = "1";
    try {
      expect(() => ensureBinary("no-such-server-binary", "no-such-package")).toThrow(
        /^no-such-server-binary not found: install the Debian package no-such-package \(apt-get install -y no-such-package\)$/,
      );
    } finally {
      delete process.env.LAYERCACHE_NO_INSTALL;
    }
  });

  test("finds installed binaries and free loopback ports", async () => {
    expect(findBinary("redis-server")).toMatch(/redis-server$/);
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
  });
});
