/**
 * A real PostgreSQL server for the tests and benchmarks: initdb in a temporary folder, then
 * `postgres` on a free loopback port, with durability switched off (fsync, synchronous_commit,
 * full_page_writes: a test server loses nothing it needs). PostgreSQL refuses to run as root, so
 * under root both run as the `postgres` OS user (which the Debian package creates), in a folder it
 * owns. The binaries live off the PATH on Debian (/usr/lib/postgresql/<version>/bin); a missing
 * server is installed from the Debian package `postgresql` when the run may.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { ensureBinary, freePort, waitFor } from "./servers.js";

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

const live = new Set<PostgresServer>();
process.once("exit", () => {
  for (const s of live) {
    s.proc?.kill("SIGKILL");
    rmSync(s.dir, { recursive: true, force: true });
  }
});

/** One PostgreSQL server on 127.0.0.1 that a test may stop, kill and restart (its data stays). */
export class PostgresServer {
  readonly port: number;
  /** Holds the data folder (`data`) and the unix socket. */
  readonly dir: string;
  proc: ChildProcess | undefined;
  #exit: string | undefined;

  private constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
  }

  /** initdb, then a server on a free port (three tries: a port drawn free may be taken before the server binds it). */
  static async start(): Promise<PostgresServer> {
    const bins = postgresBinaries();
    const user = runAs();
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const dir = mkdtempSync(join(tmpdir(), `layercache-pg-${port}-`));
      if (user) chownSync(dir, user.uid, user.gid);
      const server = new PostgresServer(port, dir);
      live.add(server);
      try {
        execFileSync(bins.initdb, ["-D", join(dir, "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], {
          stdio: ["ignore", "ignore", "pipe"],
          ...user,
          timeout: 60_000,
        });
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
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  async #spawn(): Promise<void> {
    const { postgres } = postgresBinaries();
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
    const args = ["-D", join(this.dir, "data"), ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])];
    const proc = spawn(postgres, args, { stdio: ["ignore", "ignore", "pipe"], ...runAs() });
    this.proc = proc;
    this.#exit = undefined;
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr = (stderr + d.toString()).slice(-4000)));
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    // Ready when *this* server answers: another one that took the port would answer too, so compare the data folder.
    await waitFor(
      () => `postgres on port ${this.port}${stderr ? `: ${stderr.trim()}` : ""}`,
      async () => (await this.#query("SHOW data_directory")) === join(this.dir, "data"),
      30_000,
      () => this.#exit,
    );
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

  /**
   * Stops the server: SIGINT is a fast shutdown (clean; UNLOGGED tables keep their rows), SIGQUIT
   * an immediate one (a crash: the next start runs recovery and empties UNLOGGED tables), SIGKILL
   * kills the postmaster alone.
   */
  async kill(signal: NodeJS.Signals = "SIGINT"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill(signal);
    await gone;
    this.proc = undefined;
  }

  /** Stops the server (`signal`, see `kill`) and starts it again on the same port and data. */
  async restart(signal: NodeJS.Signals = "SIGINT"): Promise<void> {
    await this.kill(signal);
    await this.#spawn();
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
  pause(): void {
    this.#paused = this.#processes();
    for (const pid of this.#paused) {
      try {
        process.kill(pid, "SIGSTOP");
      } catch {
        // gone meanwhile
      }
    }
  }

  resume(): void {
    for (const pid of this.#paused.splice(0).reverse()) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // gone meanwhile
      }
    }
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGQUIT");
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
