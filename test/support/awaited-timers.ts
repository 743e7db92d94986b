/**
 * A script that awaits a cache operation whose answer depends only on a cache timer (nothing
 * else keeps the process alive): it must print the answer and exit 0 by itself, never end early
 * with code 13 (a top-level await that never settled). Argv: <scenario>.
 */
import { LayerCache, systemClock } from "../../src/index.js";
import { MapStore } from "./map-store.js";

const scenario = process.argv[2];
const never = (): Promise<string> => new Promise<string>(() => {});
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const cache = new LayerCache();
let answer: unknown;

if (scenario === "hard") {
  answer = await cache.getOrSet("k", never, { hardTimeout: 100 }).catch((e: Error) => e.name);
} else if (scenario === "soft") {
  await cache.getOrSet("k", () => "old", { ttl: 1 });
  await sleep(5);
  answer = await cache.getOrSet("k", never, { softTimeout: 100, hardTimeout: "1h" });
} else if (scenario === "late-join") {
  // A refresh answered early from L2; a caller arriving past the stale window waits for it.
  const l2 = new MapStore();
  // Windows wide enough for a loaded machine: the stale read lands in [50, 550) ms, the late one
  // past 550 ms and before the refresh gives up (2 s after it started).
  const withL2 = new LayerCache({ l2, ttl: 50, refresh: "background", maxStale: 500, failSafe: 0, hardTimeout: 2_000 });
  await withL2.getOrSet("k", () => "old");
  withL2.clearMemory();
  await sleep(70);
  const stale = await withL2.getOrSet("k", never);
  await sleep(600);
  const late = await withL2.getOrSet("k", never).catch((e: Error) => e.name);
  answer = `${stale}/${String(late)}`;
} else if (scenario === "l2-deadline") {
  // After close(), the store's call deadline (a 30-day timeout) must not hold the process.
  const l2 = Object.assign(new MapStore(), { resilience: { timeoutMs: 30 * 24 * 3600 * 1000 } });
  const withL2 = new LayerCache({ l2 });
  await withL2.set("a", 1);
  answer = await withL2.get("a");
  await withL2.close();
} else if (scenario === "background-refresh") {
  // A refresh nobody waits for (its loader never settles) must not hold the process, with the
  // default clock or with the exported systemClock passed in.
  for (const clock of [undefined, systemClock]) {
    // maxStale of an hour: a loaded machine that sleeps far past 30 ms still reads a stale value (a
    // foreground load of `never` would wait out hardTimeout instead).
    const c = new LayerCache({ ...(clock ? { clock } : {}), ttl: 20, maxStale: "1h", refresh: "background", hardTimeout: "1h" });
    await c.getOrSet("k", () => "v");
    await sleep(30);
    answer = await c.getOrSet("k", never);
  }
} else {
  throw new Error(`unknown scenario ${scenario}`);
}
console.log(`answer: ${String(answer)}`);
