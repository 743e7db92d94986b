import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus } from "../src/index.js";
import { MemoryStore } from "../src/l2/memory.js";
import { deferred, flush } from "./support/helpers.js";

function fleet(n: number, o: { bus?: boolean; lock?: unknown; extra?: Record<string, unknown> } = {}) {
  const clock = new FakeClock(1_000_000);
  const store = new MemoryStore({ clock });
  const bus = o.bus === false ? undefined : new MemoryBus();
  const caches = Array.from({ length: n }, () => new LayerCache({ clock, l2: store, bus, distributedLock: o.lock ?? true, ...o.extra }));
  return { clock, store, caches };
}

describe("distributed single flight (SPEC 10)", () => {
  test("misses of one key spread over three instances run the loader once; the others get its value", async () => {
    for (const bus of [true, false]) {
      const { clock, caches } = fleet(3, { bus });
      const gate = deferred<void>();
      let calls = 0;
      const loader = async () => {
        calls++;
        await gate.promise;
        return "loaded";
      };
      const reads = caches.flatMap((c) => Array.from({ length: 100 }, () => c.getOrSet("k", loader)));
      await flush();
      expect(calls).toBe(1);
      gate.resolve();
      // Without a bus the waiters find the value by re-reading L2 (every `poll`).
      for (let i = 0; i < 5 && bus === false; i++) {
        await flush();
        clock.advance(100);
      }
      expect(new Set(await Promise.all(reads))).toEqual(new Set(["loaded"]));
      expect(calls).toBe(1);
    }
  });

  test("waiters load themselves once the wait is over (a hung holder)", async () => {
    const { clock, caches: [a, b] } = fleet(2, { lock: { wait: "1s", lease: "10s" } });
    const hung = a.getOrSet("k", () => new Promise<string>(() => {}), { hardTimeout: "1h" });
    void hung;
    await flush();
    let calls = 0;
    const p = b.getOrSet("k", async () => `own ${++calls}`);
    for (let i = 0; i < 12; i++) {
      await flush();
      clock.advance(100);
    }
    expect(await p).toBe("own 1");
  });

  test("a holder that outlived its lease cannot overwrite the value of the next holder", async () => {
    const { clock, caches: [a, b, c] } = fleet(3, { lock: { lease: "1s", wait: "500ms" } });
    const slow = deferred<string>();
    const pa = a.getOrSet("k", () => slow.promise, { hardTimeout: "1h" });
    await flush();
    clock.advance(1_500); // a's lease expired
    expect(await b.getOrSet("k", async () => "newer")).toBe("newer");
    slow.resolve("older");
    expect(await pa).toBe("older");
    await flush();
    expect(await c.get("k")).toBe("newer");
  });

  test("a refresh waiting for another instance's lease, fenced after a caller joined it late, still answers that caller", async () => {
    // Found by the chaos run (seed 22, --lock on), which hung: a load that answered early with a
    // stale value from L2 and then waited for the lease was invalidated; it returned without
    // loading, and the caller who had joined it after the stale window closed waited for ever.
    const { clock, caches: [a, b, c] } = fleet(3, { lock: { lease: "10s", wait: "5s", poll: "100ms" }, extra: { ttl: "1s" } });
    await a.set("k", "v1");
    clock.advance(1_200); // stale, still inside c's stale window (maxStale 500 ms)
    const holder = deferred<string>();
    const held = b.getOrSet("k", () => holder.promise); // b takes the lease and loads
    await flush();
    const bg = { refresh: "background", maxStale: "500ms" } as const;
    let loads = 0;
    const loader = async (): Promise<string> => `c${++loads}`;
    expect(await c.getOrSet("k", loader, bg)).toBe("v1"); // stale from L2; its refresh waits for b's lease
    clock.advance(400); // past the stale window
    await flush();
    const late = c.getOrSet("k", loader, bg); // joins the refresh for its own outcome
    c.removeLocal("k"); // the refresh is fenced (and detached) while it waits
    for (let i = 0; i < 5; i++) {
      clock.advance(100);
      await flush();
    }
    expect(await Promise.race([late, flush(5).then(() => "still waiting")])).toBe("c1");
    holder.resolve("from-b");
    expect(await held).toBe("from-b");
  });

  test("the lease is given back after a failed load: the next instance loads at once", async () => {
    const { caches: [a, b] } = fleet(2);
    await expect(a.getOrSet("k", async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    await flush();
    expect(await b.getOrSet("k", async () => "ok")).toBe("ok");
  });

  test("bad options are TypeErrors naming them; off without the option", () => {
    expect(() => new LayerCache({ distributedLock: "yes" as never })).toThrow(/"distributedLock"/);
    expect(() => new LayerCache({ distributedLock: { lease: -1 } })).toThrow(/"distributedLock.lease"/);
    expect(() => new LayerCache({ distributedLock: { wait: 0 } })).toThrow(/"distributedLock.wait"/);
    expect(() => new LayerCache({ distributedLock: { nope: 1 } as never })).toThrow(/"distributedLock.nope"/);
    expect(() => new LayerCache({ distributedLock: false })).not.toThrow();
  });
});
