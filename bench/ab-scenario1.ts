/**
 * Scenario 1 (L1-hit getOrSet) of two builds of layercache side by side in one process:
 * `npx tsx bench/ab-scenario1.ts <path to the other checkout's src/index.ts>`. Both run in the
 * same rounds, in rotating order, so the machine's noise falls on both alike; the ratio is what
 * to read. Used to check that a change to the read path costs nothing (e.g. the diagnostics
 * channels with nobody subscribed).
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { LayerCache } from "../src/index.js";
import { compare, printRatios } from "./lib.js";

const other = process.argv[2];
if (!other) throw new Error("usage: tsx bench/ab-scenario1.ts <other checkout>/src/index.ts");
const { LayerCache: OtherCache } = (await import(pathToFileURL(resolve(other)).href)) as { LayerCache: typeof LayerCache };
const keys = Array.from({ length: 1000 }, (_, i) => `key:${i}`);
const VALUE = { id: 42, name: "Ada Lovelace", roles: ["admin"] };
const loader = async () => VALUE;
const caches = { "this checkout": new LayerCache({ ttl: "1h" }), [other]: new OtherCache({ ttl: "1h" }) };
for (const c of Object.values(caches)) for (const k of keys) await c.getOrSet(k, loader);
const r = await compare(
  Object.fromEntries(
    Object.entries(caches).map(([name, c]) => [
      name,
      async () => {
        for (let i = 0; i < 1000; i++) await c.getOrSet(keys[i]!, loader);
      },
    ]),
  ),
  1000,
);
printRatios("Scenario 1, two builds side by side", r, "this checkout");
for (const c of Object.values(caches)) await c.close();
