import { FakeClock, LayerCache, MemoryBus, type Bus, type BusHandlers } from "../../src/index.js";
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

/** Two caches on one ControlledBus (declaring `resilience`), on one FakeClock at 0, both ready. */
export async function pairOnControlledBus(resilience: Bus["resilience"]) {
  const clock = new FakeClock(0);
  const bus = new ControlledBus(resilience);
  const a = new LayerCache({ bus, clock });
  const b = new LayerCache({ bus, clock });
  await Promise.all([a.ready(), b.ready()]);
  return { clock, bus, a, b };
}
