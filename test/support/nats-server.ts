/**
 * A real nats-server (Debian's package) with JetStream for the tests, on a free loopback port,
 * with a store folder of its own that survives a restart (so does the JetStream stream).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { accepts } from "./rabbitmq-server.js";
import { ensureBinary, freePort, waitFor } from "./servers.js";

const live = new Set<NatsServer>();
process.once("exit", () => {
  for (const s of live) {
    s.proc?.kill("SIGKILL");
    rmSync(s.dir, { recursive: true, force: true });
  }
});

export class NatsServer {
  readonly port: number;
  readonly monitorPort: number;
  readonly dir: string;
  proc: ChildProcess | undefined;
  #exit: string | undefined;

  private constructor(port: number, monitorPort: number, dir: string) {
    this.port = port;
    this.monitorPort = monitorPort;
    this.dir = dir;
  }

  /** Starts a server (well under a second); one that exits before it listens is started again on a new port (three tries). */
  static async start(): Promise<NatsServer> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const server = new NatsServer(port, await freePort(), mkdtempSync(join(tmpdir(), `layercache-nats-${port}-`)));
      live.add(server);
      try {
        await server.#spawn();
        return server;
      } catch (error) {
        const exitedEarly = server.#exit !== undefined;
        await server.stop();
        if (attempt >= 3 || !exitedEarly) throw error;
      }
    }
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  async #spawn(): Promise<void> {
    const bin = ensureBinary("nats-server", "nats-server");
    const args = ["-a", "127.0.0.1", "-p", String(this.port), "-m", String(this.monitorPort), "-js", "-sd", this.dir];
    const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.proc = proc;
    this.#exit = undefined;
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr = (stderr + String(d)).slice(-4000)));
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    // Ready when the monitoring endpoint says JetStream is up (the client port opens earlier).
    await waitFor(
      () => `nats-server on port ${this.port}: ${stderr.trim().slice(-1500)}`,
      async () => (await accepts(this.port)) && (await this.monitor("healthz?js-enabled-only=true")).status === "ok",
      15_000,
      () => this.#exit,
    );
  }

  /** A monitoring endpoint's JSON (`varz`, `connz`, `jsz` ...). */
  async monitor(path: string): Promise<Record<string, any>> {
    const res = await fetch(`http://127.0.0.1:${this.monitorPort}/${path}`);
    return (await res.json()) as Record<string, any>;
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill(signal);
    await gone;
    this.proc = undefined;
  }

  /** Starts the server again on the same port and store (JetStream streams survive; core subscriptions do not). */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  /** SIGSTOP: the server hangs, connections stay open. */
  pause(): void {
    this.proc?.kill("SIGSTOP");
  }

  resume(): void {
    this.proc?.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGTERM");
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
