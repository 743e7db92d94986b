/**
 * memcached processes for the tests and benchmarks, on free loopback ports (the binary comes from
 * Debian's `memcached` package, installed when missing and the run may).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createConnection } from "node:net";
import { ensureBinary, freePort, waitFor } from "./servers.js";

/** Sends one meta no-op and resolves when the server answers it. */
function answers(port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on("connect", () => sock.write("mn\r\n"));
    sock.on("data", (d) => {
      data += d.toString();
      if (data.includes("MN\r\n")) done(true);
    });
    sock.on("error", () => done(false));
  });
}

/**
 * Sends raw meta-protocol commands (each ending in "\r\n") to `address` and resolves with the
 * replies as text (everything before the closing no-op's "MN"): how a test looks at what is really
 * stored, without the client under test.
 */
export function metaCommands(address: string, commands: string, timeoutMs = 5000): Promise<string> {
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host, port });
    let data = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no reply from ${address}`));
    }, timeoutMs);
    sock.on("connect", () => sock.write(commands + "mn\r\n"));
    sock.on("data", (d) => {
      data += d.toString("latin1");
      if (data.endsWith("MN\r\n")) {
        clearTimeout(timer);
        sock.destroy();
        resolve(data.slice(0, -4));
      }
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

const live = new Set<MemcachedServer>();
process.once("exit", () => {
  for (const s of live) s.proc?.kill("SIGKILL");
});

export interface MemcachedServerOptions {
  /** Memory for items in MiB (`-m`), default 64. */
  memoryMb?: number;
  /** Largest item (`-I`), e.g. "1m" (the default) or "2m". */
  maxItemSize?: string;
}

/** One memcached process on 127.0.0.1, that a test may kill, restart, pause and resume. */
export class MemcachedServer {
  readonly port: number;
  readonly #options: MemcachedServerOptions;
  proc: ChildProcess | undefined;
  #exit: string | undefined;

  private constructor(port: number, options: MemcachedServerOptions) {
    this.port = port;
    this.#options = options;
  }

  /** Starts a server on a free port (three tries, should another process take the port first). */
  static async start(options: MemcachedServerOptions = {}): Promise<MemcachedServer> {
    for (let attempt = 1; ; attempt++) {
      const server = new MemcachedServer(await freePort(), options);
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

  /** `host:port`, as `MemcachedStore({ servers })` takes it. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async #spawn(): Promise<void> {
    const bin = ensureBinary("memcached", "memcached");
    const args = ["-l", "127.0.0.1", "-p", String(this.port), "-U", "0", "-m", String(this.#options.memoryMb ?? 64), "-c", "4096"];
    if (this.#options.maxItemSize !== undefined) args.push("-I", this.#options.maxItemSize);
    if (process.getuid?.() === 0) args.push("-u", "root"); // memcached refuses to run as root without it
    const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.proc = proc;
    this.#exit = undefined;
    live.add(this);
    let stderr = "";
    proc.stderr?.on("data", (d) => (stderr += d.toString()));
    proc.once("exit", (code, signal) => {
      if (this.proc === proc) this.#exit = `exited (${signal ?? `code ${code}`})`;
    });
    await waitFor(
      () => `memcached on port ${this.port}${stderr ? `: ${stderr.trim()}` : ""}`,
      () => answers(this.port),
      15_000,
      () => this.#exit,
    );
  }

  /** Kills the process (SIGKILL by default) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill(signal);
    await gone;
    this.proc = undefined;
  }

  /** Starts the server again on the same port, empty (memcached keeps nothing). */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  /** SIGSTOP: the server hangs, connections stay open. */
  pause(): void {
    this.proc?.kill("SIGSTOP");
  }

  /** SIGSTOP, resolving once the process is really stopped (a signal is delivered asynchronously). */
  async paused(): Promise<void> {
    this.pause();
    const pid = this.proc?.pid;
    if (pid === undefined) return;
    // Linux: the state after the command name in /proc/<pid>/stat ("T" once stopped).
    await waitFor(`memcached ${pid} stopped`, async () => /\) T /.test(readFileSync(`/proc/${pid}/stat`, "utf8")), 5_000);
  }

  resume(): void {
    this.proc?.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    this.resume();
    await this.kill("SIGTERM");
    live.delete(this);
  }
}
