import type { Bus, BusConnection, BusHandlers } from "./contract.js";

/**
 * A bus between `LayerCache` instances of one process: pass the same `MemoryBus` object to each.
 * Messages go through the same codec as the network buses and are delivered synchronously,
 * before `publish` returns, so a `remove` on one instance has reached the others when it resolves.
 * It declares no `limits`: any message fits (the cache still keeps each one within 64 KiB).
 */
export class MemoryBus implements Bus {
  readonly #channels = new Map<string, Set<BusHandlers>>();

  async connect(channel: string, handlers: BusHandlers): Promise<BusConnection> {
    let members = this.#channels.get(channel);
    if (members === undefined) this.#channels.set(channel, (members = new Set()));
    members.add(handlers);
    const channels = this.#channels;
    return {
      async publish(message: string): Promise<void> {
        for (const member of [...members!]) {
          try {
            member.onMessage(message);
          } catch (error) {
            member.onError(error, "deliver");
          }
        }
      },
      async close(): Promise<void> {
        members!.delete(handlers);
        if (members!.size === 0 && channels.get(channel) === members) channels.delete(channel);
      },
    };
  }
}
