import { describe, expect, test } from "vitest";
import { FakeClock, LayerCache, type Bus, type BusConnection, type BusContext, type BusHandlers } from "../src/index.js";
import { Heartbeat, type HeartbeatOptions } from "../src/backend.js";
import { intactAfter } from "../src/backends/redis/streams-bus.js";
import { flush } from "./support/helpers.js";

/**
 * The heartbeat component on a FakeClock: a bus that cannot see every loss itself sends a probe
 * every interval and expects to hear it back. What it reports, and when, is exact and instant.
 */
function rig(overrides: Partial<HeartbeatOptions> = {}) {
  const clock = new FakeClock(0);
  const events: string[] = [];
  const probes: number[] = [];
  let probeResult: () => Promise<unknown> = async () => {};
  const hb = new Heartbeat({
    clock,
    intervalMs: 1000,
    probe: (n) => {
      probes.push(n);
      return probeResult();
    },
    onLost: () => events.push("lost"),
    onRegained: () => events.push("regained"),
    onSilence: () => void events.push("silence"),
    onError: (e) => events.push(`error: ${(e as Error).message}`),
    ...overrides,
  });
  return { clock, events, probes, hb, setProbe: (f: () => Promise<unknown>) => (probeResult = f) };
}

describe("Heartbeat on the injected clock", () => {
  test("a probe goes out every interval; echoes heard back keep it quiet", async () => {
    const { clock, events, probes, hb } = rig();
    hb.start();
    await clock.advanceAsync(999);
    expect(probes).toEqual([]);
    for (let i = 1; i <= 3; i++) {
      await clock.advanceAsync(i === 1 ? 1 : 1000);
      expect(probes).toEqual(Array.from({ length: i }, (_, j) => j + 1));
      hb.heard(i);
    }
    expect(events).toEqual([]);
    expect(hb.deaf).toBe(false);
    hb.stop();
  });

  test("silence: lost after one probe that was sent but not heard back; the bus is told to replace its listener", async () => {
    const { clock, events, hb } = rig();
    hb.start();
    await clock.advanceAsync(1000); // probe 1 sent
    expect(events).toEqual([]);
    await clock.advanceAsync(1000); // probe 1 never came back
    expect(events).toEqual(["lost", "silence"]);
    expect(hb.deaf).toBe(true);
    await clock.advanceAsync(1000); // still silent: replaced again, but reported lost only once
    expect(events).toEqual(["lost", "silence", "silence"]);
    hb.stop();
  });

  test("an echo coming back after the loss: regained, once", async () => {
    const { clock, events, hb } = rig();
    hb.start();
    await clock.advanceAsync(2000);
    expect(events).toEqual(["lost", "silence"]);
    hb.heard(2);
    hb.heard(2);
    expect(events).toEqual(["lost", "silence", "regained"]);
    expect(hb.deaf).toBe(false);
    await clock.advanceAsync(1000);
    hb.heard(3);
    expect(events).toEqual(["lost", "silence", "regained"]);
    hb.stop();
  });

  test("a probe that cannot be sent: lost, with its error; no silence (the server, not the listener, is the problem)", async () => {
    const { clock, events, hb, setProbe } = rig();
    setProbe(() => Promise.reject(new Error("publish failed")));
    hb.start();
    await clock.advanceAsync(1000);
    expect(events).toEqual(["error: publish failed", "lost"]);
    await clock.advanceAsync(1000);
    expect(events).toEqual(["error: publish failed", "lost", "error: publish failed"]);
    setProbe(async () => {});
    await clock.advanceAsync(1000);
    hb.heard(3);
    expect(events.at(-1)).toBe("regained");
    hb.stop();
  });

  test("a probe that hangs (a hung server) counts as failed after one interval", async () => {
    const { clock, events, hb, setProbe } = rig();
    setProbe(() => new Promise(() => {}));
    hb.start();
    await clock.advanceAsync(1000);
    expect(events).toEqual([]);
    await clock.advanceAsync(1000);
    expect(events).toEqual(["error: heartbeat probe timed out", "lost"]);
    hb.stop();
  });

  test("the bus reporting a loss itself (a connection event): lost at once; lost() again changes nothing", () => {
    const { events, hb } = rig();
    hb.start();
    hb.lost();
    hb.lost();
    expect(events).toEqual(["lost"]);
    hb.heard(0);
    expect(events).toEqual(["lost", "regained"]);
    hb.stop();
  });

  test("stop() cancels: no probe, no report afterwards, no timer left", async () => {
    const { clock, events, probes, hb } = rig();
    hb.start();
    await clock.advanceAsync(1000);
    hb.stop();
    expect(clock.pendingTimers).toBe(0);
    await clock.advanceAsync(10_000);
    hb.lost();
    hb.heard(5);
    expect(probes).toEqual([1]);
    expect(events).toEqual([]);
  });

  test("stop() while a silent listener is being replaced: nothing is probed or reported after it", async () => {
    const { clock, events, probes, hb } = rig({
      onSilence: () => {
        events.push("silence");
        hb.stop();
      },
    });
    hb.start();
    await clock.advanceAsync(2000);
    expect(events).toEqual(["lost", "silence"]);
    expect(probes).toEqual([1]);
  });

  test("any interval length works, beyond Node's 2^31-1 ms timer limit", async () => {
    const { clock, probes, hb } = rig({ intervalMs: 40 * 24 * 3600_000 });
    hb.start();
    await clock.advanceAsync(39 * 24 * 3600_000);
    expect(probes).toEqual([]);
    await clock.advanceAsync(24 * 3600_000);
    expect(probes).toEqual([1]);
    hb.stop();
  });

  test("the interval must be positive", () => {
    expect(() => rig({ intervalMs: 0 })).toThrow(TypeError);
  });

  test("on the real clock its timers never keep the process alive", async () => {
    const { systemClock } = await import("../src/index.js");
    const hb = new Heartbeat({ clock: systemClock, intervalMs: 60_000, probe: async () => {}, onLost: () => {}, onRegained: () => {} });
    const before = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    hb.start();
    // An unref'd timer is not listed among the resources that keep the loop alive.
    expect(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length).toBe(before);
    hb.stop();
  });
});

/** A bus driving a Heartbeat, as a real one would: it echoes probes back unless told to go silent. */
class EchoBus implements Bus {
  silent = false;
  clocks: (BusContext | undefined)[] = [];
  handlers: BusHandlers | undefined;

  async connect(_channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection> {
    this.clocks.push(context);
    this.handlers = handlers;
    const hb: Heartbeat = new Heartbeat({
      clock: context!.clock,
      intervalMs: 500,
      probe: async (n) => void (this.silent || queueMicrotask(() => hb.heard(n))),
      onLost: () => handlers.onDisconnect(),
      onRegained: () => handlers.onReconnect(),
    });
    hb.start();
    return { publish: async () => {}, close: async () => hb.stop() };
  }
}

/** A cache on an EchoBus and a FakeClock, recording its bus events. */
async function onEchoBus() {
  const clock = new FakeClock(1_000);
  const bus = new EchoBus();
  const cache = new LayerCache({ bus, clock, ttl: "1h" });
  const events: string[] = [];
  cache.on("busDisconnect", () => events.push("disconnect"));
  cache.on("busReconnect", (e) => events.push(`reconnect ${e.entries}`));
  cache.on("busCaughtUp", () => events.push("caughtUp"));
  await cache.ready();
  return { clock, bus, cache, events };
}

describe("a bus gets the cache's clock", () => {
  test("connect() receives the injected clock; the cache repairs L1 after a gap its heartbeat found, driven by FakeClock", async () => {
    const { clock, bus, cache, events } = await onEchoBus();
    expect(bus.clocks[0]?.clock).toBe(clock);
    await cache.set("k", "before");
    await clock.advanceAsync(2_000);
    expect(events).toEqual([]);
    bus.silent = true;
    await clock.advanceAsync(1_000);
    expect(events).toEqual(["disconnect"]);
    expect(await cache.get("k")).toBe("before"); // while deaf, L1 keeps serving
    bus.silent = false;
    await clock.advanceAsync(1_000);
    await flush();
    expect(events).toEqual(["disconnect", "reconnect 1"]);
    expect(await cache.get("k")).toBeUndefined(); // revalidates: it may have missed an invalidation
    await cache.close();
  });

  test("a bus reporting it caught up: no repair, L1 stays fresh", async () => {
    const { bus, cache, events } = await onEchoBus();
    await cache.set("k", "v");
    bus.handlers!.onDisconnect();
    bus.handlers!.onCaughtUp!();
    expect(events).toEqual(["disconnect", "caughtUp"]);
    expect(cache.stats()).toMatchObject({ busDisconnects: 1, busCatchUps: 1, busReconnects: 0 });
    expect(await cache.get("k")).toBe("v");
    await cache.close();
  });
});

describe("Streams: when catching up from a position is possible", () => {
  const pos = (id: string, message?: string) => ({ id, message });
  const at = (first: string, last: string, entry?: { id: string; message: string | undefined }) => ({ first, last, at: entry });
  test.each([
    ["the entry read last is still there", pos("100-1", "m"), at("50-0", "200-0", pos("100-1", "m")), true],
    ["an entry of that id is there, but another one (flushed and written again in the same millisecond)", pos("100-1", "m"), at("100-0", "100-1", pos("100-1", "other")), false],
    ["it was trimmed, and the oldest entry is the very next id", pos("100-1", "m"), at("100-2", "200-0"), true],
    ["it was trimmed, and the oldest entry is later: something between may be lost", pos("100-1", "m"), at("150-0", "200-0"), false],
    ["the stream is gone (flushed, restarted without persistence)", pos("100-1", "m"), undefined, false],
    ["its newest id went backwards (flush, failover)", pos("100-1", "m"), at("10-0", "90-0"), false],
    ["it is gone though older entries remain (a failover rewrote the history)", pos("100-1", "m"), at("50-0", "300-0"), false],
    ["a reader that has seen nothing cannot tell", pos("0-0"), at("100-0", "200-0"), false],
    ["ids compare as numbers, not text", pos("9-5", "m"), at("9-5", "10-0", pos("9-5", "m")), true],
  ] as const)("%s", (_what, after, bounds, expected) => {
    expect(intactAfter(after, bounds)).toBe(expected);
  });
});
