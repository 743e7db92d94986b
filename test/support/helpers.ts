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
