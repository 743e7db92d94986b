/**
 * `npm run demo` — a narrated walkthrough of layercache.
 *
 * Without REDIS_URL: two instances of one service run in this process, joined by a MemoryBus (no
 * server needed). With REDIS_URL: two processes share Redis as L2 and bus; without REDIS_URL but
 * with DATABASE_URL=postgres://…: two processes share PostgreSQL alone (see demo-redis.ts).
 * Every number printed is measured while it runs.
 */
import { LayerCache, MemoryBus } from "../src/index.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
let step = 0;
const say = (title: string) => console.log(`\n${bold(`${++step}. ${title}`)}`);
const note = (text: string) => console.log(`   ${text}`);

/** A pretend database: 40 ms per query, and a counter of how often it was asked. */
const db = {
  queries: 0,
  users: new Map<string, { id: string; name: string; version: number }>([["42", { id: "42", name: "Ada", version: 1 }]]),
  async findUser(id: string) {
    this.queries++;
    await sleep(40);
    const u = this.users.get(id);
    return u ? { ...u } : null;
  },
};

async function timed<T>(fn: () => Promise<T>): Promise<[T, string]> {
  const t = process.hrtime.bigint();
  const v = await fn();
  return [v, `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(3)} ms`];
}

async function main(): Promise<void> {
  console.log(bold("layercache demo") + dim(" — two instances of a service, one process, a MemoryBus between them"));

  const bus = new MemoryBus();
  const a = new LayerCache({ bus, ttl: "1m" });
  const b = new LayerCache({ bus, ttl: "1m" });
  const log: string[] = [];
  b.on("peerInvalidation", (e) => log.push(`B dropped ${e.dropped} entr${e.dropped === 1 ? "y" : "ies"} (${e.op} ${e.keys.join(", ") || e.scope || "all"}) on A's word`));
  await Promise.all([a.ready(), b.ready()]);

  say("A scope and a cached function");
  const usersA = a.scope("users", { ttl: "5m" });
  const usersB = b.scope("users", { ttl: "5m" });
  const getUserA = usersA.cached((id: string) => db.findUser(id), { key: (id) => `user:${id}` });
  const getUserB = usersB.cached((id: string) => db.findUser(id), { key: (id) => `user:${id}` });
  note(`getUser lives in scope "users"; getUser.cacheKey("42") = ${JSON.stringify(getUserA.cacheKey("42"))}`);

  say("Instance A reads user 42 twice");
  let [u, t] = await timed(() => getUserA("42"));
  note(`first read:  ${JSON.stringify(u)} in ${t} — loaded from the database (queries so far: ${db.queries})`);
  [u, t] = await timed(() => getUserA("42"));
  note(`second read: same value in ${t} — served from A's memory (L1); queries still ${db.queries}`);

  say("100 requests for user 7 arrive at once on B (a stampede)");
  db.users.set("7", { id: "7", name: "Grace", version: 1 });
  const before = db.queries;
  await Promise.all(Array.from({ length: 100 }, () => getUserB("7")));
  note(`the database was asked ${db.queries - before} time(s): concurrent misses share one load (single flight)`);

  say("B reads user 42 — and A updates it");
  await getUserB("42");
  note(`B has its own copy in L1 (no L2 in this demo, so B loaded it itself: queries ${db.queries})`);
  db.users.set("42", { id: "42", name: "Ada Lovelace", version: 2 });
  await usersA.set("user:42", db.users.get("42"));
  note(`A wrote the new version with set(); the bus told B at once:`);
  note(dim(`  ${log.shift()}`));
  note(`B now reads ${JSON.stringify(await getUserB("42"))}`);

  say("Stale-while-revalidate: nobody waits for an expired entry");
  const prices = a.scope("prices", { ttl: "200ms", refresh: "background" });
  let price = 100;
  const loadPrice = async () => {
    await sleep(60);
    return { sku: "book", price: price, at: new Date().toISOString().slice(11, 23) };
  };
  note(`first read: ${JSON.stringify(await prices.getOrSet("book", loadPrice))} (loaded, 60 ms)`);
  price = 120;
  await sleep(250);
  note(`250 ms later the entry is past its 200 ms ttl, inside the stale window (maxStale defaults to ttl):`);
  const [stale, ts] = await timed(() => prices.getOrSet("book", loadPrice));
  note(`read: ${JSON.stringify(stale)} in ${ts} — the stale value at once, while one refresh runs behind it`);
  await sleep(80);
  note(`a moment later: ${JSON.stringify(await prices.getOrSet("book", loadPrice))} — refreshed`);

  say("Fail-safe: the database goes down");
  await sleep(250);
  const failing = async (): Promise<never> => {
    throw new Error("database unreachable");
  };
  const [fallback, tf] = await timed(() => prices.getOrSet("book", failing, { refresh: "foreground" }));
  note(`loader threw, yet the read returned ${JSON.stringify(fallback)} in ${tf}: the last good value, within ttl + failSafe (5m)`);

  say("A remove on B reaches A");
  await getUserA("42");
  await getUserB.removeCached("42");
  note(`B called getUser.removeCached("42"); A's copy: ${JSON.stringify(await usersA.get("user:42"))}`);

  say("Counters");
  const s = a.stats();
  note(`A: hits ${s.hits}, misses ${s.misses}, stale hits ${s.staleHits}, loads ${s.loads}, refreshes ${s.refreshSuccesses}, fail-safe answers ${s.failSafeHits}, dropped by peers ${s.peerDropped}, entries ${s.entries}`);
  const sb = b.stats();
  note(`B: hits ${sb.hits}, misses ${sb.misses}, loads ${sb.loads}, entries dropped by A ${sb.peerDropped}`);

  await Promise.all([a.close(), b.close()]);
  console.log(`\n${dim("Done. Next: `npm test` runs the whole suite.")}`);
}

if (process.env.REDIS_URL || /^postgres(ql)?:\/\//.test(process.env.DATABASE_URL ?? "")) {
  await import("./demo-redis.js");
} else {
  main().catch((error) => {
    console.error(error);
    process.exitCode = 1;
  });
}
