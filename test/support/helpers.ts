/** Lets pending promise callbacks and immediates run. */
export function flush(times = 3): Promise<void> {
  let p = Promise.resolve();
  for (let i = 0; i < times; i++) p = p.then(() => new Promise<void>((r) => setImmediate(r)));
  return p;
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

export function deferred<T = unknown>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A loader that counts its calls and returns `${prefix}${n}`. */
export function counter(prefix = "v") {
  const fn = async (): Promise<string> => {
    fn.calls++;
    return `${prefix}${fn.calls}`;
  };
  fn.calls = 0;
  return fn;
}

/** A loader that blocks until released, and tells when it has been called. */
export function gated<T>() {
  const started = deferred<void>();
  const gate = deferred<T>();
  let calls = 0;
  return {
    loader: (): Promise<T> => {
      calls++;
      started.resolve();
      return gate.promise;
    },
    /** Resolves once the loader runs (the load read L2 and found nothing usable). */
    started: started.promise,
    release: (value: T) => gate.resolve(value),
    get calls() {
      return calls;
    },
  };
}
