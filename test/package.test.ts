import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { BUS_CONTRACT_TESTS, L2_STORE_CONTRACT_TESTS } from "../src/testing.js";

/**
 * The published shape: `npm pack`, installed into a clean folder, imported both ways and
 * type-checked as a user would — the same route the acceptance suite takes.
 */
const root = resolve(import.meta.dirname, "..");
let dir: string;
let tarball: string;

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_update_notifier: "false" } });
}

/** What tsc reports for the project in `project` (its tsconfig.json): "" when it compiles cleanly. */
function tscErrors(project: string): string {
  try {
    run("node", [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], project);
    return "";
  } catch (error) {
    return String((error as { stdout?: string }).stdout ?? error);
  }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "layercache-pack-"));
  run("npm", ["pack", "--silent", "--pack-destination", dir], root);
  tarball = join(dir, readdirSync(dir).find((f) => f.endsWith(".tgz"))!);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true }));
  run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--silent", tarball, "ioredis", "pg", "@platformatic/kafka", "rabbitmq-client", "@nats-io/transport-node", "@nats-io/jetstream"], dir);
  // The build (three integration entries more since issue 15) and the install take minutes on a loaded machine.
}, 360_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const script = `
  const cache = new LayerCache({ bus: new MemoryBus(), ttl: "1m" });
  const peer = new LayerCache({ bus: cache === null ? undefined : undefined });
  const v = await cache.getOrSet("k", async () => ({ n: 1 }));
  const users = cache.scope("users");
  const f = users.cached(async (id) => "u" + id, { key: (id) => "user:" + id });
  const store = new RedisStore({ url: "redis://127.0.0.1:1" }); // not connected: needs no client library yet
  const r = [v.n, await f("1"), f.cacheKey("1"), typeof FakeClock, await peer.get("k"), typeof store.set, typeof RedisBus];
  await cache.close(); await peer.close();
  console.log(JSON.stringify(r));
`;

describe("npm pack output", () => {
  test("contains the builds, the types and the docs, not the sources or tests", () => {
    const listing = run("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], root);
    const info = JSON.parse(listing)[0] as { files: { path: string }[]; unpackedSize: number };
    const files = info.files.map((f) => f.path);
    // The client libraries are optional peers, loaded at run time: never bundled into dist.
    for (const f of files.filter((f) => /^dist\/.*\.(c?js)$/.test(f))) {
      expect(readFileSync(join(root, f), "utf8")).not.toMatch(/node_modules\/(ioredis|@redis|pg|pg-pool|pg-protocol|@platformatic|rabbitmq-client|@nats-io)\//);
    }
    expect(readFileSync(join(root, "dist/redis.js"), "utf8")).toMatch(/import\(['"]ioredis['"]\)/);
    expect(readFileSync(join(root, "dist/postgres.js"), "utf8")).toMatch(/import\(['"]pg['"]\)/);
    expect(readFileSync(join(root, "dist/kafka.js"), "utf8")).toMatch(/import\(['"]@platformatic\/kafka['"]\)/);
    expect(readFileSync(join(root, "dist/rabbitmq.js"), "utf8")).toMatch(/import\(['"]rabbitmq-client['"]\)/);
    expect(readFileSync(join(root, "dist/nats.js"), "utf8")).toMatch(/import\(['"]@nats-io\/transport-node['"]\)/);
    // Each backend family and integration adds its build, declarations and source maps (with their
    // sources): ~150-250 kB each; with six families, three integrations, tags and bulk ~3.2 MB.
    expect(info.unpackedSize).toBeLessThan(4_000_000);
    for (const f of ["dist/index.js", "dist/index.cjs", "dist/index.d.ts", "dist/index.d.cts", "dist/redis.js", "dist/redis.cjs", "dist/redis.d.ts", "dist/redis.d.cts", "dist/memcached.js", "dist/memcached.cjs", "dist/memcached.d.ts", "dist/memcached.d.cts", "dist/postgres.js", "dist/postgres.cjs", "dist/postgres.d.ts", "dist/postgres.d.cts", "dist/kafka.js", "dist/kafka.cjs", "dist/kafka.d.ts", "dist/kafka.d.cts", "dist/rabbitmq.js", "dist/rabbitmq.cjs", "dist/rabbitmq.d.ts", "dist/rabbitmq.d.cts", "dist/nats.js", "dist/nats.cjs", "dist/nats.d.ts", "dist/nats.d.cts", "README.md", "LICENSE", "package.json", "docs/guarantees.md", "docs/redis.md", "docs/memcached.md", "docs/postgres.md", "docs/kafka.md", "docs/rabbitmq.md", "docs/nats.md"]) {
      expect(files).toContain(f);
    }
    // Nothing else: no sources, tests, benchmarks, chaos tooling or examples.
    expect(files.filter((f) => !/^(dist|docs)\//.test(f) && !["LICENSE", "README.md", "package.json"].includes(f))).toEqual([]);
    expect(readFileSync(join(root, "LICENSE"), "utf8")).toMatch(/^MIT License\n\nCopyright \(c\) \d{4} layercache authors\n/);
    // Source maps name ../src files, which are not shipped: each map must carry the sources' text itself.
    for (const f of files.filter((f) => f.endsWith(".map"))) {
      const map = JSON.parse(readFileSync(join(root, f), "utf8")) as { sources: string[]; sourcesContent?: (string | null)[] };
      expect(map.sourcesContent?.length ?? 0, f).toBe(map.sources.length); // a map of re-exports only has no sources
      expect((map.sourcesContent ?? []).every((c) => typeof c === "string" && c.length > 0), f).toBe(true);
    }
  });

  test("the shipped docs link only to files that ship, and cite no document outside the package", () => {
    const listing = run("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], root);
    const files = (JSON.parse(listing)[0] as { files: { path: string }[] }).files.map((f) => f.path);
    const problems: string[] = [];
    for (const doc of files.filter((f) => f.endsWith(".md"))) {
      const text = readFileSync(join(root, doc), "utf8");
      if (/\bSPEC\b/.test(text)) problems.push(`${doc}: cites SPEC, which is not in the package`);
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^(https?:|mailto:|#)/.test(target!)) continue;
        const file = posix.normalize(posix.join(posix.dirname(doc), target!.split("#")[0]!));
        if (!files.includes(file) && !files.some((f) => f.startsWith(file.replace(/\/?$/, "/")))) problems.push(`${doc}: links ${target}, not in the package`);
      }
    }
    expect(problems).toEqual([]);
  });

  test("attw (Are the Types Wrong?) finds no problem in any entry point, for node10, node16 (CJS and ESM) and bundler", () => {
    const attw = join(root, "node_modules", "@arethetypeswrong", "cli", "dist", "index.js");
    let out: string;
    try {
      // The default "strict" profile: any problem in any resolution mode is an exit code of 1.
      out = run("node", [attw, tarball, "--format", "json"], dir);
    } catch (error) {
      const stdout = (error as { stdout?: string }).stdout;
      let problems: unknown = stdout ?? String(error);
      try {
        problems = (JSON.parse(stdout!) as { problems: unknown }).problems;
      } catch {}
      throw new Error(`attw found problems (run \`npx attw --pack .\` for the table): ${JSON.stringify(problems, null, 2)}`);
    }
    const { analysis } = JSON.parse(out) as {
      analysis: { problems: unknown[]; entrypoints: Record<string, { resolutions: Record<string, { resolution?: { fileName: string } }> }> };
    };
    expect(analysis.problems).toEqual([]);
    // Every subpath in `exports` is an entry point attw checked, and resolves in every mode.
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { exports: Record<string, unknown> };
    expect(Object.keys(analysis.entrypoints).sort()).toEqual(Object.keys(pkg.exports).sort());
    for (const [subpath, entry] of Object.entries(analysis.entrypoints)) {
      expect(Object.keys(entry.resolutions).sort(), subpath).toEqual(["bundler", "node10", "node16-cjs", "node16-esm"]);
      for (const [kind, r] of Object.entries(entry.resolutions)) expect(r.resolution?.fileName, `${subpath} ${kind}`).toBeDefined();
    }
  });

  test("imports as ESM", () => {
    writeFileSync(join(dir, "esm.mjs"), `import { LayerCache, MemoryBus, FakeClock } from "layercache";\nimport { RedisStore, RedisBus } from "layercache/redis";\n${script}`);
    expect(JSON.parse(run("node", ["esm.mjs"], dir))).toEqual([1, "u1", "user:1", "function", null, "function", "function"]);
  });

  test("requires as CommonJS", () => {
    writeFileSync(join(dir, "cjs.cjs"), `const { LayerCache, MemoryBus, FakeClock } = require("layercache");\nconst { RedisStore, RedisBus } = require("layercache/redis");\n(async () => {${script}})();`);
    expect(JSON.parse(run("node", ["cjs.cjs"], dir))).toEqual([1, "u1", "user:1", "function", null, "function", "function"]);
  });

  const featureScript = `
    const clock = new FakeClock(1000);
    const bus = new MemoryBus();
    const a = new LayerCache({ bus, clock }); const b = new LayerCache({ bus, clock });
    await a.set("u1", "one", { tags: ["users"] });
    await b.set("v1", "one", { tags: ["users"] });
    const tagged = await a.getOrSet("u2", async ({ key, setOptions }) => { setOptions({ tags: ["users"] }); return key; });
    const many = await a.getOrSetMany(["m1", "m2"], async (keys, { signalOf }) => new Map(keys.map((k) => [k, signalOf(k).aborted ? "given up" : k.toUpperCase()])));
    const batch = a.cachedBatch(async (ids) => ids.map((id) => id * 2), { key: (id) => "n:" + id });
    const doubled = await Promise.all([batch(1), batch(2)]);
    const had = [await a.has("u1"), await b.has("v1")];
    await b.removeByTag("users");
    const gone = [await a.has("u1"), await a.get("u2"), await b.has("v1")];
    const got = await a.getMany(["m1", "nope"]);
    await a.removeMany(["m1"]);
    const uncached = await a.getOrSet("x", ({ noCache }) => { noCache(); return 1; });
    const r = [tagged, many, doubled, had, gone, got, await a.has("m1"), uncached, await a.has("x")];
    await a.close(); await b.close();
    console.log(JSON.stringify(r));
  `;
  const featureResult = ["u2", ["M1", "M2"], [2, 4], [true, true], [false, null, false], ["M1", null], false, 1, false];

  test.each([
    ["features.mjs", `import { LayerCache, MemoryBus, FakeClock } from "layercache";\n`, (body: string) => body],
    ["features.cjs", `const { LayerCache, MemoryBus, FakeClock } = require("layercache");\n`, (body: string) => `(async () => {${body}})();`],
  ])("%s: tags, removeByTag, has, getOrSetMany, getMany, removeMany, cachedBatch and the loader context", (file, imports, wrap) => {
    writeFileSync(join(dir, file), imports + wrap(featureScript));
    expect(JSON.parse(run("node", [file], dir))).toEqual(featureResult);
  });

  /**
   * Two caches of the installed package on a real redis-server, with the bus class `bus` (made by
   * `busExpression`, default `new <bus>({ url })` on the same Redis): a value and a removal go across.
   */
  function redisRoundTrip(file: string, imports: string, bus: string, busExpression?: string): void {
    const url = inject("redisUrl");
    const body = `
      const opts = () => ({ prefix: "pack-${file}-${bus}", l2: new RedisStore({ url: ${JSON.stringify(url)} }), bus: ${busExpression ?? `new ${bus}({ url: ${JSON.stringify(url)} })`} });
      const a = new LayerCache(opts()); const b = new LayerCache(opts());
      await a.set("k", { n: 1 });
      const seen = await b.get("k");
      await a.remove("k");
      for (let i = 0; i < 100 && b.stats().peerInvalidations === 0; i++) await new Promise((r) => setTimeout(r, 10));
      const after = await b.get("k");
      await a.close(); await b.close();
      console.log(JSON.stringify([seen, after === undefined, a.stats().l2Errors + b.stats().l2Errors]));`;
    const name = `redis-${bus}-${file}`;
    writeFileSync(join(dir, name), file.endsWith(".mjs") ? `${imports}\n${body}` : `${imports}\n(async () => {${body}})();`);
    expect(JSON.parse(run("node", [name], dir))).toEqual([{ n: 1 }, true, 0]);
  }

  test.each([
    ["esm.mjs", `import { LayerCache } from "layercache"; import { RedisStore, RedisBus } from "layercache/redis";`],
    ["cjs2.cjs", `const { LayerCache } = require("layercache"); const { RedisStore, RedisBus } = require("layercache/redis");`],
  ])("%s: RedisStore and RedisBus from { url } share values and invalidations through a real redis-server", (file, imports) => redisRoundTrip(file, imports, "RedisBus"));

  test.each([
    ["esm.mjs", `import { LayerCache } from "layercache"; import { RedisStore, RedisStreamsBus } from "layercache/redis";`],
    ["cjs2.cjs", `const { LayerCache } = require("layercache"); const { RedisStore, RedisStreamsBus } = require("layercache/redis");`],
  ])("%s: RedisStore and RedisStreamsBus from { url } share values and invalidations through a real redis-server", (file, imports) => redisRoundTrip(file, imports, "RedisStreamsBus"));

  /** Two caches of the installed package on the real PostgreSQL, alone (no Redis): a value and a removal go across. */
  test.each([
    ["pg.mjs", `import { LayerCache } from "layercache"; import { PostgresStore, PostgresBus } from "layercache/postgres";`],
    ["pg.cjs", `const { LayerCache } = require("layercache"); const { PostgresStore, PostgresBus } = require("layercache/postgres");`],
  ])("%s: PostgresStore and PostgresBus from { connectionString } share values and invalidations through a real PostgreSQL", (file, imports) => {
    const url = inject("postgresUrl");
    const body = `
      const opts = () => ({ prefix: "pack-${file}", l2: new PostgresStore({ connectionString: ${JSON.stringify(url)} }), bus: new PostgresBus({ connectionString: ${JSON.stringify(url)} }) });
      const a = new LayerCache(opts()); const b = new LayerCache(opts());
      await a.ready(); await b.ready();
      await a.set("k", { n: 1 });
      const seen = await b.get("k");
      const heard = b.stats().peerInvalidations;
      await a.remove("k");
      for (let i = 0; i < 500 && b.stats().peerInvalidations === heard; i++) await new Promise((r) => setTimeout(r, 10));
      const after = await b.get("k");
      await a.close(); await b.close();
      console.log(JSON.stringify([seen, after === undefined, a.stats().l2Errors + b.stats().l2Errors]));`;
    writeFileSync(join(dir, file), file.endsWith(".mjs") ? `${imports}\n${body}` : `${imports}\n(async () => {${body}})();`);
    expect(JSON.parse(run("node", [file], dir))).toEqual([{ n: 1 }, true, 0]);
  });

  test.each([
    ["esm.mjs", `import { LayerCache } from "layercache"; import { RedisStore } from "layercache/redis"; import { RabbitMQBus } from "layercache/rabbitmq";`],
    ["cjs2.cjs", `const { LayerCache } = require("layercache"); const { RedisStore } = require("layercache/redis"); const { RabbitMQBus } = require("layercache/rabbitmq");`],
  ])("%s: RabbitMQBus from { url } carries invalidations through a real rabbitmq-server", (file, imports) =>
    redisRoundTrip(file, imports, "RabbitMQBus", `new RabbitMQBus({ url: ${JSON.stringify(inject("rabbitmqUrl"))} })`),
  );

  test.each([
    ["esm.mjs", "false"],
    ["cjs2.cjs", "false"],
    ["esm.mjs", "{ storage: 'memory' }"],
    ["cjs2.cjs", "{ storage: 'memory' }"],
  ])("%s: NatsBus from { servers } (jetstream: %s) carries invalidations through a real nats-server", (file, jetstream) => {
    const imports = file.endsWith(".mjs")
      ? `import { LayerCache } from "layercache"; import { RedisStore } from "layercache/redis"; import { NatsBus } from "layercache/nats";`
      : `const { LayerCache } = require("layercache"); const { RedisStore } = require("layercache/redis"); const { NatsBus } = require("layercache/nats");`;
    redisRoundTrip(file, imports, `NatsBus${jetstream === "false" ? "" : "-js"}`, `new NatsBus({ servers: ${JSON.stringify(inject("natsUrl"))}, jetstream: ${jetstream} })`);
  });

  test.each([
    ["mc.mjs", `import { LayerCache, MemoryBus } from "layercache"; import { MemcachedStore } from "layercache/memcached";`],
    ["mc.cjs", `const { LayerCache, MemoryBus } = require("layercache"); const { MemcachedStore } = require("layercache/memcached");`],
  ])("%s: MemcachedStore from { servers } shares values (odd keys, a long ttl) and removals through a real memcached", (file, imports) => {
    const servers = inject("memcachedServer");
    const body = `
      const bus = new MemoryBus();
      const opts = () => ({ prefix: "pack-${file}", l2: new MemcachedStore({ servers: ${JSON.stringify(servers)} }), bus });
      const a = new LayerCache(opts()); const b = new LayerCache(opts());
      const odd = "a key with spaces, ünïcødé and a line\\nbreak " + "x".repeat(300);
      await a.set("k", { n: 1 }); await a.set(odd, "odd", { ttl: "40d" });
      const seen = [await b.get("k"), await b.get(odd)];
      await a.remove("k");
      const after = await b.get("k");
      await a.close(); await b.close();
      console.log(JSON.stringify([seen, after === undefined, a.stats().l2Errors + b.stats().l2Errors]));`;
    writeFileSync(join(dir, file), file.endsWith(".mjs") ? `${imports}\n${body}` : `${imports}\n(async () => {${body}})();`);
    expect(JSON.parse(run("node", [file], dir))).toEqual([[{ n: 1 }, "odd"], true, 0]);
  });

  test.each([
    ["esm.mjs", `import { LayerCache } from "layercache"; import { KafkaBus } from "layercache/kafka";`],
    ["cjs2.cjs", `const { LayerCache } = require("layercache"); const { KafkaBus } = require("layercache/kafka");`],
  ])("%s: KafkaBus from { brokers } carries a removal between two caches through a real Kafka broker", (file, imports) => {
    const broker = inject("kafkaBroker");
    const body = `
      const opts = () => ({ prefix: "pack-${file.replace(/\W/g, "-")}-" + process.pid, bus: new KafkaBus({ brokers: [${JSON.stringify(broker)}] }) });
      const a = new LayerCache(opts()); const b = new LayerCache(opts());
      await Promise.all([a.ready(), b.ready()]);
      await b.set("k", { n: 1 });
      const seen = await b.get("k");
      await a.remove("k");
      for (let i = 0; i < 500 && b.stats().peerInvalidations === 0; i++) await new Promise((r) => setTimeout(r, 10));
      const after = await b.get("k");
      await a.close(); await b.close();
      console.log(JSON.stringify([seen, after === undefined, b.stats().peerInvalidations > 0]));`;
    const name = `kafka-${file}`;
    writeFileSync(join(dir, name), file.endsWith(".mjs") ? `${imports}\n${body}` : `${imports}\n(async () => {${body}})();`);
    expect(JSON.parse(run("node", [name], dir))).toEqual([{ n: 1 }, true, true]);
  });

  test.each([
    ["contracts.test.mjs", `import { MemoryBus } from "layercache"; import { busContract, l2StoreContract, FakeClock, MemoryStore } from "layercache/testing";`],
    ["contracts.test.cjs", `const { MemoryBus } = require("layercache"); const { busContract, l2StoreContract, FakeClock, MemoryStore } = require("layercache/testing");`],
  ])("%s: layercache/testing runs the contract suites under node --test, finding node:test by itself", (file, imports) => {
    writeFileSync(
      join(dir, file),
      `${imports}
      const clock = new FakeClock();
      const store = new MemoryStore({ clock });
      l2StoreContract(() => store, { advanceTime: (ms) => clock.advance(ms) });
      const bus = new MemoryBus();
      busContract(() => bus, { quietMs: 20 });`,
    );
    const out = run("node", ["--test", "--test-reporter=tap", file], dir);
    expect(out).toMatch(/^# fail 0$/m);
    expect(out).toMatch(new RegExp(`^# pass ${L2_STORE_CONTRACT_TESTS.length + BUS_CONTRACT_TESTS.length}$`, "m"));
  });

  test("importing layercache/testing starts no test runner", () => {
    writeFileSync(join(dir, "import-testing.mjs"), `const t = await import("layercache/testing"); console.log(typeof t.l2StoreContract, typeof t.busContract, typeof t.MemoryStore, typeof t.FakeClock);`);
    expect(run("node", ["import-testing.mjs"], dir).trim()).toBe("function function function function");
  });

  const ts = `
      import { LayerCache, MemoryBus, type CacheOptions, type CallOptions, type Stats } from "layercache";
      import { RedisStore, RedisBus, type RedisStoreOptions } from "layercache/redis";
      import { MemcachedStore, type MemcachedStoreOptions } from "layercache/memcached";
      import { PostgresStore, PostgresBus, postgresStoreSql, type PostgresStoreOptions } from "layercache/postgres";
      const pgOptions: PostgresStoreOptions = { connectionString: "postgres://localhost/app", table: "cache", unlogged: false };
      void new LayerCache({ l2: new PostgresStore(pgOptions), bus: new PostgresBus({ connectionString: "postgres://localhost/app", heartbeat: "2s" }) });
      const ddl: string = postgresStoreSql({ schema: "cache" });
      void ddl;
      import { KafkaBus, type KafkaBusOptions } from "layercache/kafka";
      const kafkaOptions: KafkaBusOptions = { brokers: ["localhost:9092"], partitions: 1, retention: "1h" };
      void new LayerCache({ bus: new KafkaBus(kafkaOptions) });
      import { RabbitMQBus, type RabbitMQBusOptions } from "layercache/rabbitmq";
      import { NatsBus, type NatsBusOptions } from "layercache/nats";
      const rabbitOptions: RabbitMQBusOptions = { url: "amqp://localhost:5672", heartbeat: "5s" };
      const natsOptions: NatsBusOptions = { servers: ["nats://localhost:4222"], jetstream: { maxMessages: 1000, maxAge: "1h", storage: "file" } };
      void new LayerCache({ bus: new RabbitMQBus(rabbitOptions) });
      void new LayerCache({ bus: new NatsBus(natsOptions) });
      const redisOptions: RedisStoreOptions = { url: "redis://localhost:6379", timeout: "250ms" };
      void new LayerCache({ l2: new RedisStore(redisOptions), bus: new RedisBus({ url: "redis://localhost:6379" }) });
      const memcachedOptions: MemcachedStoreOptions = { servers: ["127.0.0.1:11211"], timeout: "250ms", maxItemSize: 1024 * 1024 };
      void new LayerCache({ l2: new MemcachedStore(memcachedOptions) });
      const options: CacheOptions = { ttl: "1m", refresh: "background", bus: new MemoryBus(), distributedLock: { lease: "10s", wait: "2s" } };
      const cache = new LayerCache(options);
      async function main(): Promise<number> {
        const n: number = await cache.getOrSet("k", async ({ signal }) => (signal.aborted ? 0 : 1));
        const getUser = cache.scope("users").cached(async (id: string) => ({ id }), { key: (id) => "user:" + id });
        const u: { id: string } = await getUser("1");
        await getUser.removeCached("1");
        const s: Stats = cache.stats();
        const tagged: string = await cache.getOrSet("t", async ({ key, setOptions, noCache }) => (setOptions({ ttl: "5s", tags: ["a"] }), key === "" ? (noCache(), key) : key), { tags: ["b"] });
        const many: number[] = await cache.getOrSetMany(["a", "b"], async (keys, { signal, signalOf }) => keys.map((k) => (signal.aborted || signalOf(k).aborted ? 0 : k.length)));
        const batch = cache.cachedBatch(async (ids: number[]) => ids.map((id) => ({ id })), { key: (id) => "n:" + id, tags: ["ns"] });
        const one: { id: number } = await batch(1);
        await batch.removeCached(1);
        const has: boolean = await cache.has("t");
        const call: CallOptions = { tags: ["x"], ttl: "1s" };
        await cache.setMany([["k", 1, call]]);
        await cache.removeByTag(["a", "b"]);
        return n + u.id.length + s.hits + tagged.length + many[0]! + one.id + Number(has);
      }
      void main;
    `;

  // One consumer project per module resolution a user may have: each imports `layercache` and
  // `layercache/redis` (and `layercache/postgres`) and uses types from them, with the library's declarations checked too.
  test.each([
    ["nodenext (.mts and .cts)", { module: "nodenext", moduleResolution: "nodenext" }, ["consumer.mts", "consumer.cts"]],
    ["node16 (.mts and .cts)", { module: "node16", moduleResolution: "node16" }, ["consumer.mts", "consumer.cts"]],
    ['"module": "commonjs" (node10 resolution, which ignores `exports`)', { module: "commonjs", moduleResolution: "node10" }, ["consumer.ts"]],
    ['"moduleResolution": "bundler"', { module: "esnext", moduleResolution: "bundler" }, ["consumer.ts"]],
  ])("type-checks for a consumer with %s", (_name, resolution, sources) => {
    const project = mkdtempSync(join(dir, "tsc-"));
    for (const file of sources) writeFileSync(join(project, file), ts);
    writeFileSync(
      join(project, "tsconfig.json"),
      JSON.stringify({ compilerOptions: { strict: true, noEmit: true, ...resolution, target: "es2022", lib: ["es2023", "esnext.disposable"], types: ["node"], typeRoots: [join(root, "node_modules", "@types")], skipLibCheck: false }, files: sources }),
    );
    expect(tscErrors(project)).toBe("");
    // tsc with skipLibCheck off takes 15-40 s on a loaded 2-core machine: not a speed assertion.
  }, 120_000);
});

/**
 * Decorated methods in a consumer project, compiled by tsc under each decorator setting a user
 * may have — standard (TC39) decorators, and `experimentalDecorators` as NestJS projects use —
 * then run: the decorator caches, and `cachedOf(instance.method)` types `removeCached`/`cacheKey`.
 */
describe("decorators in a consumer project (both settings)", () => {
  const source = `
    import { LayerCache, cachedOf } from "layercache";
    const cache = new LayerCache();
    const users = cache.scope("users");
    let calls = 0;
    class Repo {
      prefix = "user";
      @users.cached({ key: (id: string) => \`user:\${id}\`, ttl: "1h" })
      async find(id: string): Promise<string> {
        calls++;
        return \`\${this.prefix}-\${id}\`;
      }
      @cache.cached
      async double(x: number): Promise<number> {
        calls++;
        return x * 2;
      }
      @cache.cached({ name: "square" })
      static async sq(x: number): Promise<number> {
        return x * x;
      }
      // @ts-expect-error the method's parameters must fit the key builder's
      @users.cached({ key: (id: string) => id })
      async wrong(n: number): Promise<number> {
        return n;
      }
    }
    async function main(): Promise<void> {
      const repo = new Repo();
      const first: string = await repo.find("1");
      await repo.find("1");
      const key: string = cachedOf(repo.find).cacheKey("1");
      const before = await users.get(key);
      await cachedOf(repo.find).removeCached("1");
      // @ts-expect-error removeCached takes the method's parameters
      void cachedOf(repo.find).removeCached(1).catch(() => {});
      const after = await users.get(key);
      await repo.find("1");
      const d: number = await repo.double(4);
      const dk: string = cachedOf(repo.double).cacheKey(4);
      const sq: number = await Repo.sq(3);
      console.log(JSON.stringify([first, key, before, after ?? null, calls, d, dk, await cache.get(dk), sq, await cache.get(cachedOf(Repo.sq).cacheKey(3))]));
    }
    void main();
  `;

  test.each([
    ["standard (TC39) decorators", {}],
    ["experimentalDecorators (NestJS)", { experimentalDecorators: true, emitDecoratorMetadata: true }],
  ])("%s: tsc compiles the project, and the decorated methods cache and remove", (_name, decorators) => {
    const project = mkdtempSync(join(dir, "decorators-"));
    writeFileSync(join(project, "consumer.cts"), source);
    writeFileSync(join(project, "consumer.mts"), source);
    writeFileSync(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { strict: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", lib: ["es2023", "esnext.disposable"], types: ["node"], typeRoots: [join(root, "node_modules", "@types")], skipLibCheck: false, outDir: "out", ...decorators },
        files: ["consumer.cts", "consumer.mts"],
      }),
    );
    expect(tscErrors(project)).toBe("");
    const expected = ["user-1", "user:1", "user-1", null, 3, 8, "double:[4]", 8, 9, 9];
    expect(JSON.parse(run("node", ["out/consumer.cjs"], project))).toEqual(expected);
    expect(JSON.parse(run("node", ["out/consumer.mjs"], project))).toEqual(expected);
   }, 180_000);
});

/**
 * The integrations as a user installs them: layercache/otel with the OpenTelemetry SDK,
 * layercache/fastify in a Fastify app, and layercache/nestjs in a Nest application written with
 * `@` decorators (experimentalDecorators + emitDecoratorMetadata, as Nest projects compile), one
 * of its services' methods decorated with `@scope.cached`. The frameworks are linked from the
 * repository's node_modules rather than installed again.
 */
describe("integrations from the installed package", () => {
  const nest = `
    import "reflect-metadata";
    import { Injectable, Module } from "@nestjs/common";
    import { NestFactory } from "@nestjs/core";
    import { LayerCache, CacheScope, cachedOf } from "layercache";
    import { LayerCacheModule, InjectScope } from "layercache/nestjs";

    const cache = new LayerCache({ ttl: "1m" });
    const users = cache.scope("users");
    let loads = 0;

    @Injectable()
    class UsersService {
      constructor(@InjectScope("users") private readonly scope: CacheScope, readonly byType: LayerCache) {}
      @users.cached({ key: (id: string) => \`user:\${id}\` })
      async find(id: string): Promise<{ id: string; n: number }> {
        return { id, n: ++loads };
      }
      peek(id: string): Promise<unknown> {
        return this.scope.get(\`user:\${id}\`);
      }
    }

    @Module({ imports: [LayerCacheModule.forRoot({ cache, scopes: ["users"] })], providers: [UsersService] })
    class AppModule {}

    const app = await NestFactory.createApplicationContext(AppModule, { logger: false });
    const svc = app.get(UsersService);
    const a = await svc.find("1");
    const b = await svc.find("1");
    const peeked = await svc.peek("1");
    await cachedOf(svc.find).removeCached("1");
    const after = await svc.peek("1");
    await app.close();
    const closed = await cache.get("x").then(() => false, () => true);
    console.log(JSON.stringify([a, b, peeked, after ?? null, svc.byType === cache, closed]));
  `;
  const fastify = `
    import Fastify from "fastify";
    import { layercache } from "layercache/fastify";
    const app = Fastify();
    await app.register(layercache, { options: { ttl: "1m" } });
    let loads = 0;
    app.get("/n", async () => app.cache.getOrSet("n", async () => ({ n: ++loads })));
    const r1 = await app.inject({ method: "GET", url: "/n" });
    const r2 = await app.inject({ method: "GET", url: "/n" });
    const cache = app.cache;
    await app.close();
    console.log(JSON.stringify([r1.json(), r2.json(), await cache.get("n").then(() => false, () => true)]));
  `;
  const otel = `
    import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
    import { LayerCache } from "layercache";
    import { METRICS, instrument } from "layercache/otel";
    const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
    const meterProvider = new MeterProvider({ readers: [reader] });
    const cache = new LayerCache();
    const inst = instrument(cache, { meterProvider });
    await cache.getOrSet("k", async () => 1);
    await cache.getOrSet("k", async () => 1);
    await reader.forceFlush();
    const names: Record<string, number> = {};
    for (const sm of exporter.getMetrics().at(-1)!.scopeMetrics) for (const m of sm.metrics) names[m.descriptor.name] = m.dataPoints.length;
    inst.disable();
    await cache.close();
    await meterProvider.shutdown();
    console.log(JSON.stringify([names[METRICS.hits], names[METRICS.misses], names[METRICS.loadDuration]]));
  `;

  test("tsc compiles them (experimentalDecorators, emitDecoratorMetadata) and they run: Nest injects and closes the cache, Fastify serves it, OTel records it", () => {
    const project = mkdtempSync(join(dir, "integrations-"));
    const modules = join(dir, "node_modules");
    for (const lib of ["@nestjs", "fastify", "reflect-metadata", "rxjs", "@opentelemetry"]) {
      try {
        symlinkSync(join(root, "node_modules", lib), join(modules, lib));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
    }
    writeFileSync(join(project, "package.json"), JSON.stringify({ type: "module", private: true }));
    writeFileSync(join(project, "nest.ts"), nest);
    writeFileSync(join(project, "fastify.ts"), fastify);
    writeFileSync(join(project, "otel.ts"), otel);
    writeFileSync(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { strict: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", lib: ["es2023", "esnext.disposable"], types: ["node"], typeRoots: [join(root, "node_modules", "@types")], skipLibCheck: true, outDir: "out", experimentalDecorators: true, emitDecoratorMetadata: true },
        files: ["nest.ts", "fastify.ts", "otel.ts"],
      }),
    );
    expect(tscErrors(project)).toBe("");
    expect(JSON.parse(run("node", ["out/nest.js"], project))).toEqual([{ id: "1", n: 1 }, { id: "1", n: 1 }, { id: "1", n: 1 }, null, true, true]);
    expect(JSON.parse(run("node", ["out/fastify.js"], project))).toEqual([{ n: 1 }, { n: 1 }, true]);
    expect(JSON.parse(run("node", ["out/otel.js"], project))).toEqual([1, 1, 1]);
    // The CommonJS builds load too.
    writeFileSync(join(project, "require.cjs"), `console.log([typeof require("layercache/otel").instrument, typeof require("layercache/fastify").layercache, typeof require("layercache/nestjs").LayerCacheModule].join(" "));`);
    expect(run("node", ["require.cjs"], project).trim()).toBe("function function function");
   }, 180_000);
});
