import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // Unhandled errors and rejections fail the run (vitest's default; stated here because the project relies on it).
    dangerouslyIgnoreUnhandledErrors: false,
    reporters: ["default"],
  },
});
