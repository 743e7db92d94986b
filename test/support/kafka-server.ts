/**
 * A real Kafka broker for the tests and the benchmark: Apache Kafka in KRaft combined mode (one
 * process is both broker and controller), run from its jars with the machine's Java. Debian has no
 * Kafka package, so the jars of `org.apache.kafka:kafka_2.13` and its runtime dependencies are
 * fetched from Maven Central with Maven, once, into a cache folder outside the repository
 * (`$LAYERCACHE_KAFKA_CACHE`, else `$XDG_CACHE_HOME/layercache` or `~/.cache/layercache`), and reused by
 * every later run. Java and Maven are Debian packages, installed when missing like every server.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { Admin } from "@platformatic/kafka";
import { ensureBinary, freePort, killProcess, waitFor } from "./servers.js";

/** The broker's version: a 4.x line (KRaft only; runs on Java 17). */
export const KAFKA_VERSION = "4.1.1";

function cacheRoot(): string {
  if (process.env.LAYERCACHE_KAFKA_CACHE) return process.env.LAYERCACHE_KAFKA_CACHE;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "layercache");
}

/**
 * The folder holding the broker's jars, fetched with Maven on first use (about 20 s and 43 MB on
 * this machine; the local Maven repository keeps a second copy). A half-done fetch never counts:
 * the jars go to a temporary folder renamed into place at the end.
 */
export function kafkaJars(): string {
  const dir = join(cacheRoot(), `kafka-${KAFKA_VERSION}`);
  const lib = join(dir, "lib");
  if (existsSync(join(lib, `kafka_2.13-${KAFKA_VERSION}.jar`))) return lib;
  ensureBinary("java", "openjdk-17-jre-headless");
  const mvn = ensureBinary("mvn", "maven");
  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(join(dir, "fetch-"));
  try {
    writeFileSync(
      join(work, "pom.xml"),
      `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>layercache.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
  </dependencies>
</project>
`,
    );
    process.stderr.write(`[servers] fetching Apache Kafka ${KAFKA_VERSION} from Maven Central into ${dir} (once)\n`);
    try {
      execFileSync(mvn, ["-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime", `-DoutputDirectory=${join(work, "lib")}`], { cwd: work, stdio: ["ignore", "ignore", "inherit"], timeout: 600_000 });
    } catch (error) {
      throw new Error(`fetching org.apache.kafka:kafka_2.13:${KAFKA_VERSION} with Maven failed: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (!existsSync(lib)) renameSync(join(work, "lib"), lib);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return lib;
}

const live = new Set<KafkaServer>();
process.once("exit", () => {
  for (const s of live) {
    s.proc?.kill("SIGKILL");
    rmSync(s.dir, { recursive: true, force: true });
  }
});

/** JVM settings for a small, quick-starting broker. */
const JVM = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"];

/**
 * A TCP relay in front of a broker listener, that a test cuts: every connection through it is
 * closed, and new ones are refused until it is mended — a network cut between one client and the
 * broker while the others go on. (Kafka clients connect to the addresses the broker advertises, so
 * the broker advertises this relay on a listener of its own: see `KafkaServer.start({ cuttable })`.)
 */
export class Relay {
  readonly port: number;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #target = 0;
  #cut = false;

  private constructor(port: number, server: Server) {
    this.port = port;
    this.#server = server;
  }

  static async start(): Promise<Relay> {
    const port = await freePort();
    const server = createServer();
    const relay = new Relay(port, server);
    server.on("connection", (client) => relay.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    return relay;
  }

  set target(port: number) {
    this.#target = port;
  }

  #accept(client: Socket): void {
    if (this.#cut) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: "127.0.0.1", port: this.#target });
    for (const s of [client, upstream]) {
      this.#sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        this.#sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Closes every connection through the relay and refuses new ones. */
  cut(): void {
    this.#cut = true;
    for (const s of this.#sockets) s.destroy();
  }

  mend(): void {
    this.#cut = false;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** One Kafka broker (KRaft, combined broker + controller) on 127.0.0.1, that a test may kill, restart, pause and resume. */
export class KafkaServer {
  readonly port: number;
  readonly controllerPort: number;
  readonly dir: string;
  /** With `cuttable`: a second listener, reached only through this relay (clients bootstrapping from `relayBrokers` stay behind it). */
  readonly relay: Relay | undefined;
  readonly #relayTarget: number;
  proc: ChildProcess | undefined;
  #exit: string | undefined;
  #log = "";

  private constructor(port: number, controllerPort: number, dir: string, relay: Relay | undefined, relayTarget: number) {
    this.port = port;
    this.controllerPort = controllerPort;
    this.dir = dir;
    this.relay = relay;
    this.#relayTarget = relayTarget;
  }

  /** Starts a broker on free ports with an empty log (three tries when a port was taken meanwhile). */
  static async start(options: { cuttable?: boolean } = {}): Promise<KafkaServer> {
    const java = ensureBinary("java", "openjdk-17-jre-headless");
    const jars = kafkaJars();
    const relay = options.cuttable ? await Relay.start() : undefined;
    for (let attempt = 1; ; attempt++) {
      const [port, controllerPort, relayTarget] = [await freePort(), await freePort(), relay ? await freePort() : 0];
      if (relay) relay.target = relayTarget;
      const dir = mkdtempSync(join(tmpdir(), `layercache-kafka-${port}-`));
      const server = new KafkaServer(port, controllerPort, dir, relay, relayTarget);
      try {
        server.#configure(java, jars);
        await server.#spawn(java, jars);
        return server;
      } catch (error) {
        const exitedEarly = server.#exit !== undefined;
        await server.#stopBroker();
        if (attempt >= 3 || !exitedEarly) {
          await relay?.stop();
          throw error;
        }
      }
    }
  }

  /** The address clients bootstrap from. */
  get broker(): string {
    return `127.0.0.1:${this.port}`;
  }

  get brokers(): string[] {
    return [this.broker];
  }

  /** Bootstrap brokers behind the relay (with `cuttable`). */
  get relayBrokers(): string[] {
    if (!this.relay) throw new Error("this KafkaServer was started without `cuttable`");
    return [`127.0.0.1:${this.relay.port}`];
  }

  get #props(): string {
    return join(this.dir, "server.properties");
  }

  /** Writes the settings and formats an empty log folder (the cluster's metadata lives there too). */
  #configure(java: string, jars: string): void {
    const logs = join(this.dir, "logs");
    rmSync(logs, { recursive: true, force: true });
    writeFileSync(
      this.#props,
      [
        "process.roles=broker,controller",
        "node.id=1",
        `controller.quorum.voters=1@127.0.0.1:${this.controllerPort}`,
        `listeners=PLAINTEXT://127.0.0.1:${this.port},CONTROLLER://127.0.0.1:${this.controllerPort}${this.relay ? `,RELAYED://127.0.0.1:${this.#relayTarget}` : ""}`,
        `advertised.listeners=PLAINTEXT://127.0.0.1:${this.port}${this.relay ? `,RELAYED://127.0.0.1:${this.relay.port}` : ""}`,
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,RELAYED:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        `log.dirs=${logs}`,
        // Topics are created by the bus, with its settings: a typo'd name must not create one.
        "auto.create.topics.enable=false",
        "num.partitions=1",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=2",
        "log.retention.check.interval.ms=1000",
        // A restarted broker registers again only once its previous session has expired (default 9 s).
        "broker.session.timeout.ms=1500",
        "broker.heartbeat.interval.ms=300",
        "controller.quorum.election.timeout.ms=300",
        "controller.quorum.fetch.timeout.ms=600",
        "",
      ].join("\n"),
    );
    execFileSync(java, [...JVM, "-cp", `${jars}/*`, "kafka.tools.StorageTool", "format", "-t", "bGF5ZXJjYWNoZS10ZXN0cw", "-c", this.#props, "--ignore-formatted"], { stdio: ["ignore", "ignore", "pipe"], timeout: 60_000 });
  }

  async #spawn(java: string, jars: string): Promise<void> {
    const proc = spawn(java, [...JVM, "-cp", `${jars}/*`, "kafka.Kafka", this.#props], { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    this.#exit = undefined;
    this.#log = "";
    live.add(this);
    const keep = (d: Buffer): void => {
      this.#log = (this.#log + d.toString()).slice(-4000);
    };
    proc.stdout?.on("data", keep);
    proc.stderr?.on("data", keep);
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    // Ready when it answers a metadata request naming itself as a broker.
    await waitFor(() => `kafka on port ${this.port}${this.#log ? `: ${this.#log.trim().slice(-1000)}` : ""}`, () => this.#answers(), 60_000, () => this.#exit);
  }

  async #answers(): Promise<boolean> {
    const admin = new Admin({ clientId: "layercache-test-probe", bootstrapBrokers: this.brokers, retries: 0, timeout: 2000, connectTimeout: 1000 });
    try {
      const md = await admin.metadata({ topics: [] });
      return md.brokers.size > 0;
    } finally {
      await admin.close().catch(() => {});
    }
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await killProcess(this.proc, signal);
    this.proc = undefined;
  }

  /**
   * Starts the broker again on the same ports. `keepData` (default): with its log, as after a crash
   * of a broker whose disk survived — a reader can catch up. Otherwise empty, as a new broker that
   * replaced a lost one.
   */
  async restart(options: { keepData?: boolean } = {}): Promise<void> {
    await this.kill();
    const java = ensureBinary("java", "openjdk-17-jre-headless");
    const jars = kafkaJars();
    if (options.keepData === false) this.#configure(java, jars);
    await this.#spawn(java, jars);
  }

  pause(): void {
    this.proc?.kill("SIGSTOP");
  }

  resume(): void {
    this.proc?.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    await this.#stopBroker();
    await this.relay?.stop();
  }

  async #stopBroker(): Promise<void> {
    this.resume();
    await this.kill("SIGKILL");
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Files in the log folder (a test checks that nothing grows with instance restarts). */
  logEntries(): string[] {
    const logs = join(this.dir, "logs");
    return existsSync(logs) ? readdirSync(logs) : [];
  }
}
