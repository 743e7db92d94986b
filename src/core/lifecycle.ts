import { CacheClosedError } from "../shared/errors.js";

/** How long `close()` waits for background work before aborting it. */
const CLOSE_WAIT_MS = 5_000;
/** How long the first operations wait for L2 and the bus to connect before going on without them. */
const OPEN_WAIT_MS = 1_000;

/** What the lifecycle drives: the connections, and what is still running at close. */
export interface LifecycleParts {
  /** Connects L2 and then the bus (each bounded by its own timeouts). */
  connect(): Promise<void>;
  /** The first operations stopped waiting for the connections: one made later must repair L1. */
  stopWaiting(): void;
  /** Aborts everything still running (after the close wait): its waiters get CacheClosedError. */
  abortAll(): void;
  /** Closes the bus, then L2 (releasing what they opened). */
  release(): Promise<void>;
}

/**
 * Opening and closing a cache: connections opened lazily (or by `ready()`), first operations that
 * wait for them only so long, background work tracked so that `close()` can wait for it (bounded),
 * then abort what is left and release the connections.
 */
export class Lifecycle {
  /** True once L2 and bus are connected (at once when there are none); false again after close. */
  opened: boolean;
  closed = false;
  readonly #parts: LifecycleParts;
  readonly #tasks = new Set<Promise<void>>();
  #opening: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  constructor(parts: LifecycleParts, nothingToOpen: boolean) {
    this.#parts = parts;
    this.opened = nothingToOpen;
  }

  /** `cache.ready()`. */
  open(): Promise<void> {
    if (this.closed) return Promise.reject(new CacheClosedError());
    return (this.#opening ??= this.#parts.connect().then(() => {
      if (!this.closed) this.opened = true;
    }));
  }

  /**
   * Runs `op` once the connections are open — but waits for them at most OPEN_WAIT_MS: with Redis
   * down at start-up the first operations go on degraded at once rather than hang. A bus that
   * connects later repairs L1.
   */
  afterOpen<T>(op: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new CacheClosedError());
    const opening = this.open();
    return new Promise<void>((resolve, reject) => {
      // Not unref'd: a caller waits for it.
      const timer = setTimeout(() => {
        this.#parts.stopWaiting();
        if (!this.closed) this.opened = true;
        resolve();
      }, OPEN_WAIT_MS);
      opening.then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    }).then(() => (this.closed ? Promise.reject(new CacheClosedError()) : op()));
  }

  /** Background work `close()` waits for. */
  track(task: Promise<void>): void {
    this.#tasks.add(task);
    const done = (): void => void this.#tasks.delete(task);
    task.then(done, done);
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.closed = true;
    this.opened = false;
    return (this.#closing = this.#shutdown());
  }

  async #shutdown(): Promise<void> {
    // Connections still being opened are closed once open (their facades see `closed`).
    const waitFor = [...this.#tasks, ...(this.#opening ? [this.#opening] : [])];
    if (waitFor.length > 0) {
      // Not unref'd: close() must resolve even when nothing else keeps the process alive.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)));
      await Promise.race([Promise.allSettled(waitFor), bound]);
      clearTimeout(timer);
    }
    this.#parts.abortAll();
    await this.#parts.release();
  }
}
