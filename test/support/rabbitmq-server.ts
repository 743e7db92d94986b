/**
 * A real rabbitmq-server (Debian's package) for the tests, on free loopback ports, with a node
 * name, an epmd, a home (Erlang cookie), a config and a data folder of its own, so that it meets
 * no other broker on the machine and leaves nothing behind.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ensureBinary, freePort, waitFor } from "./servers.js";

const live = new Set<RabbitMQServer>();
process.once("exit", () => {
  for (const s of live) s.killNow();
});

/** The scripts themselves, not Debian's wrapper in /usr/sbin (run as root, it switches to the rabbitmq user, who cannot use our folder). */
function script(name: "rabbitmq-server" | "rabbitmqctl"): string {
  const wrapper = ensureBinary(name, "rabbitmq-server");
  const direct = "/usr/lib/rabbitmq/bin/" + name;
  return existsSync(direct) ? direct : join(dirname(wrapper), name);
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

export class RabbitMQServer {
  readonly port: number;
  readonly dir: string;
  readonly #distPort: number;
  readonly #epmdPort: number;
  #proc: ChildProcess | undefined;
  #epmd: ChildProcess | undefined;
  #exit: string | undefined;
  #output = "";

  private constructor(port: number, distPort: number, epmdPort: number, dir: string) {
    this.port = port;
    this.#distPort = distPort;
    this.#epmdPort = epmdPort;
    this.dir = dir;
  }

  /** Starts a broker (about 5–10 s). A broker that exits before it listens is started again on new ports (three tries). */
  static async start(): Promise<RabbitMQServer> {
    for (let attempt = 1; ; attempt++) {
      const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()];
      const server = new RabbitMQServer(port, distPort, epmdPort, mkdtempSync(join(tmpdir(), `layercache-rabbitmq-${port}-`)));
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
    return `amqp://guest:guest@127.0.0.1:${this.port}`;
  }

  get nodeName(): string {
    return `layercache-${this.port}@localhost`;
  }

  /** The environment that points rabbitmq-server and rabbitmqctl at this broker only. */
  get env(): NodeJS.ProcessEnv {
    const d = this.dir;
    return {
      ...process.env,
      HOME: d,
      RABBITMQ_NODENAME: this.nodeName,
      RABBITMQ_NODE_IP_ADDRESS: "127.0.0.1",
      RABBITMQ_NODE_PORT: String(this.port),
      RABBITMQ_DIST_PORT: String(this.#distPort),
      ERL_EPMD_PORT: String(this.#epmdPort),
      ERL_EPMD_ADDRESS: "127.0.0.1",
      RABBITMQ_MNESIA_BASE: join(d, "mnesia"),
      RABBITMQ_LOG_BASE: join(d, "log"),
      RABBITMQ_CONFIG_FILE: join(d, "rabbitmq.conf"),
      RABBITMQ_ADVANCED_CONFIG_FILE: join(d, "advanced.config"),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(d, "enabled_plugins"),
      RABBITMQ_PID_FILE: join(d, "rabbitmq.pid"),
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: "-kernel inet_dist_use_interface {127,0,0,1}",
    };
  }

  async #spawn(): Promise<void> {
    writeFileSync(join(this.dir, "rabbitmq.conf"), [`listeners.tcp.default = 127.0.0.1:${this.port}`, "log.console = true", "log.console.level = warning", "log.file = false", ""].join("\n"));
    writeFileSync(join(this.dir, "enabled_plugins"), "[].\n");
    this.#output = "";
    this.#exit = undefined;
    if (this.#epmd === undefined || this.#epmd.exitCode !== null) {
      // An epmd of our own (not a daemon), so that stopping the broker ends it too.
      const epmd = spawn(ensureBinary("epmd", "erlang-base"), ["-port", String(this.#epmdPort), "-address", "127.0.0.1"], { stdio: "ignore", env: this.env });
      this.#epmd = epmd;
      await waitFor(`epmd on port ${this.#epmdPort}`, () => accepts(this.#epmdPort), 10_000, () => (epmd.exitCode !== null ? `epmd exited (${epmd.exitCode})` : undefined));
    }
    // A process group of its own: the broker's helpers (erl_child_setup, inet_gethost) go with it.
    const proc = spawn(script("rabbitmq-server"), [], { stdio: ["ignore", "pipe", "pipe"], env: this.env, detached: true });
    this.#proc = proc;
    proc.stdout?.on("data", (d) => (this.#output = (this.#output + String(d)).slice(-4000)));
    proc.stderr?.on("data", (d) => (this.#output = (this.#output + String(d)).slice(-4000)));
    proc.once("exit", (code, signal) => {
      if (this.#proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    await waitFor(
      () => `rabbitmq-server on port ${this.port}: ${this.#output.trim().slice(-1500)}`,
      () => accepts(this.port),
      60_000,
      () => this.#exit,
    );
  }

  /** Runs rabbitmqctl against this broker. */
  ctl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(script("rabbitmqctl"), ["-n", this.nodeName, ...args], { env: this.env, timeout: 30_000 }, (error, stdout, stderr) => {
        if (error) reject(new Error(`rabbitmqctl ${args.join(" ")} failed: ${String(stderr || error.message).trim()}`));
        else resolve(stdout);
      });
    });
  }

  /** Closes every client connection from the server side (the broker stays up). */
  async closeAllConnections(): Promise<void> {
    await this.ctl("close_all_connections", "layercache test: server-side close");
  }

  /** The queues of the default vhost: name and consumer count. */
  async queues(): Promise<{ name: string; consumers: number }[]> {
    const out = await this.ctl("list_queues", "-q", "--no-table-headers", "name", "consumers");
    return out
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean)
      .map((l) => {
        const [name, consumers] = l.split(/\t/);
        return { name: name!, consumers: Number(consumers) };
      });
  }

  async exchanges(): Promise<string[]> {
    const out = await this.ctl("list_exchanges", "-q", "--no-table-headers", "name");
    return out.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("amq."));
  }

  /** Kills the broker process group (SIGKILL by default) and waits for it to be gone; epmd stays. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    try {
      process.kill(-proc.pid!, signal);
    } catch {
      proc.kill(signal);
    }
    await gone;
    try {
      process.kill(-proc.pid!, "SIGKILL"); // helpers left in the group
    } catch {
      // none left
    }
    this.#proc = undefined;
  }

  /** SIGSTOP to the broker's process group: it hangs with its connections open. */
  pause(): void {
    this.#signalGroup("SIGSTOP");
  }

  resume(): void {
    this.#signalGroup("SIGCONT");
  }

  #signalGroup(signal: NodeJS.Signals): void {
    const pid = this.#proc?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // gone
    }
  }

  /** Starts the broker again on the same ports and data (durable exchanges survive; exclusive queues do not). */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  /** Synchronous last resort at process exit. */
  killNow(): void {
    for (const p of [this.#proc, this.#epmd]) {
      try {
        if (p?.pid !== undefined && p.exitCode === null) process.kill(p === this.#proc ? -p.pid : p.pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGTERM");
    const epmd = this.#epmd;
    if (epmd && epmd.exitCode === null && epmd.signalCode === null) {
      const gone = new Promise<void>((resolve) => epmd.once("exit", () => resolve()));
      epmd.kill("SIGKILL");
      await gone;
    }
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
