/**
 * A bus of your own: invalidations between caches in the worker threads of one process, over
 * Node's `BroadcastChannel` — and the contract suite run on it, the same suite every built-in bus
 * passes. Run it: `npx tsx examples/custom-bus.ts` (node:test prints one line per test).
 */
import { describe, test } from "node:test";
import { BroadcastChannel } from "node:worker_threads";
import type { Bus, BusConnection, BusHandlers } from "../src/backend.js"; // your code: "layercache/backend"
import { busContract } from "../src/testing.js"; // your tests: "layercache/testing"

/**
 * Messages are opaque text: the bus carries them, in order, to every other connection on the
 * channel. A `BroadcastChannel` never loses a message while it is open, so this bus never
 * reports a gap; a bus over a network calls `onDisconnect` when it may start missing messages and
 * `onReconnect` once it hears again, and the cache then stops trusting what it holds in L1.
 */
export class BroadcastChannelBus implements Bus {
  async connect(channel: string, handlers: BusHandlers): Promise<BusConnection> {
    const bc = new BroadcastChannel(`layercache:${channel}`);
    bc.onmessage = (event) => handlers.onMessage((event as { data: string }).data);
    bc.onmessageerror = (event) => handlers.onError(event, "deliver");
    return {
      publish: async (message) => bc.postMessage(message),
      close: async () => bc.close(),
    };
  }
}

// The contract: connections from different BroadcastChannelBus objects reach each other, as
// instances of a service would. With vitest, pass its `describe` and `test` the same way.
busContract(() => new BroadcastChannelBus(), { describe, test, name: "BroadcastChannelBus" });
