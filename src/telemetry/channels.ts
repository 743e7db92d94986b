import { tracingChannel, type TracingChannel } from "node:diagnostics_channel";

/**
 * `node:diagnostics_channel` tracing channels, one per operation (SPEC 12). Each is a Node
 * TracingChannel: a subscriber gets `start`, `end`, `asyncStart`, `asyncEnd` and `error` with the
 * operation's context object below; Node adds `result` (the operation's value) or `error` to it.
 * Every context carries `cache`, the id of the cache instance (`cache.instanceId`), so that a
 * subscriber can tell several caches of one process apart.
 *
 * Publishing is free when nobody subscribes: every traced call site first reads the channel's
 * `hasSubscribers` and takes the untraced path when it is false — no context object, no closure.
 */
export const CHANNEL_NAMES = {
  get: "layercache:get",
  getOrSet: "layercache:getOrSet",
  load: "layercache:load",
  refresh: "layercache:refresh",
  l2: "layercache:l2",
  bus: "layercache:bus",
} as const;

/** `get(key)` on the cache or a scope: `result` is the value, or undefined for a miss. */
export interface GetContext {
  cache: string;
  /** Scope path joined with "/" ("" for the cache itself). */
  scope: string;
  key: string;
  result?: unknown;
  error?: unknown;
}

/** `getOrSet(key, loader)` and calls of cached functions: from the call to its answer. */
export type GetOrSetContext = GetContext;

/** One call of the loader (or cached function), from its start to its value, failure or hard timeout. */
export interface LoadContext extends GetContext {
  /** "load": a caller waits for it; "refresh": a background refresh runs it. */
  kind: "load" | "refresh";
}

/** A background refresh as a whole: the L2 read, the loader, the write-back. */
export type RefreshContext = GetContext;

/** One call to the L2 store, under its timeout (a call the open breaker answers is not made, not traced). */
export interface L2Context {
  cache: string;
  /** "get", "set", "remove", "connect", … */
  operation: string;
  /** A write's scope. */
  scope?: string;
  /**
   * A write's key as the user gave it; a read's key as the store sees it (prefix and scope
   * included, since reads of several scopes go out in one batch), or "n keys" for a batch.
   */
  key?: string;
  result?: unknown;
  error?: unknown;
}

/** A bus publish (async: until the message is sent or queued for retry) or a received message (sync: its handling). */
export interface BusContext {
  cache: string;
  operation: "publish" | "receive";
  /** The invalidation: "remove", "clear" or "update" (unknown for a dropped message). */
  op?: "remove" | "clear" | "update" | "tag";
  scope?: string;
  keys?: string[];
  /** Receive: the sending instance's id. */
  from?: string;
  /** Receive: why the message was ignored (malformed, forged, another version, our own). */
  dropped?: string;
  error?: unknown;
}

export const channels = {
  get: tracingChannel(CHANNEL_NAMES.get) as TracingChannel<unknown, GetContext & object>,
  getOrSet: tracingChannel(CHANNEL_NAMES.getOrSet) as TracingChannel<unknown, GetOrSetContext & object>,
  load: tracingChannel(CHANNEL_NAMES.load) as TracingChannel<unknown, LoadContext & object>,
  refresh: tracingChannel(CHANNEL_NAMES.refresh) as TracingChannel<unknown, RefreshContext & object>,
  l2: tracingChannel(CHANNEL_NAMES.l2) as TracingChannel<unknown, L2Context & object>,
  bus: tracingChannel(CHANNEL_NAMES.bus) as TracingChannel<unknown, BusContext & object>,
};
