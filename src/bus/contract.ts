import type { TimerClock } from "../shared/clock.js";

/**
 * The contract an invalidation bus implements. It moves opaque text messages (see `codec.ts`)
 * between the instances connected to the same channel; it never carries values.
 */
export interface BusHandlers {
  /** A message from the channel (the instance's own messages may come back too; they are ignored). */
  onMessage(message: string): void;
  /** The subscription was lost: messages published from now on may be missed. */
  onDisconnect(): void;
  /** The subscription is back: messages may have been missed in between (the cache repairs its L1). */
  onReconnect(): void;
  /**
   * The subscription is back and the bus has delivered every message published while it was away
   * (a durable log read on from its last position): nothing was missed, nothing to repair. A bus
   * that cannot tell calls `onReconnect`; a bus given handlers without this method calls
   * `onReconnect` instead.
   */
  onCaughtUp?(): void;
  /** Something failed in the background (connection, subscription); the bus keeps trying. */
  onError(error: unknown, operation: string): void;
}

export interface BusConnection {
  publish(message: string): Promise<void>;
  close(): Promise<void>;
}

export interface Bus {
  /** The client object this bus publishes on, when it was given one (see `L2Store.connection`). */
  readonly connection?: object;
  /** How the cache guards publishing (defaults below apply to any field left out). */
  readonly resilience?: BusResilience;
  /** The largest message this bus carries (see `BusLimits`); left out: no limit of its own. */
  readonly limits?: BusLimits;
  /**
   * Subscribes to `channel`; resolves once messages published afterwards will be delivered.
   * `context` carries what the cache lends the bus (its clock); a bus may ignore it, and must work
   * without it (then on the real clock).
   */
  connect(channel: string, handlers: BusHandlers, context?: BusContext): Promise<BusConnection>;
}

/** What the cache hands a bus when it connects. */
export interface BusContext {
  /** The cache's clock: a bus's own timers (a heartbeat) run on it, so tests drive them with a `FakeClock`. */
  clock: TimerClock;
}

/**
 * The size of message a bus can carry, in **UTF-8 bytes** of the text given to `publish` (what
 * `Buffer.byteLength(text)` returns; a bus that wraps or encodes messages declares the limit of the
 * text it is given). The cache splits an invalidation into as many messages as it needs so that
 * each one — signature and scope included — fits in the smaller of this limit and its own budget
 * (64 KiB). A key or scope too long for any message is sent as a `clear` of its scope (or of the
 * nearest enclosing scope whose `clear` fits): peers drop more than they had to, never less.
 */
export interface BusLimits {
  /** Longest message, in UTF-8 bytes. At least `BUS_LIMIT_MINIMUMS.maxMessageBytes`; default: no limit. */
  readonly maxMessageBytes?: number;
}

/** The smallest message limit a bus may declare: room for a signed `clear` of the whole cache and a short key. */
export const BUS_LIMIT_MINIMUMS: Required<BusLimits> = { maxMessageBytes: 512 };

export interface BusResilience {
  /** A publish taking longer counts as failed (and is retried). Default 1000 ms. */
  timeoutMs?: number;
  /** Consecutive publish failures that open the breaker (invalidations are then queued, not waited on). Default 3. */
  breakerThreshold?: number;
  /** How long the breaker stays open before one probe publish. Default 1000 ms. */
  breakerCooldownMs?: number;
}

export const BUS_RESILIENCE_DEFAULTS: Required<BusResilience> = { timeoutMs: 1000, breakerThreshold: 3, breakerCooldownMs: 1000 };
