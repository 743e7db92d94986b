/**
 * A real nats-server (Debian's package) with JetStream for the tests, on a free loopback port,
 * with a store folder of its own that survives a restart (so does the JetStream stream).
 */
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { accepts, ServerProcess } from "./server-process.js";
import { ensureBinary, freePort, waitFor } from "./servers.js";

export class NatsServer extends ServerProcess {
  readonly port: number;
  readonly monitorPort: number;

  private constructor(port: number, monitorPort: number, dir: string) {
    super(dir, false);
    this.port = port;
    this.monitorPort = monitorPort;
  }

  /** Starts a server (well under a second). */
  static async start(): Promise<NatsServer> {
    return ServerProcess.retrying(async () => {
      const port = await freePort();
      return new NatsServer(port, await freePort(), mkdtempSync(join(tmpdir(), `layercache-nats-${port}-`)));
    });
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  protected async spawn(): Promise<void> {
    const bin = ensureBinary("nats-server", "nats-server");
    const args = ["-a", "127.0.0.1", "-p", String(this.port), "-m", String(this.monitorPort), "-js", "-sd", this.dir];
    const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.track(proc);
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr = (stderr + String(d)).slice(-4000)));
    // Ready when the monitoring endpoint says JetStream is up (the client port opens earlier).
    await waitFor(
      () => `nats-server on port ${this.port}: ${stderr.trim().slice(-1500)}`,
      async () => (await accepts(this.port)) && (await this.monitor("healthz?js-enabled-only=true")).status === "ok",
      15_000,
      () => this.exit,
    );
  }

  /** A monitoring endpoint's JSON (`varz`, `connz`, `jsz` ...). */
  async monitor(path: string): Promise<Record<string, any>> {
    const res = await fetch(`http://127.0.0.1:${this.monitorPort}/${path}`);
    return (await res.json()) as Record<string, any>;
  }
}
