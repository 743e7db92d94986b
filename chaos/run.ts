/**
 * `npm run chaos`: several processes, each with its own LayerCache on real servers (L2 + bus; one
 * redis-server unless `--l2` / `--bus` name other backends, see chaos/families.ts), doing random
 * operations while the servers are killed, paused and have their connections cut, and loaders turn
 * slow, fail, or outlast the values they replace; then every recorded operation is checked
 * (chaos/checker.ts).
 *
 *   npm run chaos -- [--duration 2m] [--seed N] [--workers 3] [--concurrency 6] [--faults off]
 *                    [--fault-gap 4000-8000] [--fault-kinds server-kill,loader-slow,...] [--cold-keys 5]
 *                    [--sabotage no-bus|no-cas|big-pool|stale-join|no-lock] [--l2 redis|memcached|postgres] [--bus pubsub|streams|postgres|kafka|rabbitmq|nats|nats-jetstream] [--lock on]
 *                    [--dump history.json]
 *
 * Faults on servers: "server-kill" (SIGKILL, then a restart on the same port), "server-pause"
 * (SIGSTOP/SIGCONT), "listener-kill" (the server closes the buses' listening connections: pub/sub
 * subscribers, stream readers, LISTEN connections, consumers ...), "client-kill" (the server closes
 * the other client connections). When the L2 and the bus run on two servers, each server fault
 * picks one of them. A fault the run's backends cannot take is left out of the deck.
 *
 * Prints operations done, faults injected, how often each rule's situation came up, violations
 * (must be 0), unhandled rejections (must be 0), peak memory and stalls per process; exits 1 on any
 * violation. It ends with the command that replays the run: the same seed and options give the
 * same fault schedule and operation mix.
 */
import { fork, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ms from "ms";
import { decodeRecord, generationOf } from "../src/l2/envelope.js";
import { rng } from "../bench/rng.js";
import { check, type FaultWindow, type OpRecord, type Situations, type Violation, type WorkerReport } from "./checker.js";
import { KEYS_PER_SCOPE, RULES, SABOTAGES, STALL, l1Bound, type LoaderMode, type Sabotage, type WorkerConfig } from "./config.js";
import { BUS_KINDS, FAMILIES, L2_KINDS, type BusKind, type ChaosFamily, type ChaosServer, type L2Kind } from "./families.js";

export interface ChaosOptions {
  durationMs: number;
  seed: number;
  workers: number;
  concurrency: number;
  sabotage?: Sabotage;
  /** Inject faults (default true). */
  faults?: boolean;
  /** Quiet time between faults, drawn uniformly from [min, max] ms (default [4000, 8000]). */
  faultGapMs?: [number, number];
  /** Keys of each scope that are rarely written (default 5 of 20). */
  coldKeys?: number;
  /** Only these kinds of fault (default: all seven). */
  faultKinds?: FaultKind[];
  /** The L2 store's family (default "redis"). */
  l2?: L2Kind;
  /** The invalidation bus (default "pubsub": Redis pub/sub). */
  bus?: BusKind;
  /** The caches run with `distributedLock`; with `faults: false` the "distributedFlight" rule is checked. */
  lock?: boolean;
  /** Write the whole history, faults and violations to this file (to study a failure). */
  dump?: string;
  log?: (line: string) => void;
}

export interface ChaosResult {
  /** What the run was asked to do (to print a command that replays it). */
  options: ChaosOptions;
  seed: number;
  ops: number;
  opsByKind: Record<string, number>;
  faults: FaultWindow[];
  violations: Violation[];
  /** Reads outside fault windows (and their grace), where the staleness promise was checked. */
  checkedReads: number;
  /** Window-checked reads that returned a value past its ttl (stale window, fail-safe, soft timeout). */
  staleReads: number;
  /** How often each rule's situation came up (see Situations in chaos/checker.ts). */
  situations: Situations;
  /** What the caches reported by their events, summed over the processes. */
  events: Record<string, number>;
  /** Final reads (processes and L2) that found a value to check. */
  finalValues: number;
  reads: number;
  unhandledRejections: number;
  reports: WorkerReport[];
}

const root = resolve(import.meta.dirname, "..");
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const sleep = (t: number) => new Promise<void>((r) => setTimeout(r, t));

/**
 * "loader-outlast": loaders replacing a stale value run until its window has closed (see
 * LoaderMode in chaos/config.ts) — with the L1 drops and L1 pressure of the workload, refreshes the
 * cache started from a stale value found in L2 outlive that value's window.
 */
export const FAULT_KINDS = ["server-kill", "server-pause", "listener-kill", "client-kill", "loader-slow", "loader-fail", "loader-outlast"] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** The source of truth: versions per key that only grow, and a write lock per key. */
class Source {
  readonly versions = new Map<string, number>();
  readonly #locks = new Map<string, (() => void)[]>();

  read(id: string): number {
    return this.versions.get(id) ?? 0;
  }
  bump(id: string): number {
    const v = this.read(id) + 1;
    this.versions.set(id, v);
    return v;
  }
  lock(id: string, grant: () => void): void {
    const queue = this.#locks.get(id);
    if (queue) queue.push(grant);
    else {
      this.#locks.set(id, []);
      grant();
    }
  }
  unlock(id: string): void {
    const queue = this.#locks.get(id);
    const next = queue?.shift();
    if (next) next();
    else this.#locks.delete(id);
  }
}

export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const log = o.log ?? (() => {});
  const dir = mkdtempSync(join(tmpdir(), "layercache-chaos-"));
  const l2Family = o.l2 ?? "redis";
  const busKind = o.bus ?? "pubsub";
  const busFamily = BUS_KINDS[busKind];
  const names = [...new Set([l2Family, busFamily])];
  const families: Record<string, ChaosFamily> = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await FAMILIES[n]!()] as const)));
  const servers: Record<string, ChaosServer> = {};
  const stopServers = async () => {
    await Promise.all(Object.values(servers).map((s) => s.stop().catch(() => {})));
  };
  try {
    for (const n of names) servers[n] = await families[n]!.start();
  } catch (error) {
    await stopServers();
    throw error;
  }
  const urls = Object.fromEntries(names.map((n) => [n, servers[n]!.url]));
  /** The servers a fault of `kind` can hit (each server fault picks one). */
  const targetsOf = (kind: FaultKind): string[] => {
    if (kind === "listener-kill") return servers[busFamily]!.cutListeners && o.sabotage !== "no-bus" ? [busFamily] : [];
    if (kind === "client-kill") return names.filter((n) => servers[n]!.cutClients);
    if (kind === "server-pause") return names.filter((n) => servers[n]!.pause);
    return kind === "server-kill" ? names : [];
  };
  const possible = (o.faultKinds ?? FAULT_KINDS).filter((k) => k.startsWith("loader-") || targetsOf(k).length > 0);
  const prefix = `chaos-${o.seed}`;
  const source = new Source();
  const random = rng(o.seed);
  const faults: FaultWindow[] = [];
  const workers: ChildProcess[] = [];
  const waiters = new Map<string, { resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  const expect = (w: number, type: string) => new Promise<Record<string, unknown>>((resolve, reject) => waiters.set(`${w}:${type}`, { resolve, reject }));
  // A worker that dies (or a run that overstays) fails the run instead of hanging it.
  let finished = false;
  const abort = (error: Error): void => {
    for (const w of waiters.values()) w.reject(error);
    waiters.clear();
  };
  const deadline = setTimeout(() => abort(new Error(`chaos: the run did not finish within ${o.durationMs / 1000 + 120} s`)), o.durationMs + 120_000);

  try {
    for (let id = 0; id < o.workers; id++) {
      const config: WorkerConfig = { id, urls, l2: o.l2, prefix, seed: o.seed, concurrency: o.concurrency, dir, sabotage: o.sabotage, coldKeys: o.coldKeys, maxEntries: l1Bound(id), bus: o.bus, lock: o.lock };
      const child = fork(join(root, "chaos/worker.ts"), [JSON.stringify(config)], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
      child.on("message", (m: { type: string; req?: number; id?: string }) => {
        if (m.type === "read") child.send({ req: m.req, version: source.read(m.id!) });
        else if (m.type === "bump") child.send({ req: m.req, version: source.bump(m.id!) });
        else if (m.type === "lock") source.lock(m.id!, () => child.send({ req: m.req }));
        else if (m.type === "unlock") source.unlock(m.id!);
        else {
          const w = waiters.get(`${id}:${m.type}`);
          waiters.delete(`${id}:${m.type}`);
          w?.resolve(m as Record<string, unknown>);
        }
      });
      child.on("exit", (code, signal) => {
        if (!finished) abort(new Error(`chaos: worker ${id} exited (${signal ?? `code ${code}`}) before the run ended`));
      });
      workers.push(child);
    }
    await Promise.all(workers.map((_, i) => expect(i, "ready")));
    log(`chaos: seed ${o.seed}, ${o.workers} processes × ${o.concurrency} actors, ${Math.round(o.durationMs / 1000)} s, l2 ${l2Family} (${urls[l2Family]}), bus ${busKind} (${urls[busFamily]})${o.sabotage ? `, SABOTAGE ${o.sabotage}` : ""}`);
    const started = now();
    for (const w of workers) w.send({ type: "start" });

    // Faults, until a quiet tail before the end.
    const broadcast = (mode: LoaderMode) => workers.forEach((w) => w.send({ type: "loaderMode", mode }));
    // Kinds are dealt from a shuffled deck, so every seven faults cover every kind once.
    const [gapMin, gapMax] = o.faultGapMs ?? [4000, 8000];
    let deck: FaultKind[] = [];
    while (o.faults !== false && now() - started < o.durationMs - 3000) {
      await sleep(gapMin + random() * (gapMax - gapMin));
      if (now() - started >= o.durationMs - 3000) break;
      if (deck.length === 0) deck = shuffle([...possible], random);
      const kind = deck.pop()!;
      const targets = targetsOf(kind);
      const target = targets.length > 0 ? targets[Math.floor(random() * targets.length)]! : undefined;
      const server = target === undefined ? undefined : servers[target]!;
      const start = now();
      if (kind === "server-kill") {
        await server!.kill();
        await sleep(300 + random() * 1000);
        await server!.restart();
      } else if (kind === "server-pause") {
        server!.pause!();
        await sleep(300 + random() * 900);
        server!.resume!();
      } else if (kind === "listener-kill") {
        await server!.cutListeners!(busKind).catch(() => {});
      } else if (kind === "client-kill") {
        await server!.cutClients!().catch(() => {});
      } else if (kind === "loader-outlast") {
        // Long enough for a value refreshed just before it to age into the last part of its stale
        // window (where the workers drop it from L1) while the fault lasts.
        broadcast("outlast");
        await sleep(2000 + random() * 1000);
        broadcast("normal");
      } else {
        broadcast(kind === "loader-slow" ? "slow" : "fail");
        await sleep(800 + random() * 1200);
        broadcast("normal");
      }
      faults.push({ kind, start, end: now() });
      log(`  fault ${faults.length}: ${kind}${target !== undefined && names.length > 1 ? ` (${target})` : ""} at +${((start - started) / 1000).toFixed(1)} s for ${(now() - start).toFixed(0)} ms`);
    }
    const remaining = o.durationMs - (now() - started);
    if (remaining > 0) await sleep(remaining);

    // Stop; once the last fault's effects are over (and at least the propagation bound has
    // passed), see what every process holds — soon enough that its copies are still there — and L2.
    await Promise.all(workers.map((w, i) => (w.send({ type: "stop" }), expect(i, "stopped"))));
    const lastFaultEnd = faults.reduce((t, f) => Math.max(t, f.end), -Infinity);
    await sleep(Math.max(RULES.bound, lastFaultEnd + RULES.grace - now()));
    const done = await Promise.all(workers.map((w, i) => (w.send({ type: "final" }), expect(i, "done"))));
    finished = true;
    const history: OpRecord[] = [];
    const finals: OpRecord[] = [];
    const reports: WorkerReport[] = [];
    for (const d of done) {
      const data = JSON.parse(readFileSync(d.file as string, "utf8")) as { historyFile: string; finals: OpRecord[]; report: WorkerReport };
      for (const line of readFileSync(data.historyFile, "utf8").split("\n")) if (line !== "") history.push(JSON.parse(line) as OpRecord);
      for (const r of data.finals) finals.push(r);
      reports.push(data.report);
    }
    // What L2 holds, read with a store of the run's family (as the caches wrote it).
    const store = await families[l2Family]!.store!(urls[l2Family]!, { timeoutMs: 5000, circuitBreaker: { threshold: 0, cooldown: "1s" } });
    await store.connect?.();
    for (const scope of ["fg", "bg"] as const) {
      for (let i = 0; i < KEYS_PER_SCOPE[scope]; i++) {
        const text = await store.get(`${prefix}:${scope}:k${i}`);
        if (text === null || text === undefined) continue;
        const rec = decodeRecord(text);
        if (rec.payload === undefined) continue;
        // A tagged value whose tag was invalidated since it was written is no value any more.
        let invalidated = false;
        for (const [tag, gen] of rec.tags ?? []) {
          const tagText = await store.get(`${prefix}:${scope}%tag:${tag}`);
          if (typeof tagText !== "string" || generationOf(tagText) !== gen) invalidated = true;
        }
        if (invalidated) continue;
        const value = JSON.parse(rec.payload) as { v: number };
        finals.push({ worker: -1, op: "get", scope, key: `k${i}`, start: now(), end: now(), ok: true, version: value.v });
      }
    }
    await store.close?.();
    await families[l2Family]!.close?.();
    const { violations, checkedReads, reads, staleReads, finalValues, situations } = check(history, faults, reports, { ...RULES, distributedLock: o.lock === true }, finals);
    if (o.dump) writeFileSync(o.dump, JSON.stringify({ seed: o.seed, options: { ...o, log: undefined }, started, faults, violations, finals, reports, history }));
    const opsByKind: Record<string, number> = {};
    let ops = 0;
    for (const r of history) {
      if (r.op === "load" || r.op === "loadError") continue;
      opsByKind[r.op] = (opsByKind[r.op] ?? 0) + 1;
      ops++;
    }
    const events: Record<string, number> = {};
    for (const w of reports) for (const [k, n] of Object.entries(w.events ?? {})) events[k] = (events[k] ?? 0) + n;
    return { options: o, seed: o.seed, ops, opsByKind, faults, violations, checkedReads, reads, staleReads, situations, events, finalValues, unhandledRejections: reports.reduce((a, r) => a + r.unhandledRejections, 0), reports };
  } finally {
    finished = true;
    clearTimeout(deadline);
    for (const w of workers) if (w.exitCode === null) w.kill("SIGKILL");
    await Promise.all(Object.values(families).map((f) => f.close?.().catch(() => {})));
    await stopServers();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function summarize(r: ChaosResult): string {
  const lines = [
    `operations: ${r.ops} (${Object.entries(r.opsByKind).map(([k, n]) => `${k} ${n}`).join(", ")})`,
    `faults injected: ${r.faults.length} (${Object.entries(r.faults.reduce<Record<string, number>>((a, f) => ((a[f.kind] = (a[f.kind] ?? 0) + 1), a), {})).map(([k, n]) => `${k} ${n}`).join(", ")})`,
    `reads checked for staleness (outside server faults and ${RULES.grace} ms after each): ${r.checkedReads} of ${r.reads}; ${r.finalValues} values checked after the run`,
    ...situationLines(r),
    `violations: ${r.violations.length}`,
    ...r.violations.slice(0, 20).map((v) => `  - [${v.rule}] ${v.detail}`),
    `unhandled rejections: ${r.unhandledRejections}`,
    `peak memory per process: ${r.reports.map((w) => `#${w.worker} rss ${(w.peakRssBytes / 2 ** 20).toFixed(0)} MiB, heap ${(w.peakHeapBytes / 2 ** 20).toFixed(0)} MiB`).join("; ")}`,
    `loads of one key at once (max): ${Math.max(...r.reports.map((w) => w.maxLoadsPerKey))}; background refreshes at once (max, counted by the workers): ${Math.max(...r.reports.map((w) => w.maxRefreshing))}`,
    `stalls (a process running over ${STALL.min} ms late; they lengthen the bound for its own reads): ${r.reports.map((w) => `#${w.worker} ${w.stalls.length}, longest ${Math.max(0, ...w.stalls.map(([a, b]) => b - a)).toFixed(0)} ms`).join("; ")}`,
    `seed: ${r.seed} (replay: ${replayCommand(r.options)})`,
  ];
  return lines.join("\n");
}

/** How often each rule's situation came up: a rule whose situation never occurred was not exercised. */
function situationLines(r: ChaosResult): string[] {
  const s = r.situations;
  const e = (name: string): number => r.events[name] ?? 0;
  return [
    `reads checked against their window (staleWindow): ${s.windowChecked}, of them ${s.duringFaults} during server faults or ${RULES.grace} ms after; served past ttl: ${s.stale} in the stale window, ${s.failSafe} fail-safe, ${s.softTimeout} after a soft timeout`,
    `refreshes started from a stale value found in L2: ${s.l2Refreshes}, ${s.l2RefreshesPastWindow} of them still running when that value left its window; reads during them: ${s.duringL2Refresh}, ${s.pastWindowDuringL2Refresh} of them after the value's window had closed`,
    `bus (${r.options.bus ?? "pubsub"}, l2 ${r.options.l2 ?? "redis"}): disconnects ${e("busDisconnect")}, reconnects with L1 repair ${e("busReconnect")}, caught up without repair ${e("busCaughtUp")}`,
    `cache events: hits l1 ${e("hit l1")}, l2 ${e("hit l2")}; stale hits background ${e("staleHit background")}, failSafe ${e("staleHit failSafe")}, softTimeout ${e("staleHit softTimeout")}; refreshes from L1 ${e("refreshStart from L1")}, from L2 ${e("refreshStart from L2")}, failed ${e("refreshFailure")}, skipped (pool full ${e("refreshSkipped poolFull")}, cooldown ${e("refreshSkipped cooldown")}); load errors ${e("loadError")}; L1 evictions ${e("evictions")}; getOrSetMany loads not checked for single flight (an invalidation between the call and the loader call) ${e("loads not checked for single flight")}`,
  ];
}

/** The command line that runs `o` again: same seed, same fault schedule and operation mix. */
export function replayCommand(o: ChaosOptions): string {
  const args = [`--seed ${o.seed}`, `--duration ${o.durationMs / 1000}s`, `--workers ${o.workers}`, `--concurrency ${o.concurrency}`];
  if (o.faults === false) args.push("--faults off");
  if (o.faultGapMs) args.push(`--fault-gap ${o.faultGapMs[0]}-${o.faultGapMs[1]}`);
  if (o.faultKinds) args.push(`--fault-kinds ${o.faultKinds.join(",")}`);
  if (o.coldKeys !== undefined) args.push(`--cold-keys ${o.coldKeys}`);
  if (o.sabotage) args.push(`--sabotage ${o.sabotage}`);
  if (o.l2) args.push(`--l2 ${o.l2}`);
  if (o.bus) args.push(`--bus ${o.bus}`);
  if (o.lock) args.push("--lock on");
  return `npm run chaos -- ${args.join(" ")}`;
}

function coldKeys(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > Math.max(KEYS_PER_SCOPE.fg, KEYS_PER_SCOPE.bg)) throw new Error(`--cold-keys must be a whole number from 0 to ${Math.max(KEYS_PER_SCOPE.fg, KEYS_PER_SCOPE.bg)} (got ${text})`);
  return n;
}

function faultGap(text: string): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(text);
  if (!m || Number(m[1]) > Number(m[2])) throw new Error(`--fault-gap must be MIN-MAX in ms (got ${text})`);
  return [Number(m[1]), Number(m[2])];
}

function faultKinds(text: string): FaultKind[] {
  const kinds = text.split(",");
  const unknown = kinds.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
  if (kinds.length === 0 || unknown.length > 0) throw new Error(`--fault-kinds takes a comma-separated list of ${FAULT_KINDS.join(", ")} (unknown: ${unknown.join(", ")})`);
  return kinds as FaultKind[];
}

function busArg(text: string | undefined): BusKind | undefined {
  if (text === undefined) return undefined;
  if (!Object.hasOwn(BUS_KINDS, text)) throw new Error(`--bus takes one of ${Object.keys(BUS_KINDS).join(", ")} (got ${text})`);
  return text as BusKind;
}

function l2Arg(text: string | undefined): L2Kind | undefined {
  if (text === undefined) return undefined;
  if (!(L2_KINDS as readonly string[]).includes(text)) throw new Error(`--l2 takes one of ${L2_KINDS.join(", ")} (got ${text})`);
  return text as L2Kind;
}

function sabotageArg(text: string | undefined): Sabotage | undefined {
  if (text === undefined) return undefined;
  if (!(SABOTAGES as readonly string[]).includes(text)) throw new Error(`--sabotage takes one of ${SABOTAGES.join(", ")} (got ${text})`);
  return text as Sabotage;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  return process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // Ctrl-C: exit handlers stop the servers (even a paused one) and remove their directories.
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));
  const d = arg("duration") ?? "2m";
  const durationMs = /^\d+$/.test(d) ? Number(d) * 1000 : (ms as unknown as (s: string) => number | undefined)(d);
  if (!durationMs || durationMs < 5000) throw new Error(`--duration must be at least 5s (got ${d})`);
  const seed = arg("seed") !== undefined ? Number(arg("seed")) : Math.floor(Math.random() * 1e9);
  const result = await runChaos({
    durationMs,
    seed,
    workers: Number(arg("workers") ?? 3),
    concurrency: Number(arg("concurrency") ?? 6),
    sabotage: sabotageArg(arg("sabotage")),
    l2: l2Arg(arg("l2")),
    bus: busArg(arg("bus")),
    faults: arg("faults") !== "off",
    lock: arg("lock") === "on",
    ...(arg("cold-keys") !== undefined ? { coldKeys: coldKeys(arg("cold-keys")!) } : {}),
    ...(arg("fault-gap") !== undefined ? { faultGapMs: faultGap(arg("fault-gap")!) } : {}),
    ...(arg("fault-kinds") !== undefined ? { faultKinds: faultKinds(arg("fault-kinds")!) } : {}),
    dump: arg("dump"),
    log: (l) => console.log(l),
  });
  console.log(summarize(result));
  process.exitCode = result.violations.length === 0 && result.unhandledRejections === 0 ? 0 : 1;
}
