import { connect, type Socket } from "node:net";

/** One reply of the meta protocol: its first line, and the data block of a `VA` reply. */
export interface Reply {
  /** The first line without its "\r\n": "VA 5 c12", "HD", "EN", "NS", "EX", "NF", "MN", "SERVER_ERROR …". */
  readonly line: string;
  readonly value?: Buffer;
}

interface Pending {
  resolve(reply: Reply): void;
  reject(error: Error): void;
  sentAt: number;
}

const CRLF = Buffer.from("\r\n");
/** "VA " */
const isValueLine = (b: Buffer, at: number): boolean => b[at] === 0x56 && b[at + 1] === 0x41 && b[at + 2] === 0x20;

/**
 * One TCP connection to one Memcached server, pipelined: requests are written as they come and the
 * server answers them in order, so replies are matched to a FIFO of waiting requests.
 *
 * Never hangs a caller: when the oldest request has waited `timeoutMs` (the connection cannot make
 * progress — a server stopped, a network gone), the socket is destroyed and every waiting request
 * rejects. A closed or failed socket is replaced by a new one on the next request, so a restarted
 * server is used again without anything to do. A reply that shows the stream is out of step
 * (`ERROR`, `CLIENT_ERROR`: the server may now read a data block as a command) resets the
 * connection too, rather than matching later replies to the wrong requests.
 */
export class Connection {
  readonly label: string;
  readonly #host: string;
  readonly #port: number;
  readonly #timeoutMs: number;
  #socket: Socket | undefined;
  #queue: Pending[] = [];
  #head = 0;
  #chunks: Buffer[] = [];
  #buffered = 0;
  /** Bytes needed before the next reply can be parsed (a `VA` block not fully received yet). */
  #need = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #drained: (() => void)[] = [];

  constructor(host: string, port: number, timeoutMs: number) {
    this.#host = host;
    this.#port = port;
    this.#timeoutMs = timeoutMs;
    this.label = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }

  /** Requests waiting for their reply. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** Sends one request (a command line, with its data block for a store command) and resolves with its reply. */
  request(frame: string): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      if (this.#closed) return reject(new Error(`layercache/memcached: the connection to ${this.label} is closed`));
      const socket = this.#socket ?? this.#open();
      this.#queue.push({ resolve, reject, sentAt: Date.now() });
      if (this.#timer === undefined && this.#timeoutMs > 0) this.#timer = setTimeout(() => this.#checkTimeout(), this.#timeoutMs);
      socket.write(frame);
    });
  }

  /** Several requests in one write (replies in the same order). */
  requestMany(frames: readonly string[]): Promise<Reply>[] {
    const socket = this.#closed ? undefined : (this.#socket ?? this.#open());
    socket?.cork();
    const replies = frames.map((f) => this.request(f));
    socket?.uncork();
    return replies;
  }

  /** Waits for the replies still expected (each bounded by the timeout), then closes the socket. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.pending > 0) await new Promise<void>((resolve) => this.#drained.push(resolve));
    const socket = this.#socket;
    this.#socket = undefined;
    if (socket === undefined) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => socket.destroy(), 1000);
      socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      socket.end();
    });
  }

  #open(): Socket {
    const socket = connect({ host: this.#host, port: this.#port, noDelay: true, keepAlive: true });
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => this.#onData(socket, chunk));
    socket.on("error", (error) => this.#fail(socket, error));
    socket.on("close", () => this.#fail(socket, new Error("connection closed")));
    return socket;
  }

  /** Ends `socket` (if it is still the current one) and rejects every waiting request with `error`. */
  #fail(socket: Socket, error: Error): void {
    if (this.#socket !== socket) return;
    this.#socket = undefined;
    socket.destroy();
    this.#chunks = [];
    this.#buffered = 0;
    this.#need = 0;
    const waiting = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    this.#idle();
    const failure = new Error(`layercache/memcached: ${this.label}: ${error.message}`, { cause: error });
    for (const p of waiting) p.reject(failure);
  }

  #checkTimeout(): void {
    this.#timer = undefined;
    const oldest = this.#queue[this.#head];
    if (oldest === undefined) return;
    const waited = Date.now() - oldest.sentAt;
    if (waited < this.#timeoutMs) {
      this.#timer = setTimeout(() => this.#checkTimeout(), this.#timeoutMs - waited);
      return;
    }
    if (this.#socket !== undefined) this.#fail(this.#socket, new Error(`no reply within ${this.#timeoutMs} ms`));
  }

  /** Nothing is waiting any more: no timer, and whoever waits to close may go on. */
  #idle(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const resolve of this.#drained.splice(0)) resolve();
  }

  #onData(socket: Socket, chunk: Buffer): void {
    if (this.#socket !== socket) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    if (this.#buffered < this.#need) return;
    const buf = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered);
    let pos = 0;
    this.#need = 0;
    while (pos < buf.length) {
      const eol = buf.indexOf(CRLF, pos);
      if (eol < 0) break;
      let value: Buffer | undefined;
      let next = eol + 2;
      if (isValueLine(buf, pos)) {
        let size = 0;
        let i = pos + 3;
        for (; i < eol; i++) {
          const d = buf[i]! - 48;
          if (d < 0 || d > 9) break;
          size = size * 10 + d;
        }
        next = eol + 2 + size + 2;
        if (buf.length < next) {
          this.#need = next - pos;
          break;
        }
        value = buf.subarray(eol + 2, eol + 2 + size);
      }
      const line = buf.toString("latin1", pos, eol);
      pos = next;
      this.#deliver(socket, line, value);
      if (this.#socket !== socket) return; // reset by a protocol error
    }
    if (pos >= buf.length) {
      this.#chunks = [];
      this.#buffered = 0;
    } else {
      this.#chunks = [buf.subarray(pos)];
      this.#buffered = buf.length - pos;
    }
  }

  #deliver(socket: Socket, line: string, value: Buffer | undefined): void {
    const p = this.#queue[this.#head];
    if (p === undefined) return this.#fail(socket, new Error(`unexpected reply ${JSON.stringify(line.slice(0, 80))}`));
    this.#queue[this.#head++] = undefined as unknown as Pending;
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
      this.#idle();
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (line === "ERROR" || line.startsWith("CLIENT_ERROR")) {
      p.reject(new Error(`layercache/memcached: ${this.label} answered ${JSON.stringify(line)}`));
      this.#fail(socket, new Error(`connection reset after the reply ${JSON.stringify(line)}`));
      return;
    }
    p.resolve(value === undefined ? { line } : { line, value });
  }
}
