/**
 * `layercache/backend`: the contract between the cache and its backends. A store or bus — built in
 * (`src/backends/*`) or written by a user — imports only this module: the `L2Store` and `Bus`
 * interfaces and their limits, the record helpers a store's conditional write needs, the error a store raises for
 * one bad record, the timers, the heartbeat a bus uses to notice a silent loss, and the option
 * helpers every backend uses the same way.
 */
export type { L2Store, L2Resilience, L2Limits } from "./l2/contract.js";
export { RESILIENCE_DEFAULTS, L2_LIMIT_MINIMUMS } from "./l2/contract.js";
export type { Bus, BusConnection, BusContext, BusHandlers, BusResilience, BusLimits } from "./bus/contract.js";
export { BUS_RESILIENCE_DEFAULTS, BUS_LIMIT_MINIMUMS } from "./bus/contract.js";
export { RECORD_VERSION, RECORD_HEADER_BYTES, generationOf } from "./l2/envelope.js";
export { LayerCacheError, RecordError, isRecordError, optionError, preview } from "./shared/errors.js";
export { systemClock, MAX_TIMER_MS, type Clock, type TimerClock } from "./shared/clock.js";
export { withTimeout } from "./shared/resilience.js";
export { Heartbeat, type HeartbeatOptions } from "./bus/heartbeat.js";
export { readLoop, READ_RETRY_MS } from "./bus/read-loop.js";
export { parseDuration, type Duration } from "./api/options.js";
export { checkOptions, checkUrl, parseResilience, type CircuitBreakerOptions } from "./shared/backend-options.js";
