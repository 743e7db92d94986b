/**
 * Scenario 7, one library per process: heap bytes per L1 entry for N small entries
 * (key "key:<i>", value { id: i }). Run with --expose-gc. Argv: <library> <n>.
 */
import { LRUCache } from "lru-cache";
import { LayerCache } from "../src/index.js";

const [lib, nArg] = process.argv.slice(2) as [string, string];
const n = Number(nArg);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --expose-gc");

function heap(): number {
  for (let i = 0; i < 3; i++) gc!();
  return process.memoryUsage().heapUsed;
}

// Kept on globalThis so nothing can be collected before the second measurement.
const keep = globalThis as { held?: unknown };
const before = heap();
if (lib === "layercache") {
  const cache = new LayerCache({ ttl: "1h", maxEntries: n });
  // Synchronous fill through the public API would be n awaited calls; set() resolves at once without L2.
  for (let i = 0; i < n; i++) void cache.set(`key:${i}`, { id: i });
  await new Promise((r) => setImmediate(r));
  if (cache.stats().entries !== n) throw new Error(`layercache holds ${cache.stats().entries}, expected ${n}`);
  keep.held = cache;
} else if (lib === "lru-cache") {
  const lru = new LRUCache<string, object>({ max: n });
  for (let i = 0; i < n; i++) lru.set(`key:${i}`, { id: i });
  keep.held = lru;
} else if (lib === "lru-cache+ttl") {
  const lru = new LRUCache<string, object>({ max: n, ttl: 3_600_000 });
  for (let i = 0; i < n; i++) lru.set(`key:${i}`, { id: i });
  keep.held = lru;
} else {
  throw new Error(`unknown library ${lib}`);
}
const after = heap();
process.stdout.write(JSON.stringify({ lib, n, bytesPerEntry: (after - before) / n }) + "\n");
