/**
 * A store of your own: L2 records as files in a directory, one file per key — and the contract
 * suite run on it, the same suite every built-in store passes. Run it: `npx tsx examples/custom-store.ts`
 * (node:test prints one line per test).
 */
import { createHash, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { generationOf, RecordError, type L2Store } from "../src/backend.js"; // your code: "layercache/backend"
import { l2StoreContract } from "../src/testing.js"; // your tests: "layercache/testing"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Each key is a file named by the key's hash (so any key fits any file system) holding
 * `<expiry time in ms>\n<record>`. Records are opaque text: the store reads nothing of them but
 * their generation, in a conditional write. Several stores — in one process or several — may share
 * one directory: every write takes the key's lock (a directory made with mkdir, which only one
 * caller can create), so no write comes between a conditional write's check and its write.
 * (A process that dies holding a lock leaves `<hash>.lock` behind: remove it by hand. Expired
 * files are not deleted, only ignored and replaced.)
 */
export class FileStore implements L2Store {
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
  }

  async connect(): Promise<void> {
    await mkdir(this.#dir, { recursive: true });
  }

  async get(key: string): Promise<string | undefined> {
    let text: string;
    try {
      text = await readFile(this.#file(key), "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error; // the backend failed: it counts toward the cache's circuit breaker
    }
    const end = text.indexOf("\n");
    const expires = end < 0 ? NaN : Number(text.slice(0, end));
    // This one file is broken, the store works: a RecordError makes the cache treat it as a corrupt record.
    if (Number.isNaN(expires)) throw new RecordError(`FileStore: the file of key ${JSON.stringify(key)} is not a stored record`, { key });
    return Date.now() >= expires ? undefined : text.slice(end + 1);
  }

  async set(key: string, record: string, ttlMs: number, ifGeneration?: string): Promise<boolean> {
    return this.#locked(key, async () => {
      if (ifGeneration !== undefined) {
        const current = await this.get(key).catch((error: unknown) => (error instanceof RecordError ? "" : Promise.reject(error)));
        // No record (or one that is not a layercache record) has generation "".
        if ((current === undefined ? "" : generationOf(current)) !== ifGeneration) return false;
      }
      // Written aside, then renamed over the old file: a reader sees the old record or the new one, never half of one.
      const temporary = `${this.#file(key)}.${randomUUID()}`;
      await writeFile(temporary, `${Date.now() + ttlMs}\n${record}`); // Infinity stays Infinity
      await rename(temporary, this.#file(key));
      return true;
    });
  }

  /** Nothing to release: the files stay for the other instances. */
  async close(): Promise<void> {}

  #file(key: string): string {
    return join(this.#dir, createHash("sha256").update(key).digest("hex"));
  }

  async #locked<T>(key: string, write: () => Promise<T>): Promise<T> {
    const lock = `${this.#file(key)}.lock`;
    for (let waited = 0; ; waited++) {
      try {
        await mkdir(lock);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST" || waited > 1000) throw error;
        await sleep(1 + Math.random() * 4);
      }
    }
    try {
      return await write();
    } finally {
      await rmdir(lock);
    }
  }
}

// The contract: every store the suite makes here shares one directory, as instances of a service
// share one backend. With vitest, pass its `describe` and `test` the same way.
const dir = await mkdtemp(join(tmpdir(), "layercache-file-store-"));
after(() => rm(dir, { recursive: true, force: true }));
l2StoreContract(() => new FileStore(dir), { describe, test, name: "FileStore" });
