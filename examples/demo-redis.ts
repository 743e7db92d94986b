/**
 * The two-process part of `npm run demo`: used when REDIS_URL is set (Redis as L2 and bus) or,
 * without it, when DATABASE_URL is a postgres:// URL (PostgreSQL alone: a table as L2,
 * LISTEN/NOTIFY as bus). Two processes, each with its own LayerCache, share that server. Process A
 * narrates and drives; process B (this same file, forked) reports what it sees.
 */
import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { LayerCache } from "../src/index.js";
import { RedisBus, RedisStore } from "../src/backends/redis/index.js";
import { PostgresBus, PostgresStore } from "../src/backends/postgres/index.js";

const onRedis = Boolean(process.env.REDIS_URL);
const url = onRedis ? process.env.REDIS_URL! : process.env.DATABASE_URL!;
const server = onRedis ? "Redis" : "PostgreSQL";
const isPeer = process.argv[2] === "--peer";
const prefix = isPeer ? process.argv[3]! : `layercache-demo-${randomBytes(3).toString("hex")}`;
const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const ms = (t: bigint) => `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(2)} ms`;

function makeCache(): LayerCache {
  if (onRedis) return new LayerCache({ prefix, ttl: "5m", l2: new RedisStore({ url }), bus: new RedisBus({ url }) });
  // The bus paired with the store: a remove's tombstone and its NOTIFY go out as one statement.
  const store = new PostgresStore({ connectionString: url });
  return new LayerCache({ prefix, ttl: "5m", l2: store, bus: new PostgresBus({ store }) });
}

if (isPeer) {
  // Process B: answers the narrator's requests and reports invalidations as they arrive.
  const cache = makeCache();
  const users = cache.scope("users");
  const say = (text: string) => process.send!({ say: text });
  cache.on("peerInvalidation", (e) => {
    if (e.dropped > 0) say(`[process B] dropped its copy of ${e.keys.join(", ")} on A's word (${e.op})`);
  });
  process.on("message", async (m: { op: string }) => {
    if (m.op === "read") {
      let loaderCalled = false;
      const t = process.hrtime.bigint();
      const v = await users.getOrSet("user:42", async () => {
        loaderCalled = true;
        return { id: "42", name: "loaded by B" };
      });
      say(`[process B] read user:42 = ${JSON.stringify(v)} in ${ms(t)}; B's loader ${loaderCalled ? "WAS" : "was not"} called`);
    } else if (m.op === "get") {
      say(`[process B] get user:42 → ${JSON.stringify(await users.get("user:42"))}`);
    } else if (m.op === "close") {
      await cache.close();
      process.exit(0);
    }
    process.send!({ done: m.op });
  });
  await cache.ready();
  process.send!({ ready: true });
} else {
  console.log(bold(`layercache demo with ${server}`) + ` — ${url.replace(/\/\/[^@/]*@/, "//")}, two processes, prefix "${prefix}"`);
  const peer = fork(fileURLToPath(import.meta.url), ["--peer", prefix], { execArgv: process.execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const pending: ((m: Record<string, unknown>) => void)[] = [];
  peer.on("message", (m: Record<string, unknown>) => {
    if (typeof m.say === "string") console.log(`   ${m.say}`);
    else pending.shift()?.(m);
  });
  const next = () => new Promise<Record<string, unknown>>((r) => pending.push(r));
  const ask = async (op: string) => {
    const done = next();
    peer.send({ op });
    await done;
  };
  const settle = () => new Promise((r) => setTimeout(r, 100)); // let a bus message cross

  const cache = makeCache();
  const users = cache.scope("users");
  await Promise.all([cache.ready(), next()]);

  console.log(`\n${bold("1. Process A loads user 42 from its database")}`);
  const t = process.hrtime.bigint();
  await users.getOrSet("user:42", async () => ({ id: "42", name: "Ada", version: 1 }));
  console.log(`   A: loaded and cached in ${ms(t)} — in A's memory (L1) and in ${server} (L2)`);

  console.log(`\n${bold("2. Process B reads user 42")}`);
  await ask("read");

  console.log(`\n${bold("3. A updates user 42; the bus tells B")}`);
  await users.set("user:42", { id: "42", name: "Ada Lovelace", version: 2 });
  await settle();
  await ask("get");

  console.log(`\n${bold("4. A removes user 42")}`);
  await users.remove("user:42");
  await settle();
  await ask("get");

  console.log(`\n${bold("5. Counters in A")}`);
  const s = cache.stats();
  console.log(`   hits ${s.hits}, misses ${s.misses}, loads ${s.loads}, L2 errors ${s.l2Errors}, bus errors ${s.busErrors}`);
  const exited = new Promise((r) => peer.once("exit", r));
  peer.send({ op: "close" });
  await exited;
  await cache.close();
  console.log("\nDone.");
}
