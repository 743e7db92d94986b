/**
 * Real servers for the integration tests, on free loopback ports. A missing server binary is
 * installed from Debian's packages when the run may do so (root with apt-get), else the run fails
 * with one line saying what to install.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

const SEARCH_PATH = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"];

export function findBinary(name: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    const p = join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

/** The path of `bin`, installing Debian package `pkg` first when it is missing and we may. */
export function ensureBinary(bin: string, pkg: string): string {
  const found = findBinary(bin);
  if (found) return found;
  const canInstall = process.getuid?.() === 0 && findBinary("apt-get") !== undefined && process.env.LAYERCACHE_NO_INSTALL !== "1";
  if (!canInstall) throw new Error(`${bin} not found: install the Debian package ${pkg} (apt-get install -y ${pkg})`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  process.stderr.write(`[servers] ${bin} is missing: installing the Debian package ${pkg}\n`);
  try {
    execFileSync("apt-get", ["update", "-qq"], { env, stdio: ["ignore", "ignore", "inherit"] });
    execFileSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", pkg], { env, stdio: ["ignore", "ignore", "inherit"] });
  } catch {
    throw new Error(`${bin} not found and installing ${pkg} failed: install it with apt-get install -y ${pkg}`);
  }
  const installed = findBinary(bin);
  if (!installed) throw new Error(`${bin} still not found after installing ${pkg}`);
  return installed;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Sends one inline command over RESP and returns the raw reply (readiness checks, no client library). */
export function rawCommand(port: number, command: string, timeoutMs = 1000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    let data = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no reply from 127.0.0.1:${port}`));
    }, timeoutMs);
    sock.on("connect", () => sock.write(command + "\r\n"));
    sock.on("data", (d) => {
      data += d.toString();
      if (isComplete(data)) {
        clearTimeout(timer);
        sock.end();
        resolve(data);
      }
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** A whole simple reply, or a whole bulk string reply ($<len>\r\n<bytes>\r\n). */
function isComplete(data: string): boolean {
  if (!data.endsWith("\r\n")) return false;
  if (!data.startsWith("$")) return true;
  const head = data.indexOf("\r\n");
  const len = Number(data.slice(1, head));
  return len < 0 || Buffer.byteLength(data) >= head + 2 + len + 2;
}

/**
 * Polls `check` until it is true, within `timeoutMs`. `what` names the wait in the error; it may be
 * a function, read when the wait fails (so it can include output gathered meanwhile). `givenUp`
 * ends the wait at once, with its text as the reason (a process that exited will not come up).
 */
export async function waitFor(what: string | (() => string), check: () => Promise<boolean>, timeoutMs = 15_000, givenUp: () => string | undefined = () => undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const name = () => (typeof what === "string" ? what : what());
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    const reason = givenUp();
    if (reason !== undefined) throw new Error(`gave up waiting for ${name()}: ${reason}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${name()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Sends `signal` to a server process that is still running and waits for it to exit. */
export async function killProcess(proc: ChildProcess | undefined, signal: NodeJS.Signals): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  proc.kill(signal);
  await gone;
}

const live = new Set<RedisServer>();
process.once("exit", () => {
  for (const s of live) {
    s.proc?.kill("SIGKILL"); // a SIGSTOPped server dies of it too
    rmSync(s.dir, { recursive: true, force: true });
  }
});

export interface RedisServerOptions {
  cluster?: boolean;
}

/** One redis-server process on 127.0.0.1, that a test may kill, restart, pause and resume. */
export class RedisServer {
  readonly port: number;
  readonly dir: string;
  readonly #cluster: boolean;
  proc: ChildProcess | undefined;

  private constructor(port: number, dir: string, cluster: boolean) {
    this.port = port;
    this.dir = dir;
    this.#cluster = cluster;
  }

  /**
   * Starts a server on a free port. The port is free when drawn, but something else may take it
   * before redis-server binds it; a server that exits before answering is started again on a new
   * port (three tries). Cluster nodes need a port ≤ 55535 (the cluster bus listens on port + 10000).
   */
  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    const cluster = options.cluster ?? false;
    for (let attempt = 1; ; attempt++) {
      let port = await freePort();
      while (cluster && port > 55_535) port = await freePort();
      const dir = mkdtempSync(join(tmpdir(), `layercache-redis-${port}-`));
      const server = new RedisServer(port, dir, cluster);
      try {
        await server.#spawn();
        return server;
      } catch (error) {
        const exitedEarly = server.#exit !== undefined; // read before stop() ends it
        await server.stop();
        if (attempt >= 3 || !exitedEarly) throw error;
      }
    }
  }

  /** How the current process ended, if it did. */
  #exit: string | undefined;

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async #spawn(): Promise<void> {
    const bin = ensureBinary("redis-server", "redis-server");
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir, "--daemonize", "no", "--loglevel", "warning"];
    if (this.#cluster) args.push("--cluster-enabled", "yes", "--cluster-config-file", `nodes-${this.port}.conf`, "--cluster-node-timeout", "15000");
    const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.proc = proc;
    this.#exit = undefined;
    live.add(this);
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr += d.toString()));
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    // Ready when *this* process answers: a server of someone else's that took the port would
    // answer PING too, so compare the process id.
    await waitFor(
      () => `redis-server on port ${this.port}${stderr ? `: ${stderr.trim()}` : ""}`,
      async () => (await rawCommand(this.port, "INFO server")).includes(`process_id:${proc.pid}\r\n`),
      15_000,
      () => this.#exit,
    );
  }

  /** Kills the process (SIGKILL by default) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await killProcess(this.proc, signal);
    this.proc = undefined;
  }

  /** Starts the server again on the same port (empty: nothing is persisted). */
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

/** A Redis Cluster of three masters (no replicas), built with redis-cli --cluster create. */
export class RedisCluster {
  readonly nodes: RedisServer[];

  private constructor(nodes: RedisServer[]) {
    this.nodes = nodes;
  }

  static async start(): Promise<RedisCluster> {
    const nodes = await Promise.all([0, 1, 2].map(() => RedisServer.start({ cluster: true })));
    const cli = ensureBinary("redis-cli", "redis-tools");
    execFileSync(cli, ["--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-replicas", "0", "--cluster-yes"], {
      stdio: ["ignore", "ignore", "pipe"],
      timeout: 30_000,
    });
    for (const n of nodes) {
      await waitFor(`cluster_state:ok on ${n.port}`, async () => (await rawCommand(n.port, "CLUSTER INFO")).includes("cluster_state:ok"), 30_000);
    }
    return new RedisCluster(nodes);
  }

  get startupNodes(): { host: string; port: number }[] {
    return this.nodes.map((n) => ({ host: "127.0.0.1", port: n.port }));
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}
