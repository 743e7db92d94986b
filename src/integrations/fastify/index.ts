import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import { LayerCache, type CacheOptions } from "../../index.js";

export interface LayerCacheFastifyOptions {
  /** A cache made by the application. Without it the plugin makes one from `options`. */
  cache?: LayerCache;
  /** Options of the cache the plugin makes (when `cache` is not given). */
  options?: CacheOptions;
  /** Name of the instance decorator. Default "cache" (`fastify.cache`, typed for that name). */
  decorator?: string;
  /** Close the cache in Fastify's `onClose` hook (`await fastify.close()`). Default true. */
  close?: boolean;
}

declare module "fastify" {
  interface FastifyInstance {
    /** The cache registered by `layercache/fastify` (under the default decorator name). */
    cache: LayerCache;
  }
}

const KNOWN = new Set(["cache", "options", "decorator", "close"]);

async function plugin(fastify: FastifyInstance, opts: LayerCacheFastifyOptions): Promise<void> {
  for (const k of Object.keys(opts ?? {})) {
    // Fastify adds its own registration options (prefix, logLevel, …): only ours are checked.
    if (!KNOWN.has(k) && !["prefix", "logLevel", "logSerializers"].includes(k)) throw new TypeError(`layercache/fastify: unknown option "${k}"`);
  }
  if (opts.cache !== undefined && !(opts.cache instanceof LayerCache)) throw new TypeError('layercache/fastify: option "cache" must be a LayerCache');
  if (opts.cache !== undefined && opts.options !== undefined) throw new TypeError('layercache/fastify: give "cache" or "options", not both');
  const name = opts.decorator ?? "cache";
  if (typeof name !== "string" || name === "") throw new TypeError('layercache/fastify: option "decorator" must be a non-empty string');
  const cache = opts.cache ?? new LayerCache(opts.options);
  fastify.decorate(name, cache);
  if (opts.close !== false) fastify.addHook("onClose", async () => cache.close());
}

/**
 * Fastify plugin: `fastify.register(layercache, { options: { ttl: "1m", l2, bus } })` decorates
 * the instance with the cache (`fastify.cache`) and closes it when Fastify closes. Registered
 * without encapsulation (as `fastify-plugin` would), so every route and plugin sees it.
 */
export const layercache: FastifyPluginAsync<LayerCacheFastifyOptions> = Object.assign(plugin, {
  [Symbol.for("skip-override")]: true,
  [Symbol.for("fastify.display-name")]: "layercache",
  [Symbol.for("plugin-meta")]: { name: "layercache", fastify: ">=4" },
});
