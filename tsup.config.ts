import { defineConfig } from "tsup";

// One entry per public subpath; backend entries are added next to `index`.
export default defineConfig({
  entry: { index: "src/index.ts", backend: "src/backend.ts", redis: "src/backends/redis/index.ts" },
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
});
