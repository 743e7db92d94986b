import { afterEach, describe, expect, inject, test } from "vitest";
import pg from "pg";
import { LayerCache } from "../../src/index.js";
import { FakeClock } from "../../src/testing.js";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import type { BusConnection } from "../../src/backend.js";
import { PostgresServer } from "../support/postgres-server.js";
import { lockTable, userPool } from "../support/postgres-clients.js";
import { eventually, uniquePrefix } from "../support/redis-clients.js";

/**
 * Faults on a real PostgreSQL: the listening session terminated, the server restarted, a table
 * locked past the statement timeout, a backend that stops answering. Waits are bounded polls;
 * nothing asserts on speed.
 */
const sharedUrl = inject("postgresUrl");
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

function rawPool(url: string): pg.Pool {
  const p = userPool(url);
  cleanup.push(() => p.end());
  return p;
}

/** Two caches (store and bus on `url`); each bus session is named, so a test can find and terminate it. */
async function pair(url: string, store: Record<string, unknown> = {}, bus: Record<string, unknown> = {}) {
  const prefix = uniquePrefix();
  const make = (name: string): LayerCache => {
    const cache = new LayerCache({
      prefix,
      l2: new PostgresStore({ connectionString: url, timeout: "1s", circuitBreaker: { threshold: 2, cooldown: "300ms" }, ...store }),
      bus: new PostgresBus({ connectionString: url, application_name: `${prefix}-${name}`, heartbeat: "300ms", timeout: "1s", ...bus }),
    });
    cleanup.push(() => cache.close());
    return cache;
  };
  const a = make("a");
  const b = make("b");
  await Promise.all([a.ready(), b.ready()]);
  return { prefix, a, b };
}

function gapsOf(cache: LayerCache): string[] {
  const gaps: string[] = [];
  cache.on("busDisconnect", () => gaps.push("disconnect"));
  cache.on("busReconnect", () => gaps.push("reconnect"));
  return gaps;
}

describe("the listening session is terminated (pg_terminate_backend)", () => {
  test("the bus reports the gap, reconnects, LISTENs again, and L1 values from before the gap are revalidated", async () => {
    const raw = rawPool(sharedUrl);
    const { prefix, a, b } = await pair(sharedUrl);
    const gaps = gapsOf(b);
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    await b.getOrSet("local", () => "b's");
    // b's listening session: the one whose only statement is LISTEN.
    const killed = await raw.query("SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'", [`${prefix}-b`]);
    expect(killed.rows).toEqual([{ ok: true }]);
    await a.set("k", "v2"); // published while b is away (or just back): either way b must not serve v1
    await eventually(() => gaps.includes("reconnect"), 10_000);
    expect(gaps.slice(0, 2)).toEqual(["disconnect", "reconnect"]);
    expect(await b.get("k")).toBe("v2");
    // The bus works again, on the new session.
    await a.set("k", "v3");
    await eventually(async () => (await b.get("k")) === "v3");
    const sessions = await raw.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [`${prefix}-b`]);
    expect(sessions.rows[0].n).toBe(2); // listening and publishing, no more
  }, 30_000);
});

describe("the server restarts", () => {
  test.each(["SIGINT", "SIGQUIT"] as const)("stopped with %s and started again: writes missed meanwhile land as removals, both instances revalidate", async (signal) => {
    const server = await PostgresServer.start();
    cleanup.push(() => server.stop());
    const { prefix, a, b } = await pair(server.url);
    const gaps = gapsOf(b);
    await a.set("k", "v1");
    expect(await b.get("k")).toBe("v1");
    // The set's own message reaches b (which keeps the copy it read: the same record) before the kill.
    await eventually(() => b.stats().peerInvalidations > 0);
    expect(await b.get("k")).toBe("v1");
    await server.kill(signal);
    expect(await b.get("k")).toBe("v1"); // L1 keeps serving
    expect(await a.getOrSet("fresh", () => "from-loader")).toBe("from-loader");
    await a.set("k", "v2"); // L1 now; L2 and bus later
    await eventually(() => gaps.includes("disconnect"), 10_000);
    await server.restart();
    const t0 = Date.now();
    await eventually(() => a.stats().l2Pending === 0 && a.stats().busPending === 0, 20_000);
    console.log(`${signal}: L2 and bus caught up ${Date.now() - t0} ms after the restart`);
    await eventually(() => gaps.includes("reconnect"), 20_000);
    const raw = rawPool(server.url);
    // The set that missed L2 is retried as a removal (a late value could overwrite a newer one).
    expect((await raw.query("SELECT record FROM layercache WHERE key = $1", [`${prefix}::k`])).rows[0]?.record).toMatch(/\|-$/);
    await eventually(async () => (await b.get("k")) === undefined, 15_000);
    expect(await b.getOrSet("k", () => "v2 from the database")).toBe("v2 from the database");
  }, 60_000);
});

describe("statement timeout", () => {
  test("a table locked by another transaction: calls give up at the timeout, the server cancels the statements, the breaker opens, all recovers on unlock", async () => {
    const table = `t_${uniquePrefix()}`;
    const { prefix, a, b } = await pair(sharedUrl, { table, timeout: "300ms" });
    const events: string[] = [];
    a.on("l2CircuitOpen", () => events.push("open"));
    a.on("l2CircuitClose", () => events.push("close"));
    await a.set("k", "v1");
    const lock = await lockTable(sharedUrl, table);
    cleanup.push(lock.release);
    const started = Date.now();
    expect(await a.getOrSet("other", () => "loaded")).toBe("loaded");
    expect(await b.getOrSet("k", () => "b loaded")).toBe("b loaded"); // b has no L1 copy and cannot read L2
    await a.set("k", "v2");
    for (let i = 0; i < 4; i++) await a.getOrSet(`miss${i}`, () => i);
    expect(Date.now() - started).toBeLessThan(10_000); // nobody waited on the lock for long
    await eventually(() => events.includes("open"));
    // The server cancelled the store's statements: none of its sessions still waits on the lock.
    await eventually(async () => {
      const r = await lock.client.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'layercache' AND wait_event_type = 'Lock' AND query LIKE $1", [`%${table}%`]);
      return r.rows[0].n === 0;
    }, 5000);
    await lock.unlock();
    await eventually(() => a.stats().l2Pending === 0 && events.includes("close"), 15_000);
    const raw = rawPool(sharedUrl);
    expect((await raw.query(`SELECT record FROM public."${table}" WHERE key = $1`, [`${prefix}::k`])).rows[0]?.record).toMatch(/\|-$/);
    expect(await a.getOrSet("after", () => "stored")).toBe("stored");
    expect(await b.get("after")).toBe("stored");
  }, 40_000);
});

describe("heartbeat (on a FakeClock)", () => {
  test("a listening session whose backend stops answering is found by the heartbeat and replaced; the gap is reported", async () => {
    const clock = new FakeClock();
    const app = `hb-${uniquePrefix()}`;
    const bus = new PostgresBus({ connectionString: sharedUrl, application_name: app, heartbeat: "1s" });
    const seen: string[] = [];
    const conn: BusConnection = await bus.connect(`hb:${app}`, {
      onMessage: (m) => seen.push(`message ${m}`),
      onDisconnect: () => seen.push("disconnect"),
      onReconnect: () => seen.push("reconnect"),
      onError: () => {},
    }, { clock });
    cleanup.push(() => conn.close());
    const raw = rawPool(sharedUrl);
    // The listening session (its only statement: LISTEN); publishing goes through another.
    const pid = Number((await raw.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'", [app])).rows[0].pid);
    // A beat that is heard back changes nothing.
    clock.advance(1000);
    await new Promise((r) => setTimeout(r, 100));
    clock.advance(1000);
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual([]);
    process.kill(pid, "SIGSTOP"); // the backend hangs; the TCP connection stays open
    cleanup.push(async () => process.kill(pid, "SIGCONT"));
    clock.advance(1000); // a probe goes out; the stopped session cannot hear it
    await new Promise((r) => setTimeout(r, 100));
    clock.advance(1000); // not heard back: the session is replaced
    await eventually(() => seen.includes("disconnect"));
    for (let i = 0; i < 50 && !seen.includes("reconnect"); i++) {
      clock.advance(200); // the reconnect delay
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(seen).toEqual(["disconnect", "reconnect"]);
    process.kill(pid, "SIGCONT");
    const newPid = Number((await raw.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> $2 AND query LIKE 'LISTEN%'", [app, pid])).rows[0]?.pid);
    expect(newPid).toBeGreaterThan(0);
    await raw.query("SELECT pg_notify($1, 'after')", [`hb:${app}`]);
    await eventually(() => seen.includes("message after"));
  }, 30_000);

  test("reconnect attempts back off (doubling up to maxReconnectDelay) while the server is away", async () => {
    const server = await PostgresServer.start();
    cleanup.push(() => server.stop());
    const clock = new FakeClock();
    const bus = new PostgresBus({ connectionString: server.url, heartbeat: "1h", reconnectDelay: "100ms", maxReconnectDelay: "800ms" });
    const seen: string[] = [];
    let attempts = 0;
    const conn = await bus.connect("backoff", {
      onMessage: () => {},
      onDisconnect: () => seen.push("disconnect"),
      onReconnect: () => seen.push("reconnect"),
      onError: (_e, op) => {
        if (op === "reconnect") attempts++;
      },
    }, { clock });
    cleanup.push(() => conn.close());
    await server.kill("SIGINT");
    await eventually(() => seen.includes("disconnect"));
    /** Advances the clock by `ms` in steps, letting each failed attempt finish. */
    const run = async (ms: number): Promise<void> => {
      for (let t = 0; t < ms; t += 50) {
        clock.advance(50);
        await new Promise((r) => setTimeout(r, 15));
      }
    };
    await run(200); // first attempt after 75–125 ms
    expect(attempts).toBe(1);
    await run(4000); // then waits of 200, 400, 800, 800 … ms (±25 %)
    expect(attempts).toBeGreaterThanOrEqual(5);
    expect(attempts).toBeLessThanOrEqual(8);
    await server.restart();
    await run(1200);
    await eventually(() => seen.includes("reconnect"));
    expect(seen).toEqual(["disconnect", "reconnect"]);
  }, 30_000);
});

describe("messages and channels", () => {
  test("a connection never hears its own notifications; every other connection does", async () => {
    const bus = new PostgresBus({ connectionString: sharedUrl });
    const channel = `own:${uniquePrefix()}`;
    const heard: Record<string, string[]> = { a: [], b: [] };
    const handlers = (name: "a" | "b") => ({ onMessage: (m: string) => heard[name]!.push(m), onDisconnect: () => {}, onReconnect: () => {}, onError: () => {} });
    const a = await bus.connect(channel, handlers("a"));
    cleanup.push(() => a.close());
    const b = await bus.connect(channel, handlers("b"));
    cleanup.push(() => b.close());
    await a.publish("from a");
    await b.publish("from b");
    await eventually(() => heard.b!.includes("from a") && heard.a!.includes("from b"));
    await new Promise((r) => setTimeout(r, 200));
    expect(heard).toEqual({ a: ["from b"], b: ["from a"] });
  });

  test("an invalidation longer than NOTIFY's 8000 bytes is split, none lost; a long prefix gets a channel of its own", async () => {
    const long = "p".repeat(80);
    const prefix = `${long}-${uniquePrefix()}`;
    const make = (p: string): LayerCache => {
      const c = new LayerCache({ prefix: p, bus: new PostgresBus({ connectionString: sharedUrl, timeout: "5s" }) });
      cleanup.push(() => c.close());
      return c;
    };
    const [a, b, other] = [make(prefix), make(prefix), make(`${prefix}-other`)];
    await Promise.all([a.ready(), b.ready(), other.ready()]);
    const keys = Array.from({ length: 200 }, (_, i) => `key-${i}-${"x".repeat(100)}`);
    for (const k of keys) {
      await b.getOrSet(k, () => "b's"); // no L2: each keeps its own copy
      await other.getOrSet(k, () => "other's");
    }
    const errors: unknown[] = [];
    a.on("busError", (e) => errors.push(e));
    await Promise.all(keys.map((k) => a.remove(k)));
    await eventually(async () => (await Promise.all(keys.map((k) => b.get(k)))).every((v) => v === undefined), 10_000);
    expect(errors).toEqual([]);
    // A prefix that shares its first 63 bytes with this one is another channel: nothing reached it.
    expect(await other.get(keys[0]!)).toBe("other's");
    expect(await other.get(keys[199]!)).toBe("other's");
  }, 30_000);
});
