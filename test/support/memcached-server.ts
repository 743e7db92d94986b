/**
 * memcached processes for the tests and benchmarks, on free loopback ports (the binary comes from
 * Debian's `memcached` package, installed when missing and the run may).
 */
import { createConnection } from "node:net";
import { ensureBinary, ServerProcess, type ServerLaunch } from "./servers.js";

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

export interface MemcachedServerOptions {
  /** Memory for items in MiB (`-m`), default 64. */
  memoryMb?: number;
  /** Largest item (`-I`), e.g. "1m" (the default) or "2m". */
  maxItemSize?: string;
}

/** One memcached process on 127.0.0.1, that a test may kill, restart, pause and resume. */
export class MemcachedServer extends ServerProcess {
  readonly #options: MemcachedServerOptions;

  private constructor(port: number, options: MemcachedServerOptions) {
    super(port);
    this.#options = options;
  }

  /** Starts a server on a free port. */
  static start(options: MemcachedServerOptions = {}): Promise<MemcachedServer> {
    return ServerProcess.startWith((port) => new MemcachedServer(port, options));
  }

  /** `host:port`, as `MemcachedStore({ servers })` takes it. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  protected launch(): ServerLaunch {
    const bin = ensureBinary("memcached", "memcached");
    const args = ["-l", "127.0.0.1", "-p", String(this.port), "-U", "0", "-m", String(this.#options.memoryMb ?? 64), "-c", "4096"];
    if (this.#options.maxItemSize !== undefined) args.push("-I", this.#options.maxItemSize);
    if (process.getuid?.() === 0) args.push("-u", "root"); // memcached refuses to run as root without it
    // Ready when *this* process answers (not another one that took the port): compare the pid.
    const ready = async (pid: number) => (await metaCommands(this.address, "stats\r\n", 1000)).includes(`STAT pid ${pid}\r\n`);
    return { bin, args, name: `memcached on port ${this.port}`, ready };
  }
}
