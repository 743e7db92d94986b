/**
 * `layercache/testing`: the contract suites every L2 store and bus passes — the built-in ones
 * against their real servers, and one you write yourself — plus an in-memory store and a clock
 * for tests. Registers tests with the runner you pass (`describe`/`test` of vitest, node:test,
 * Jest or Mocha); importing this module loads no test runner.
 */
export { l2StoreContract, L2_STORE_CONTRACT_TESTS, type L2StoreContractOptions, type MakeStore } from "./testing/store-contract.js";
export { busContract, BUS_CONTRACT_TESTS, type BusContractOptions, type MakeBus } from "./testing/bus-contract.js";
export type { ContractOptions, ContractTestFn } from "./testing/runner.js";
export { MemoryStore, type MemoryStoreOptions, type StoredRecord } from "./l2/memory.js";
export { FakeClock } from "./shared/clock.js";
