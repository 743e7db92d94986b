import { MemoryBus, type Bus, type BusHandlers } from "../../src/index.js";
import type { Deferred } from "./helpers.js";

/**
 * A MemoryBus whose publishing a test controls: `mode` "fail" (rejects at once), "hang" (never
 * answers) or "ok"; `gate`, when set, holds each publish until it resolves (then `mode` is obeyed
 * again). Counts publishes; declares the resilience settings it is given.
 */
export class ControlledBus implements Bus {
  readonly inner = new MemoryBus();
  mode: "ok" | "fail" | "hang" = "ok";
  gate: Deferred<void> | undefined;
  publishes = 0;
  constructor(readonly resilience: Bus["resilience"]) {}

  async connect(channel: string, handlers: BusHandlers) {
    const conn = await this.inner.connect(channel, handlers);
    return {
      publish: async (m: string): Promise<void> => {
        this.publishes++;
        this.#obey();
        if (this.mode === "hang") return new Promise<void>(() => {});
        if (this.gate) {
          await this.gate.promise;
          this.#obey();
        }
        return conn.publish(m);
      },
      close: () => conn.close(),
    };
  }

  #obey(): void {
    if (this.mode === "fail") throw new Error("publish failed");
  }
}
