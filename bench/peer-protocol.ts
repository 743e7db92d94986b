/**
 * Scenario 6's two processes, shared by every bus's benchmark: A (the bench) removes keys that
 * process B (a forked peer) holds in its L1, and B reports, with the machine's monotonic clock
 * (shared by all processes), when it dropped each one. Both run steady background load meanwhile.
 */
import { fork, type ChildProcess } from "node:child_process";
import type { LayerCache } from "../src/index.js";
import { sleep } from "./lib.js";

/** What B runs: layercache on some bus, or a raw client's floor. */
export interface PeerSide {
  /** Loads `key` into B's L1 (B loads it itself: a set from A would race its own message with the priming). */
  prime(key: string): Promise<void>;
  /** One background operation on key `k` (the n-th). */
  op(k: string, n: number): Promise<unknown>;
  close(): Promise<void>;
}

/** Child side: answers A's messages (prime, background, stop) with `side`; `reportDrop` is what B's drop handler calls. */
export function servePeer(side: PeerSide, onStop: () => void | Promise<void> = () => {}): void {
  const send = (m: unknown): void => void process.send!(m);
  let background: ReturnType<typeof setInterval> | undefined;
  process.on("message", async (m: { op: string; key?: string; perTick?: number }) => {
    if (m.op === "prime") {
      await side.prime(m.key!);
      send({ primed: m.key });
    } else if (m.op === "background") {
      // Steady load: `perTick` operations every 2 ms on keys of their own.
      let n = 0;
      background = setInterval(() => {
        for (let i = 0; i < m.perTick!; i++) void side.op(`bg:${n++ % 2000}`, n).catch(() => {});
      }, 2);
    } else if (m.op === "stop") {
      if (background) clearInterval(background);
      await side.close();
      await onStop();
      send({ stopped: true });
      process.exit(0);
    }
  });
  send({ ready: true });
}

/** B's drop handler: tells A the moment `key` was dropped. */
export function reportDrop(key: string): void {
  const t = process.hrtime.bigint();
  process.send!({ dropped: key, t: t.toString() });
}

/** B on layercache: `cache` (on the bus under test) reports each key a peer's removal dropped. */
export async function cacheSide(cache: LayerCache): Promise<PeerSide> {
  cache.on("peerInvalidation", (e) => {
    if (e.op === "remove" && e.dropped > 0) for (const key of e.keys) reportDrop(key);
  });
  await cache.ready();
  return {
    prime: async (key) => void (await cache.getOrSet(key, async () => ({ loadedBy: "B" }))),
    op: (k, n) => (n % 5 === 0 ? cache.set(k, { n }) : cache.getOrSet(k, async () => ({ n }))),
    close: () => cache.close(),
  };
}

/** Parent side: B forked from `file` with `args`, once it is ready. */
export async function forkPeer(file: string, args: string[]): Promise<Peer> {
  const peer = new Peer(fork(file, args, { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] }));
  await peer.expect("ready");
  return peer;
}

export class Peer {
  readonly #child: ChildProcess;
  readonly #waiting = new Map<string, (m: Record<string, string>) => void>();

  constructor(child: ChildProcess) {
    this.#child = child;
    child.on("message", (m: Record<string, string>) => {
      const id = m.dropped !== undefined ? `dropped:${m.dropped}` : m.primed !== undefined ? `primed:${m.primed}` : m.ready ? "ready" : "stopped";
      this.#waiting.get(id)?.(m);
    });
  }

  expect(id: string): Promise<Record<string, string>> {
    return new Promise((r) => this.#waiting.set(id, r));
  }

  /** B starts its background load: `perTick` operations every 2 ms. */
  background(perTick: number): void {
    this.#child.send({ op: "background", perTick });
  }

  /**
   * `samples` times: B primes a key, A removes it with `remove`; the time from the call until B
   * dropped it, in ms. `parts`, when given, gets each sample split in two: until `remove` resolved,
   * and from then until B dropped the key.
   */
  async measure(samples: number, remove: (key: string) => Promise<unknown>, parts?: [number, number][]): Promise<number[]> {
    const latencies: number[] = [];
    for (let i = 0; i < samples; i++) {
      const key = `inv:${i}`;
      const primed = this.expect(`primed:${key}`);
      this.#child.send({ op: "prime", key });
      await primed;
      const dropped = this.expect(`dropped:${key}`);
      const t0 = process.hrtime.bigint();
      await remove(key);
      const t1 = process.hrtime.bigint();
      const m = await dropped;
      latencies.push(Number(BigInt(m.t!) - t0) / 1e6);
      parts?.push([Number(t1 - t0) / 1e6, Number(BigInt(m.t!) - t1) / 1e6]);
      await sleep(2);
    }
    return latencies;
  }

  async stop(): Promise<void> {
    const stopped = this.expect("stopped");
    this.#child.send({ op: "stop" });
    await stopped;
  }
}
