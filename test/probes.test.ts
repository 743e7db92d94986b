/**
 * A hung backend costs a caller one timeout at most, and the half-open probes of the circuit
 * breakers are never a caller's request: they run in the background.
 */
import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache } from "../src/index.js";
import { MapStore } from "./support/map-store.js";
import { flush } from "./support/helpers.js";
import { ControlledBus } from "./support/buses.js";

/** A MapStore whose calls hang (never answer) while `hung`. */
class HangingStore extends MapStore {
  hung = false;
  calls = 0;
  readonly resilience = { timeoutMs: 1000, breakerThreshold: 2, breakerCooldownMs: 5000 };
  override get(key: string) {
    this.calls++;
    return this.hung ? new Promise<undefined>(() => {}) : super.get(key);
  }
  override set(key: string, record: string, ttlMs: number, ifGeneration?: string) {
    this.calls++;
    return this.hung ? new Promise<boolean>(() => {}) : super.set(key, record, ttlMs, ifGeneration);
  }
}

function settledFlag(p: Promise<unknown>) {
  const s = { done: false };
  void p.then(
    () => (s.done = true),
    () => (s.done = true),
  );
  return s;
}

async function setup() {
  const clock = new FakeClock(0);
  const store = new HangingStore(() => clock.now());
  const bus = new ControlledBus({ timeoutMs: 1000, breakerThreshold: 2, breakerCooldownMs: 5000 });
  const cache = new LayerCache({ clock, l2: store, bus });
  await cache.ready();
  return { clock, store, bus, cache };
}

describe("a hung L2 and bus cost a caller one timeout at most", () => {
  test("remove: the L2 timeout, not the L2 timeout plus the bus timeout", async () => {
    const { clock, store, bus, cache } = await setup();
    store.hung = true;
    bus.mode = "hang";
    const removed = settledFlag(cache.remove("k"));
    await flush();
    clock.advance(999);
    await flush();
    expect(removed.done).toBe(false);
    clock.advance(1); // the L2 timeout: the caller is answered; the publish goes on in the background
    await flush();
    expect(removed.done).toBe(true);
    expect(bus.publishes).toBe(1);
  });

  test("set: the same", async () => {
    const { clock, store, bus, cache } = await setup();
    store.hung = true;
    bus.mode = "hang";
    const set = settledFlag(cache.set("k", 1));
    await flush();
    clock.advance(1000);
    await flush();
    expect(set.done).toBe(true);
  });

  test("after the breakers open, their half-open probes run in the background: callers never wait", async () => {
    const { clock, store, bus, cache } = await setup();
    const opened: string[] = [];
    cache.on("l2CircuitOpen", () => opened.push("open"));
    cache.on("l2CircuitClose", () => opened.push("close"));
    store.hung = true;
    bus.mode = "hang";
    // Each of these waits one timeout; the third one's publish opens the bus breaker too.
    for (let i = 0; i < 3; i++) {
      const p = settledFlag(cache.remove(`k${i}`));
      await flush();
      clock.advance(1000);
      await flush();
      expect(p.done).toBe(true);
    }
    expect(opened).toEqual(["open"]);
    // For the next minute, every 300 ms: a read and a remove. None may wait for anything.
    for (let t = 0; t < 60_000; t += 300) {
      const read = settledFlag(cache.getOrSet(`r${t}`, () => "loaded"));
      const remove = settledFlag(cache.remove(`x${t}`));
      await flush();
      expect(read.done, `read at +${t} ms`).toBe(true);
      expect(remove.done, `remove at +${t} ms`).toBe(true);
      if (t === 30_000) {
        // The server comes back.
        store.hung = false;
        bus.mode = "ok";
      }
      clock.advance(300);
      await flush();
    }
    // The probes found the server back and closed the breaker: L2 is used again.
    expect(opened).toEqual(["open", "close"]);
    await cache.set("back", "yes");
    expect(store.data.size).toBeGreaterThan(0);
    expect([...store.data.keys()].some((k) => k.endsWith(":back"))).toBe(true);
  });
});
