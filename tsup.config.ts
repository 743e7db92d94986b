import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defineConfig } from "tsup";

// One entry per public subpath; backend entries are added next to `index`.
export default defineConfig({
  entry: { index: "src/index.ts", backend: "src/backend.ts", testing: "src/testing.ts", redis: "src/backends/redis/index.ts" },
  format: ["esm", "cjs"],
  dts: true,
  sourcemap: true,
  clean: true,
  target: "node20",
  platform: "node",
  splitting: true,
  treeshake: true,
  // Client libraries are optional peers, loaded at run time only when `{ url }` needs one: never bundled.
  external: ["ioredis", "redis"],
  // An entry that only re-exports shared chunks (`backend`) gets a source map without sources and
  // without `sourcesContent`; give it the (empty) `sourcesContent`, as every other map has one.
  async onSuccess() {
    for (const file of readdirSync("dist").filter((f) => f.endsWith(".map"))) {
      const map = JSON.parse(readFileSync(join("dist", file), "utf8")) as { sources: string[]; sourcesContent?: unknown[] };
      if (map.sources.length === 0 && map.sourcesContent === undefined) writeFileSync(join("dist", file), JSON.stringify({ ...map, sourcesContent: [] }));
    }
  },
});
