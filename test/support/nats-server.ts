/**
 * A real nats-server (Debian's package) with JetStream for the tests, on a free loopback port,
 * with a store folder of its own that survives a restart (so does the JetStream stream).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { accepts, ensureBinary, freePort, ServerProcess, type ServerLaunch } from "./servers.js";

export class NatsServer extends ServerProcess {
  readonly monitorPort: number;
  readonly dir: string;

  private constructor(port: number, monitorPort: number) {
    super(port);
    this.monitorPort = monitorPort;
    this.dir = mkdtempSync(join(tmpdir(), `layercache-nats-${port}-`));
  }

  /** Starts a server on a free port (well under a second). */
  static async start(): Promise<NatsServer> {
    const monitorPort = await freePort();
    return ServerProcess.startWith((port) => new NatsServer(port, monitorPort));
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  protected launch(): ServerLaunch {
    const bin = ensureBinary("nats-server", "nats-server");
    const args = ["-a", "127.0.0.1", "-p", String(this.port), "-m", String(this.monitorPort), "-js", "-sd", this.dir];
    // Ready when the monitoring endpoint says JetStream is up (the client port opens earlier).
    return { bin, args, name: `nats-server on port ${this.port}`, ready: async () => (await accepts(this.port)) && (await this.monitor("healthz?js-enabled-only=true")).status === "ok" };
  }

  /** A monitoring endpoint's JSON (`varz`, `connz`, `jsz` ...). */
  async monitor(path: string): Promise<Record<string, any>> {
    const res = await fetch(`http://127.0.0.1:${this.monitorPort}/${path}`);
    return (await res.json()) as Record<string, any>;
  }

  override removeFiles(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
