import { fork, type ChildProcess } from "node:child_process";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..", "..");

/** A child Node process running `script` (TypeScript, through tsx), answering commands over IPC. */
export class WorkerProcess {
  readonly child: ChildProcess;
  readonly events: Record<string, unknown>[] = [];
  #next = 0;
  #waiting = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();
  #listeners: ((e: Record<string, unknown>) => void)[] = [];

  constructor(script: string, args: string[]) {
    this.child = fork(join(root, script), args, { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.child.on("message", (m: Record<string, unknown>) => {
      if (typeof m.id === "number") {
        const w = this.#waiting.get(m.id);
        this.#waiting.delete(m.id);
        if (m.ok) w?.resolve(m.result);
        else w?.reject(new Error(String(m.error)));
      } else {
        this.events.push(m);
        for (const l of this.#listeners) l(m);
      }
    });
    this.child.on("exit", () => {
      for (const w of this.#waiting.values()) w.reject(new Error("worker exited"));
      this.#waiting.clear();
    });
  }

  send<T = unknown>(command: Record<string, unknown>): Promise<T> {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ ...command, id });
    });
  }

  /** Resolves with the first event (already received or to come) that matches. */
  event(match: (e: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("event not received in time")), timeoutMs);
      this.#listeners.push((e) => {
        if (match(e)) {
          clearTimeout(timer);
          resolve(e);
        }
      });
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    await this.send({ op: "close" }).catch(() => {});
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
