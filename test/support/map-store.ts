import type { L2Store } from "../../src/l2/contract.js";
import { MemoryStore, type StoredRecord } from "../../src/l2/memory.js";

/**
 * The exported `MemoryStore`, instrumented for the engine's tests under a fake clock: counts its
 * calls, fails on demand, and has no `getMany` (so every read is one `get`). (Redis itself is
 * tested against a real redis-server in test/integration.)
 *
 * Fields, not private (#) ones: tests derive stores from it with `Object.create`.
 */
export class MapStore implements L2Store {
  readonly memory: MemoryStore;
  failing = false;
  gets = 0;
  sets = 0;
  constructor(readonly now: () => number = () => Date.now()) {
    this.memory = new MemoryStore({ clock: { now: () => this.now() } });
  }

  get data(): Map<string, StoredRecord> {
    return this.memory.records;
  }

  get(key: string): Promise<string | undefined> {
    this.gets++;
    if (this.failing) return Promise.reject(new Error("store down"));
    return this.memory.get(key);
  }

  set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    this.sets++;
    if (this.failing) return Promise.reject(new Error("store down"));
    return this.memory.set(key, record, ttlMs, ifGeneration);
  }

  /** Raw write, for corrupt-payload tests. */
  poke(key: string, record: string): void {
    this.data.set(key, { record, expires: Infinity });
  }
}
