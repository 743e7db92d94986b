import type { L2Store } from "../../src/l2/contract.js";
import { generationOf } from "../../src/l2/envelope.js";

/**
 * An in-process implementation of our own L2 contract, used to test the engine's L2 path under a
 * fake clock. (Redis itself is tested against a real redis-server in test/integration.)
 */
export class MapStore implements L2Store {
  readonly data = new Map<string, { record: string; expires: number }>();
  failing = false;
  gets = 0;
  sets = 0;
  constructor(readonly now: () => number = () => Date.now()) {}

  async get(key: string): Promise<string | undefined> {
    this.gets++;
    if (this.failing) throw new Error("store down");
    const e = this.data.get(key);
    if (!e) return undefined;
    if (this.now() >= e.expires) {
      this.data.delete(key);
      return undefined;
    }
    return e.record;
  }

  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    this.sets++;
    if (this.failing) throw new Error("store down");
    if (ifGeneration !== undefined) {
      const cur = await this.get(key);
      this.gets--;
      if ((cur === undefined ? "" : generationOf(cur)) !== ifGeneration) return false;
    }
    this.data.set(key, { record, expires: this.now() + ttlMs });
    return true;
  }

  /** Raw write, for corrupt-payload tests. */
  poke(key: string, record: string): void {
    this.data.set(key, { record, expires: Infinity });
  }
}
