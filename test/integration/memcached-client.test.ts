import { afterEach, describe, expect, test } from "vitest";
import { Connection } from "../../src/backends/memcached/connection.js";
import { MemcachedServer, type MemcachedServerOptions } from "../support/memcached-server.js";
import { eventually } from "../support/redis-clients.js";

/**
 * The connection of the built-in Memcached client against a real memcached of the test's own:
 * replies that show the stream out of step reset it, a connection silent too long is given up, and
 * replies split across many packets are put together.
 */
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

async function setup(timeoutMs = 1000, deadAfterMs?: number, options: MemcachedServerOptions = {}) {
  const server = await MemcachedServer.start(options);
  cleanup.push(() => server.stop());
  const c = new Connection("127.0.0.1", server.port, timeoutMs, deadAfterMs);
  cleanup.push(() => c.close());
  return { server, c };
}

describe("Memcached connection", () => {
  test("ERROR and CLIENT_ERROR reset the connection, so a data block read as a command never shifts later replies", async () => {
    const { c } = await setup();
    expect((await c.request("ms k 1 T0\r\nv\r\n")).line).toBe("HD");
    await expect(c.request("bogus\r\n")).rejects.toThrow(/answered "ERROR"/);
    // A store command with a key over 250 bytes: memcached answers CLIENT_ERROR, then reads "x" as a command.
    const [bad, next] = c.requestMany([`ms ${"k".repeat(251)} 1\r\nx\r\n`, "mg k v\r\n"]);
    await expect(bad).rejects.toThrow(/CLIENT_ERROR/);
    await expect(next).rejects.toThrow(/connection reset/);
    const reply = await c.request("mg k v\r\n");
    expect([reply.line, reply.value?.toString()]).toEqual(["VA 1", "v"]);
  });

  test("a value arriving in many packets is put together; replies around it stay matched", async () => {
    const { c: d } = await setup(5000, undefined, { maxItemSize: "4m" });
    const big = "é🔑x".repeat(300_000); // ~2.4 MB, on a server started with -I 4m
    const bytes = Buffer.byteLength(big);
    const [a, set, b, get, e] = d.requestMany(["mg none v\r\n", `ms big ${bytes} T0\r\n${big}\r\n`, "mn\r\n", "mg big v\r\n", "mn\r\n"]);
    expect((await a).line).toBe("EN");
    expect((await set).line).toBe("HD");
    expect((await b).line).toBe("MN");
    expect((await get).value?.toString()).toBe(big);
    expect((await e).line).toBe("MN");
  });

  test("a request on a stopped server times out; a connection silent past its limit is given up, and the next request opens another", async () => {
    const { server, c } = await setup(100, 400);
    expect((await c.request("ms k 1 T0\r\n1\r\n")).line).toBe("HD");
    await server.paused();
    try {
      await expect(c.request("mg k v\r\n")).rejects.toThrow(/no reply within 100 ms/);
      expect(c.open).toBe(true); // kept: a late reply would still be matched in order
      await eventually(() => !c.open, 5_000);
    } finally {
      server.resume();
    }
    const reply = await c.request("mg k v\r\n");
    expect([reply.line, reply.value?.toString()]).toEqual(["VA 1", "1"]);
  });
});
