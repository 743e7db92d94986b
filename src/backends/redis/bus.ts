import { randomBytes } from "node:crypto";
import { Heartbeat, type BusHandlers, type TimerClock } from "../../backend.js";
import { BASE_OPTIONS, Listening, RedisBusBase, type Listener, type RedisBusBaseOptions } from "./bus-base.js";
import type { RedisDriver } from "./driver.js";

export interface RedisBusOptions extends RedisBusBaseOptions {
  /**
   * How often the subscriber checks that it still hears the channel, by publishing to a channel of
   * its own and waiting for the echo. A missed echo (while publishing works) means the
   * subscription is broken: it is replaced and the cache repairs its L1; the echo coming back is
   * also how a regained subscription is confirmed. Default `"2s"`; must be positive.
   */
  heartbeat?: RedisBusBaseOptions["heartbeat"];
}

/**
 * Invalidation bus on Redis pub/sub (standalone or Cluster). Publishing uses the given client;
 * subscribing uses a connection of its own. A lost subscription — a server restart, `CLIENT KILL
 * TYPE pubsub`, a network blip, or silence detected by the heartbeat — is reported to the cache,
 * which stops trusting L1 until the subscription is heard again.
 */
export class RedisBus extends RedisBusBase {
  constructor(options: RedisBusOptions) {
    super(options, BASE_OPTIONS, "RedisBus");
  }

  protected async listen(pub: RedisDriver, channel: string, handlers: BusHandlers, clock: TimerClock): Promise<Listener> {
    const echoChannel = `${channel}:echo:${randomBytes(6).toString("hex")}`;
    const heartbeat: Heartbeat = new Heartbeat({
      clock,
      intervalMs: this.heartbeatMs,
      probe: (n) => pub.publish(echoChannel, String(n)),
      onLost: () => handlers.onDisconnect(),
      onRegained: () => handlers.onReconnect(),
      // The ping was published but never came back: the subscription is silently broken.
      onSilence: () => sub.replace(),
      onError: (error) => handlers.onError(error, "subscribe"),
    });
    const sub: Listening = new Listening(pub, {
      setUp: (conn) =>
        conn.subscribe([channel, echoChannel], (from, message) => {
          if (!sub.current(conn)) return;
          if (from === echoChannel) heartbeat.heard(Number(message));
          else handlers.onMessage(message);
        }),
      onDown: (error) => {
        if (error !== undefined) handlers.onError(error, "subscribe");
        heartbeat.lost();
      },
      // Back up: the client resubscribes by itself; the echo of a heartbeat proves it.
      onUp: () => void heartbeat.beat(),
      onError: (error) => handlers.onError(error, "resubscribe"),
    });
    await sub.start();
    heartbeat.start();
    return {
      publish: (message) => pub.publish(channel, message),
      stop: async () => {
        heartbeat.stop();
        await sub.stop();
      },
    };
  }
}
