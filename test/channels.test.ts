import { tracingChannel } from "node:diagnostics_channel";
import { afterEach, describe, expect, test } from "vitest";
import { FakeClock, LayerCache, MemoryBus, diagnosticChannels } from "../src/index.js";
import { flush } from "./support/helpers.js";
import { MapStore } from "./support/map-store.js";

type Phase = "start" | "end" | "asyncStart" | "asyncEnd" | "error";
interface Seen {
  channel: string;
  phase: Phase;
  context: Record<string, any>;
}

/** Subscribes to every layercache tracing channel; `stop()` unsubscribes. */
function subscribeAll(): { seen: Seen[]; stop: () => void } {
  const seen: Seen[] = [];
  const stops: (() => void)[] = [];
  for (const name of Object.values(diagnosticChannels)) {
    const tc = tracingChannel(name);
    const handlers = Object.fromEntries(
      (["start", "end", "asyncStart", "asyncEnd", "error"] as Phase[]).map((phase) => [phase, (context: unknown) => seen.push({ channel: name, phase, context: { ...(context as object) } })]),
    ) as unknown as Parameters<typeof tc.subscribe>[0];
    tc.subscribe(handlers);
    stops.push(() => tc.unsubscribe(handlers));
  }
  return { seen, stop: () => stops.forEach((s) => s()) };
}

let stop: (() => void) | undefined;
afterEach(() => {
  stop?.();
  stop = undefined;
});

const done = (seen: Seen[], channel: string) => seen.filter((s) => s.channel === channel && (s.phase === "asyncEnd" || (channel === "layercache:bus" && s.context.operation === "receive" && s.phase === "end")));

describe("node:diagnostics_channel tracing channels (SPEC 12)", () => {
  test("the channel names", () => {
    expect(diagnosticChannels).toEqual({
      get: "layercache:get",
      getOrSet: "layercache:getOrSet",
      load: "layercache:load",
      refresh: "layercache:refresh",
      l2: "layercache:l2",
      bus: "layercache:bus",
    });
  });

  test("get, getOrSet, load, l2 and bus: start and end of each operation with its fields and result", async () => {
    const sub = subscribeAll();
    stop = sub.stop;
    const clock = new FakeClock(0);
    const l2 = new MapStore(() => clock.now());
    const bus = new MemoryBus();
    const a = new LayerCache({ clock, l2, bus });
    const b = new LayerCache({ clock, l2, bus });
    await b.ready();
    const users = a.scope("users");
    expect(await users.getOrSet("u1", async () => ({ name: "Ada" }))).toEqual({ name: "Ada" });
    expect(await users.get("u1")).toEqual({ name: "Ada" });
    expect(await users.get("nope")).toBeUndefined();
    await users.remove("u1");
    await flush();

    const ofA = (list: Seen[]) => list.filter((s) => s.context.cache === a.instanceId);
    const getOrSet = ofA(done(sub.seen, "layercache:getOrSet"));
    expect(getOrSet.map((s) => s.context)).toEqual([{ cache: a.instanceId, scope: "users", key: "u1", result: { name: "Ada" } }]);
    expect(ofA(done(sub.seen, "layercache:get")).map((s) => s.context)).toEqual([
      { cache: a.instanceId, scope: "users", key: "u1", result: { name: "Ada" } },
      { cache: a.instanceId, scope: "users", key: "nope", result: undefined },
    ]);
    expect(ofA(done(sub.seen, "layercache:load")).map((s) => s.context)).toEqual([{ cache: a.instanceId, scope: "users", key: "u1", kind: "load", result: { name: "Ada" } }]);
    // The load read L2, wrote back, the get of "nope" read L2 and the remove wrote a tombstone.
    // A read names the store's key (reads of several scopes share one batch); a write the scope and key.
    const l2Ops = ofA(done(sub.seen, "layercache:l2")).map((s) => `${s.context.operation}:${s.context.scope ?? "-"}:${s.context.key}`);
    expect(l2Ops).toEqual(["get:-:layercache:users:u1", "set:users:u1", "get:-:layercache:users:nope", "remove:users:u1"]);
    // Published by a; received (and acted on) by b, which names a as the sender.
    const published = ofA(done(sub.seen, "layercache:bus")).filter((s) => s.context.operation === "publish");
    expect(published.map((s) => [s.context.op, s.context.scope, s.context.keys])).toEqual([
      ["update", "users", ["u1"]],
      ["remove", "users", ["u1"]],
    ]);
    const received = done(sub.seen, "layercache:bus").filter((s) => s.context.cache === b.instanceId && s.context.operation === "receive");
    expect(received.map((s) => [s.context.op, s.context.from, s.context.dropped])).toEqual([
      ["update", a.instanceId, undefined],
      ["remove", a.instanceId, undefined],
    ]);
    // Each traced operation starts before it ends.
    const first = (ch: string, phase: Phase) => sub.seen.findIndex((s) => s.channel === ch && s.phase === phase);
    expect(first("layercache:getOrSet", "start")).toBeLessThan(first("layercache:load", "start"));
    expect(first("layercache:load", "asyncEnd")).toBeLessThan(first("layercache:getOrSet", "asyncEnd"));
    await a.close();
    await b.close();
  });

  test("a failed loader and an L2 outage publish error with the failure", async () => {
    const sub = subscribeAll();
    stop = sub.stop;
    const clock = new FakeClock(0);
    const l2 = new MapStore(() => clock.now());
    l2.failing = true;
    const cache = new LayerCache({ clock, l2 });
    await expect(cache.getOrSet("k", async () => Promise.reject(new Error("db down")))).rejects.toThrow("db down");
    const errors = sub.seen.filter((s) => s.phase === "error" && s.context.cache === cache.instanceId);
    expect(errors.map((s) => [s.channel, (s.context.error as Error).message])).toEqual([
      ["layercache:l2", "store down"],
      ["layercache:load", "db down"],
      ["layercache:getOrSet", "db down"],
    ]);
    await cache.close();
  });

  test("a background refresh is traced from start to end, its loader inside it", async () => {
    const sub = subscribeAll();
    stop = sub.stop;
    const clock = new FakeClock(0);
    const cache = new LayerCache({ clock, ttl: "1s", refresh: "background" });
    await cache.getOrSet("k", async () => 1);
    clock.advance(1_500);
    expect(await cache.getOrSet("k", async () => 2)).toBe(1);
    await flush();
    expect(await cache.get("k")).toBe(2);
    const refresh = done(sub.seen, "layercache:refresh");
    expect(refresh.map((s) => s.context)).toEqual([{ cache: cache.instanceId, scope: "", key: "k", result: undefined }]);
    expect(done(sub.seen, "layercache:load").map((s) => [s.context.kind, s.context.result])).toEqual([
      ["load", 1],
      ["refresh", 2],
    ]);
    await cache.close();
  });

  test("a forged bus message is traced as received and dropped, with the reason", async () => {
    const sub = subscribeAll();
    stop = sub.stop;
    const bus = new MemoryBus();
    const a = new LayerCache({ bus, busSecret: "s1" });
    const b = new LayerCache({ bus, busSecret: "s2" });
    await b.ready();
    await a.set("k", 1);
    await flush();
    const received = done(sub.seen, "layercache:bus").filter((s) => s.context.cache === b.instanceId && s.context.operation === "receive");
    expect(received).toHaveLength(1);
    expect(received[0]!.context.dropped).toMatch(/./);
    expect(b.stats().busMessagesDropped).toBe(1);
    await a.close();
    await b.close();
  });

  test("without subscribers no channel has any, and the cache publishes nothing", async () => {
    const cache = new LayerCache();
    await cache.getOrSet("k", async () => 1);
    for (const name of Object.values(diagnosticChannels)) expect(tracingChannel(name).hasSubscribers, name).toBe(false);
  });
});
