import type { Counters, Emitter } from "../events.js";
import { writeLog, type Logger } from "../logger.js";
import { decodeMessage, encodeMessage, type BusMessage, type BusOp } from "./codec.js";
import type { Bus, BusConnection } from "./contract.js";

export interface PeerHandlers {
  onRemove(scope: string[], keys: string[], from: string): void;
  onClear(scope: string[], from: string): void;
  onReconnect(): void;
}

/**
 * The facade every bus access goes through: codec, signing, dropping our own and bad messages,
 * and error handling — the engine above it only sees decoded peer operations.
 */
export class BusLink {
  readonly #bus: Bus;
  readonly #channel: string;
  readonly #id: string;
  readonly #secret: Uint8Array | undefined;
  readonly #peer: PeerHandlers;
  readonly #emitter: Emitter;
  readonly #counters: Counters;
  readonly #logger: Logger | undefined;
  #conn: BusConnection | undefined;

  constructor(
    bus: Bus,
    o: { channel: string; id: string; secret: Uint8Array | undefined; peer: PeerHandlers; emitter: Emitter; counters: Counters; logger: Logger | undefined },
  ) {
    this.#bus = bus;
    this.#channel = o.channel;
    this.#id = o.id;
    this.#secret = o.secret;
    this.#peer = o.peer;
    this.#emitter = o.emitter;
    this.#counters = o.counters;
    this.#logger = o.logger;
  }

  async connect(): Promise<void> {
    try {
      this.#conn = await this.#bus.connect(this.#channel, {
        onMessage: (text) => this.#receive(text),
        onReconnect: () => this.#peer.onReconnect(),
        onError: (error, operation) => this.#failed(operation, error),
      });
    } catch (error) {
      this.#failed("connect", error);
    }
  }

  /** Tells peers; never rejects (a failure is reported as a `busError`). */
  async publish(op: BusOp, scope: readonly string[], keys: string[]): Promise<void> {
    const conn = this.#conn;
    if (conn === undefined) return;
    const text = encodeMessage({ from: this.#id, op, scope: scope as string[], keys }, this.#secret);
    try {
      await conn.publish(text);
    } catch (error) {
      this.#failed("publish", error);
    }
  }

  async close(): Promise<void> {
    const conn = this.#conn;
    this.#conn = undefined;
    try {
      await conn?.close();
    } catch (error) {
      this.#failed("close", error);
    }
  }

  #receive(text: string): void {
    const d = decodeMessage(text, this.#secret);
    if (!d.ok) {
      this.#counters.busMessagesDropped++;
      writeLog(this.#logger, "warn", { reason: d.reason }, "layercache: bus message dropped");
      if (this.#emitter.l.busMessageDropped) this.#emitter.emit("busMessageDropped", { reason: d.reason });
      return;
    }
    const m: BusMessage = d.message;
    if (m.from === this.#id) return;
    if (m.op === "remove") this.#peer.onRemove(m.scope, m.keys, m.from);
    else this.#peer.onClear(m.scope, m.from);
  }

  #failed(operation: string, error: unknown): void {
    this.#counters.busErrors++;
    writeLog(this.#logger, "warn", { operation, err: error }, "layercache: bus operation failed");
    if (this.#emitter.l.busError) this.#emitter.emit("busError", { operation, error });
  }
}
