/**
 * Real servers for the integration tests, on free loopback ports. A missing server binary is
 * installed from Debian's packages when the run may do so (root with apt-get), else the run fails
 * with one line saying what to install.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

const SEARCH_PATH = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"];

/** `extraDirs`: where a package puts binaries off the PATH (PostgreSQL: /usr/lib/postgresql/<version>/bin). */
export function findBinary(name: string, extraDirs: string[] = []): string | undefined {
  for (const dir of [...SEARCH_PATH, ...extraDirs]) {
    const p = join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

/** The path of `bin`, installing Debian package `pkg` first when it is missing and we may. */
export function ensureBinary(bin: string, pkg: string, extraDirs: () => string[] = () => []): string {
  const found = findBinary(bin, extraDirs());
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
  const installed = findBinary(bin, extraDirs());
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

const live = new Set<ServerProcess>();
process.once("exit", () => {
  for (const s of live) {
    s.signal("SIGKILL"); // a SIGSTOPped server dies of it too
    s.removeFiles();
  }
});

/** What a server process is started with, and how to tell that it is ready. */
export interface ServerLaunch {
  bin: string;
  args: string[];
  /** Names the server in a failed wait. */
  name: string;
  /** True once the process `pid` answers (it, not another process that took the port). */
  ready(pid: number): Promise<boolean>;
  /** The user and group to run it as (a server that refuses to run as root: PostgreSQL). */
  uid?: number;
  gid?: number;
  /** The environment of the process (default: this one's). */
  env?: NodeJS.ProcessEnv;
  /** Run it in a process group of its own and signal the whole group (a server that starts helper processes). */
  group?: boolean;
  /** Longest wait for `ready` (default 15 s). */
  timeoutMs?: number;
}

/**
 * One server process on 127.0.0.1 that a test may kill, restart, pause and resume: what every
 * server class of the tests shares. A subclass says how to launch it (`launch`) and what it leaves
 * on disk (`removeFiles`).
 */
export abstract class ServerProcess {
  readonly port: number;
  proc: ChildProcess | undefined;
  /** How the current process ended, if it did. */
  #exit: string | undefined;
  /** Signals go to the process group (see `ServerLaunch.group`). */
  #group = false;

  protected constructor(port: number) {
    this.port = port;
  }

  /**
   * A server from `make(port)` on a free port, started. The port is free when drawn, but something
   * else may take it before the server binds it; a server that exits before answering is started
   * again on a new port (three tries).
   */
  protected static async startWith<T extends ServerProcess>(make: (port: number) => T, port: () => Promise<number> = freePort): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const server = make(await port());
      try {
        await server.spawn();
        return server;
      } catch (error) {
        const exitedEarly = server.#exit !== undefined; // read before stop() ends it
        await server.stop();
        if (attempt >= 3 || !exitedEarly) throw error;
      }
    }
  }

  protected abstract launch(): ServerLaunch;

  /** Removes what the server wrote (nothing by default). */
  removeFiles(): void {}

  protected async spawn(): Promise<void> {
    const { bin, args, name, ready, uid, gid, env, group = false, timeoutMs = 15_000 } = this.launch();
    const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"], env, detached: group, ...(uid === undefined ? {} : { uid, gid }) });
    this.#group = group;
    this.proc = proc;
    this.#exit = undefined;
    live.add(this);
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr += d.toString()));
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    await waitFor(
      () => `${name}${stderr ? `: ${stderr.trim()}` : ""}`,
      () => ready(proc.pid!),
      timeoutMs,
      () => this.#exit,
    );
  }

  /** Sends `signal` to the process (or its group); nothing when it is gone. */
  signal(signal: NodeJS.Signals): void {
    const pid = this.proc?.pid;
    if (pid === undefined) return;
    try {
      process.kill(this.#group ? -pid : pid, signal);
    } catch {
      // gone
    }
  }

  /** Kills the process (SIGKILL by default) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    this.signal(signal);
    await gone;
    if (this.#group) this.signal("SIGKILL"); // helpers left in the group
    this.proc = undefined;
  }

  /** Starts the server again on the same port (empty: nothing is persisted). */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  /** SIGSTOP: the server hangs, connections stay open. */
  pause(): void {
    this.signal("SIGSTOP");
  }

  /** SIGSTOP, resolving once the process is really stopped (a signal is delivered asynchronously). */
  async paused(): Promise<void> {
    this.pause();
    const pid = this.proc?.pid;
    if (pid === undefined) return;
    // Linux: the state after the command name in /proc/<pid>/stat ("T" once stopped).
    await waitFor(`process ${pid} stopped`, async () => /\) T /.test(readFileSync(`/proc/${pid}/stat`, "utf8")), 5_000);
  }

  resume(): void {
    this.signal("SIGCONT");
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGTERM");
    live.delete(this);
    this.removeFiles();
  }
}

export interface RedisServerOptions {
  cluster?: boolean;
}

/** One redis-server process on 127.0.0.1, that a test may kill, restart, pause and resume. */
export class RedisServer extends ServerProcess {
  readonly dir: string;
  readonly #cluster: boolean;

  private constructor(port: number, cluster: boolean) {
    super(port);
    this.dir = mkdtempSync(join(tmpdir(), `layercache-redis-${port}-`));
    this.#cluster = cluster;
  }

  /** Starts a server on a free port. Cluster nodes need a port ≤ 55535 (the cluster bus listens on port + 10000). */
  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    const cluster = options.cluster ?? false;
    const port = async () => {
      let p = await freePort();
      while (cluster && p > 55_535) p = await freePort();
      return p;
    };
    return ServerProcess.startWith((p) => new RedisServer(p, cluster), port);
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  protected launch(): ServerLaunch {
    const bin = ensureBinary("redis-server", "redis-server");
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir, "--daemonize", "no", "--loglevel", "warning"];
    if (this.#cluster) args.push("--cluster-enabled", "yes", "--cluster-config-file", `nodes-${this.port}.conf`, "--cluster-node-timeout", "15000");
    // Ready when *this* process answers: a server of someone else's that took the port would
    // answer PING too, so compare the process id.
    return { bin, args, name: `redis-server on port ${this.port}`, ready: async (pid) => (await rawCommand(this.port, "INFO server")).includes(`process_id:${pid}\r\n`) };
  }

  override removeFiles(): void {
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
