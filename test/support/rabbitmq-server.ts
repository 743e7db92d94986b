/**
 * A real rabbitmq-server (Debian's package) for the tests, on free loopback ports, with a node
 * name, an epmd, a home (Erlang cookie), a config and a data folder of its own, so that it meets
 * no other broker on the machine and leaves nothing behind.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { accepts, ensureBinary, freePort, ServerProcess, waitFor, type ServerLaunch } from "./servers.js";

/** The scripts themselves, not Debian's wrapper in /usr/sbin (run as root, it switches to the rabbitmq user, who cannot use our folder). */
function script(name: "rabbitmq-server" | "rabbitmqctl"): string {
  const wrapper = ensureBinary(name, "rabbitmq-server");
  const direct = "/usr/lib/rabbitmq/bin/" + name;
  return existsSync(direct) ? direct : join(dirname(wrapper), name);
}

export class RabbitMQServer extends ServerProcess {
  readonly dir: string;
  readonly #distPort: number;
  readonly #epmdPort: number;
  #epmd: ChildProcess | undefined;

  private constructor(port: number, distPort: number, epmdPort: number) {
    super(port);
    this.#distPort = distPort;
    this.#epmdPort = epmdPort;
    this.dir = mkdtempSync(join(tmpdir(), `layercache-rabbitmq-${port}-`));
  }

  /** Starts a broker on free ports (about 5–10 s). */
  static async start(): Promise<RabbitMQServer> {
    const [distPort, epmdPort] = [await freePort(), await freePort()];
    return ServerProcess.startWith((port) => new RabbitMQServer(port, distPort, epmdPort));
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

  protected override async spawn(): Promise<void> {
    writeFileSync(join(this.dir, "rabbitmq.conf"), [`listeners.tcp.default = 127.0.0.1:${this.port}`, "log.console = true", "log.console.level = warning", "log.file = false", ""].join("\n"));
    writeFileSync(join(this.dir, "enabled_plugins"), "[].\n");
    if (this.#epmd === undefined || this.#epmd.exitCode !== null) {
      // An epmd of our own (not a daemon), so that stopping the broker ends it too.
      const epmd = spawn(ensureBinary("epmd", "erlang-base"), ["-port", String(this.#epmdPort), "-address", "127.0.0.1"], { stdio: "ignore", env: this.env });
      this.#epmd = epmd;
      await waitFor(`epmd on port ${this.#epmdPort}`, () => accepts(this.#epmdPort), 10_000, () => (epmd.exitCode !== null ? `epmd exited (${epmd.exitCode})` : undefined));
    }
    await super.spawn();
  }

  protected launch(): ServerLaunch {
    // A process group of its own: the broker's helpers (erl_child_setup, inet_gethost) go with it.
    return { bin: script("rabbitmq-server"), args: [], env: this.env, group: true, timeoutMs: 60_000, name: `rabbitmq-server on port ${this.port}`, ready: () => accepts(this.port) };
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

  /** The data folder, and the broker's own epmd (called when it stops, and at exit). */
  override removeFiles(): void {
    this.#epmd?.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}
