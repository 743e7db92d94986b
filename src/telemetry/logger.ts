/**
 * The logger layercache writes to: pino's `(fields, message)` call shape, which `console` also
 * accepts (it prints the fields, then the message). Every method is optional.
 */
export interface Logger {
  debug?(fields: object, message?: string): void;
  info?(fields: object, message?: string): void;
  warn?(fields: object, message?: string): void;
  error?(fields: object, message?: string): void;
}

export type LogLevel = "debug" | "info" | "warn" | "error";

/** Calls the user's logger without ever letting it throw into the cache. */
export function writeLog(logger: Logger | undefined, level: LogLevel, fields: object, message: string): void {
  const fn = logger?.[level];
  if (typeof fn !== "function") return;
  try {
    fn.call(logger, fields, message);
  } catch {
    // A broken logger must not break reads and writes.
  }
}
