/**
 * A real PostgreSQL server for the tests and benchmarks: initdb in a temporary folder, then
 * `postgres` on a free loopback port, with durability switched off (fsync, synchronous_commit,
 * full_page_writes: a test server loses nothing it needs). PostgreSQL refuses to run as root, so
 * under root both run as the `postgres` OS user (which the Debian package creates), in a folder it
 * owns. The binaries live off the PATH on Debian (/usr/lib/postgresql/<version>/bin); a missing
 * server is installed from the Debian package `postgresql` when the run may.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { ensureBinary, ServerProcess, type ServerLaunch } from "./servers.js";

/** The version folders of Debian's PostgreSQL packages, newest first. */
function postgresBinDirs(): string[] {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((v) => /^\d+$/.test(v))
    .sort((a, b) => Number(b) - Number(a))
    .map((v) => join(root, v, "bin"));
}

/** initdb and postgres, installing the Debian package `postgresql` when they are missing. */
export function postgresBinaries(): { initdb: string; postgres: string } {
  const initdb = ensureBinary("initdb", "postgresql", postgresBinDirs);
  const postgres = ensureBinary("postgres", "postgresql", () => [join(initdb, ".."), ...postgresBinDirs()]);
  return { initdb, postgres };
}

/** Under root: the uid and gid of the `postgres` user (the servers run as it); otherwise nothing to change. */
function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    return { uid, gid };
  } catch {
    throw new Error("PostgreSQL does not run as root and there is no `postgres` user: install the Debian package postgresql (it creates the user)");
  }
}

/** One PostgreSQL server on 127.0.0.1 that a test may stop, kill, pause and restart (its data stays). */
export class PostgresServer extends ServerProcess {
  /** Holds the data folder (`data`) and the unix socket. */
  readonly dir: string;
  readonly #user = runAs();

  private constructor(port: number) {
    super(port);
    this.dir = mkdtempSync(join(tmpdir(), `layercache-pg-${port}-`));
    if (this.#user) chownSync(this.dir, this.#user.uid, this.#user.gid);
  }

  static async start(): Promise<PostgresServer> {
    postgresBinaries();
    return ServerProcess.startWith((port) => new PostgresServer(port));
  }

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  /** initdb on the first start; then the server, ready when *this* one answers (another that took the port would too: compare the data folder). */
  protected launch(): ServerLaunch {
    const { initdb, postgres } = postgresBinaries();
    const data = join(this.dir, "data");
    if (!existsSync(data)) {
      execFileSync(initdb, ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], { stdio: ["ignore", "ignore", "pipe"], ...this.#user, timeout: 60_000 });
    }
    const settings = {
      listen_addresses: "127.0.0.1",
      port: String(this.port),
      unix_socket_directories: this.dir,
      fsync: "off",
      synchronous_commit: "off",
      full_page_writes: "off",
      max_connections: "200",
      shared_buffers: "32MB",
      log_min_messages: "fatal",
    };
    return {
      bin: postgres,
      args: ["-D", data, ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])],
      name: `postgres on port ${this.port}`,
      ready: async () => (await this.#query("SHOW data_directory")) === data,
      ...this.#user,
    };
  }

  async #query(sql: string): Promise<unknown> {
    const client = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 1000 });
    client.on("error", () => {});
    try {
      await client.connect();
      const { rows } = await client.query(sql);
      return rows[0] ? Object.values(rows[0] as object)[0] : undefined;
    } finally {
      await client.end().catch(() => {});
    }
  }

  override removeFiles(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Stops the server: SIGINT (the default) is a fast shutdown (clean; UNLOGGED tables keep their
   * rows), SIGQUIT an immediate one (a crash: the next start runs recovery and empties UNLOGGED
   * tables), SIGKILL kills the postmaster alone.
   */
  override async kill(signal: NodeJS.Signals = "SIGINT"): Promise<void> {
    await super.kill(signal);
  }

  /** Stops the server (`signal`, see `kill`) and starts it again on the same port and data. */
  override async restart(signal: NodeJS.Signals = "SIGINT"): Promise<void> {
    await this.kill(signal);
    await this.spawn();
  }

  /** The server's processes: the postmaster and its children (the backends, the background workers). */
  #processes(): number[] {
    const main = this.proc?.pid;
    if (main === undefined) return [];
    const children: number[] = [];
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        // Fields after the command name, which is in parentheses and may hold spaces: state, ppid, …
        const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
        if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === main) children.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    return [...children, main];
  }

  #paused: number[] = [];

  /** SIGSTOP to every process of the server: it hangs, connections stay open (stopping the postmaster alone would leave the backends answering). */
  override pause(): void {
    this.#paused = this.#processes();
    for (const pid of this.#paused) signal(pid, "SIGSTOP");
  }

  override resume(): void {
    for (const pid of this.#paused.splice(0).reverse()) signal(pid, "SIGCONT");
  }

  /** An immediate shutdown (nothing to keep), then what the base class does. */
  override async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGQUIT");
    await super.stop();
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // gone meanwhile
  }
}
