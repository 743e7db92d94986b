import type { ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { createConnection } from "node:net";

const live = new Set<ServerProcess>();
process.once("exit", () => {
  for (const s of live) s.killNow();
});

/**
 * A server process of the tests (nats-server, rabbitmq-server) with a data folder of its own: killed,
 * restarted, paused and resumed by the tests; always killed and its folder removed when the test
 * process exits. `group`: the server runs in a process group of its own (spawned `detached`), and
 * signals go to the whole group (a broker's helper processes with it).
 */
export abstract class ServerProcess {
  readonly dir: string;
  readonly #group: boolean;
  protected proc: ChildProcess | undefined;
  /** How the current process ended, if it did before it was killed. */
  protected exit: string | undefined;

  protected constructor(dir: string, group: boolean) {
    this.dir = dir;
    this.#group = group;
    live.add(this);
  }

  /** Starts `make()`'s server; one that exits before it is ready (its port taken meanwhile) is made again (three tries). */
  protected static async retrying<T extends ServerProcess>(make: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const server = await make();
      try {
        await server.spawn();
        return server;
      } catch (error) {
        const exitedEarly = server.exit !== undefined;
        await server.stop();
        if (attempt >= 3 || !exitedEarly) throw error;
      }
    }
  }

  /** Spawns the process (into `proc`, noting its early end in `exit`) and resolves once it is ready. */
  protected abstract spawn(): Promise<void>;

  /** Records `proc` as the current process. */
  protected track(proc: ChildProcess): void {
    this.proc = proc;
    this.exit = undefined;
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.exit = `exited (${signal ?? `code ${code}`})`;
    });
  }

  #signal(signal: NodeJS.Signals): void {
    const proc = this.proc;
    if (proc?.pid === undefined) return;
    try {
      if (this.#group) process.kill(-proc.pid, signal);
      else proc.kill(signal);
    } catch {
      // gone
    }
  }

  /** Kills the server (SIGKILL by default) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    this.#signal(signal);
    await gone;
    if (this.#group) this.#signal("SIGKILL"); // helpers left in the group
    this.proc = undefined;
  }

  /** Starts the server again on the same ports and data folder. */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  /** SIGSTOP: the server hangs with its connections open. */
  pause(): void {
    this.#signal("SIGSTOP");
  }

  resume(): void {
    this.#signal("SIGCONT");
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGTERM");
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous last resort at process exit. */
  killNow(): void {
    this.#signal("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
export function accepts(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}
