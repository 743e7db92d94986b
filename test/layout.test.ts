import { readFileSync, readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { describe, expect, test } from "vitest";

const src = resolve(import.meta.dirname, "..", "src");

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));
}

describe("layout: one folder per backend family behind the backend contract", () => {
  test("a backend imports only layercache/backend (src/backend.ts), its own folder and Node built-ins", () => {
    const stray: string[] = [];
    for (const file of filesUnder(join(src, "backends"))) {
      const text = readFileSync(file, "utf8");
      for (const [, spec] of text.matchAll(/(?:from|import)\s*\(?\s*["']([^"']+)["']/g)) {
        if (spec!.startsWith("node:") || spec === "../../backend.js" || spec!.startsWith("./")) continue;
        if (!spec!.startsWith(".")) continue; // a client library, loaded at run time
        stray.push(`${relative(src, file)} imports ${spec}`);
      }
    }
    expect(stray).toEqual([]);
  });

  test("an integration (src/integrations/<name>/) imports only the public API (index.ts, backend.ts), its own folder, Node built-ins and its library", () => {
    const stray: string[] = [];
    for (const file of filesUnder(join(src, "integrations"))) {
      const text = readFileSync(file, "utf8");
      for (const [, spec] of text.matchAll(/(?:from|import)\s*\(?\s*["']([^"']+)["']/g)) {
        if (spec!.startsWith("node:") || spec === "../../index.js" || spec === "../../backend.js" || spec!.startsWith("./")) continue;
        if (!spec!.startsWith(".")) continue; // the integration's library (an optional peer)
        stray.push(`${relative(src, file)} imports ${spec}`);
      }
    }
    expect(stray).toEqual([]);
  });

  test("the core does not import any backend or integration", () => {
    const stray = filesUnder(src)
      .filter((f) => !f.includes(`${join(src, "backends")}`) && !f.includes(`${join(src, "integrations")}`))
      .filter((f) => /from\s+["'][^"']*(backends|integrations)\//.test(readFileSync(f, "utf8")))
      .map((f) => relative(src, f));
    expect(stray).toEqual([]);
  });

  test("the core does not import any backend", () => {
    const stray = filesUnder(src)
      .filter((f) => !f.includes(`${join(src, "backends")}`))
      .filter((f) => /from\s+["'][^"']*backends\//.test(readFileSync(f, "utf8")))
      .map((f) => relative(src, f));
    expect(stray).toEqual([]);
  });
});
