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
  /** Its caller got a timeout: the reply, when it comes, is read and dropped. */
  abandoned: boolean;
}

/** A connection silent this long while requests wait on it is given up (at least 10 s, or 10 timeouts). */
const deadAfter = (timeoutMs: number): number => Math.max(10_000, 10 * timeoutMs);

const CRLF = Buffer.from("\r\n");
/** "VA " */
const isValueLine = (b: Buffer, at: number): boolean => b[at] === 0x56 && b[at + 1] === 0x41 && b[at + 2] === 0x20;

/**
 * One TCP connection to one Memcached server, pipelined: requests are written as they come and the
 * server answers them in order, so replies are matched to a FIFO of waiting requests.
 *
 * Never hangs a caller: a request without a reply after `timeoutMs` rejects. The connection itself
 * is kept, and later requests are written behind the unanswered ones: a server that was only slow
 * or stopped for a while (SIGSTOP, a long pause) then runs them all in the order they were sent —
 * a write that timed out and the removal retried after it reach the server in that order, never
 * the other way round, as they could on two connections. Only a connection that has been silent
 * for `deadAfter` while requests wait (a network gone) is destroyed; a closed or failed one is
 * replaced on the next request, so a restarted server is used again with nothing to do. A reply
 * that shows the stream is out of step (`ERROR`, `CLIENT_ERROR`: the server may now read a data
 * block as a command) resets the connection too, rather than matching later replies to the wrong
 * requests.
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
  /** When the timer fires. */
  #timerAt = 0;
  /** Queue index up to which requests have timed out (their callers have their error). */
  #expired = 0;
  /** Last time bytes came in, or the queue went from empty to waiting. */
  #progressAt = 0;
  readonly #deadAfterMs: number;
  #closed = false;
  #corked = false;
  #drained: (() => void)[] = [];

  /** `deadAfterMs`: see `deadAfter` (a test may shorten it). */
  constructor(host: string, port: number, timeoutMs: number, deadAfterMs = deadAfter(timeoutMs)) {
    this.#host = host;
    this.#port = port;
    this.#timeoutMs = timeoutMs;
    this.#deadAfterMs = deadAfterMs;
    this.label = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }

  /** Whether a socket is open (or opening). */
  get open(): boolean {
    return this.#socket !== undefined;
  }

  /** Requests waiting for their reply. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** Sends one request (a command line, with its data block for a store command) and resolves with its reply. */
  request(frame: string): Promise<Reply> {
    return this.#send(frame, 1)[0]!;
  }

  /** Several requests in one write (replies in the same order). */
  requestMany(frames: readonly string[]): Promise<Reply>[] {
    return this.#send(frames.length === 1 ? frames[0]! : frames.join(""), frames.length);
  }

  /** Writes `text` (`count` requests) and queues a waiting reply for each. */
  #send(text: string, count: number): Promise<Reply>[] {
    if (this.#closed) {
      const error = new Error(`layercache/memcached: the connection to ${this.label} is closed`);
      return Array.from({ length: count }, () => Promise.reject(error));
    }
    const socket = this.#socket ?? this.#open();
    const now = Date.now();
    if (this.pending === 0) this.#progressAt = now;
    const replies = new Array<Promise<Reply>>(count);
    for (let i = 0; i < count; i++) {
      replies[i] = new Promise<Reply>((resolve, reject) => void this.#queue.push({ resolve, reject, sentAt: now, abandoned: false }));
    }
    if (this.#timeoutMs > 0 && (this.#timer === undefined || this.#timerAt > now + this.#timeoutMs)) this.#arm(now + this.#timeoutMs);
    // Requests of one tick leave in one write (one packet, one read on the server), not one each.
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    socket.write(text);
    return replies;
  }

  /** Waits for the replies still expected (one timeout at most), then closes the socket. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.pending > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.#timeoutMs > 0 ? this.#timeoutMs : 1000);
        this.#drained.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const socket = this.#socket;
    if (socket === undefined) return;
    if (this.pending > 0) return this.#fail(socket, new Error("closed with requests unanswered"));
    this.#socket = undefined;
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
    const waiting = this.#queue.slice(Math.max(this.#head, this.#expired));
    this.#queue = [];
    this.#head = 0;
    this.#expired = 0;
    this.#idle();
    const failure = new Error(`layercache/memcached: ${this.label}: ${error.message}`, { cause: error });
    for (const p of waiting) p.reject(failure);
  }

  #arm(at: number): ReturnType<typeof setTimeout> {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    return (this.#timer = setTimeout(() => this.#checkTimeouts(), Math.max(0, at - Date.now())));
  }

  /** Times out the requests that waited too long, gives up a connection silent too long, and arms the next check. */
  #checkTimeouts(): void {
    this.#timer = undefined;
    if (this.pending === 0) return;
    const now = Date.now();
    if (now - this.#progressAt >= this.#deadAfterMs && this.#socket !== undefined) {
      return this.#fail(this.#socket, new Error(`no reply for ${this.#deadAfterMs} ms`));
    }
    let i = Math.max(this.#head, this.#expired);
    for (; i < this.#queue.length; i++) {
      const p = this.#queue[i]!;
      if (now - p.sentAt < this.#timeoutMs) break;
      p.abandoned = true;
      p.reject(new Error(`layercache/memcached: ${this.label}: no reply within ${this.#timeoutMs} ms`));
    }
    this.#expired = i;
    const next = this.#queue[i];
    const timer = this.#arm(next !== undefined ? next.sentAt + this.#timeoutMs : this.#progressAt + this.#deadAfterMs);
    // Only abandoned requests left: nobody waits for this timer, it must not keep the process alive.
    if (next === undefined) timer.unref();
  }

  /** Nothing is waiting any more: no timer, and whoever waits to close may go on. */
  #idle(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const resolve of this.#drained.splice(0)) resolve();
  }

  #onData(socket: Socket, chunk: Buffer): void {
    if (this.#socket !== socket) return;
    this.#progressAt = Date.now();
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
      this.#expired = 0;
      this.#idle();
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#expired = Math.max(0, this.#expired - this.#head);
      this.#head = 0;
    }
    if (line === "ERROR" || line.startsWith("CLIENT_ERROR")) {
      if (!p.abandoned) p.reject(new Error(`layercache/memcached: ${this.label} answered ${JSON.stringify(line)}`));
      this.#fail(socket, new Error(`connection reset after the reply ${JSON.stringify(line)}`));
      return;
    }
    if (!p.abandoned) p.resolve(value === undefined ? { line } : { line, value });
  }
}
