import { createConnection, createServer, type Server, type Socket } from "node:net";
import { freePort } from "./servers.js";

/**
 * A TCP relay on 127.0.0.1 in front of a server, to cut one client off while the server and its
 * other clients go on (what a network partition does to one instance): `cut()` drops the
 * connections through it and refuses new ones until `restore()`.
 */
export class TcpProxy {
  readonly port: number;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #cut = false;

  private constructor(port: number, server: Server) {
    this.port = port;
    this.#server = server;
  }

  static async start(targetPort: number): Promise<TcpProxy> {
    const port = await freePort();
    let proxy!: TcpProxy;
    const server = createServer((client) => {
      if (proxy.#cut) {
        client.destroy();
        return;
      }
      const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
      for (const s of [client, upstream]) {
        proxy.#sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => {
          proxy.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    proxy = new TcpProxy(port, server);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    return proxy;
  }

  /** Drops every connection through the relay and refuses new ones. */
  cut(): void {
    this.#cut = true;
    for (const s of this.#sockets) s.destroy();
  }

  /** Lets connections through again. */
  restore(): void {
    this.#cut = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
