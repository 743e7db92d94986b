import { Console } from "node:console";
import { configure } from "safe-stable-stringify";
import type { TimerClock } from "../shared/clock.js";

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

/**
 * How long identical failure lines are held back after one was written: the first goes out at
 * once, the others are counted and summed up in one line (`repeated: n`) when the window ends.
 */
export const LOG_REPEAT_WINDOW_MS = 10_000;

/** Most kinds of failure line throttled at once; past that, new kinds are written unthrottled. */
const MAX_THROTTLED = 256;

const toText = configure({ bigint: true, circularValue: "[Circular]", deterministic: false });

/**
 * An error as log fields: type, message and code — no stack. A backend failure repeats the same
 * stack for every failed call, so it adds lines, not information; an internal error (a bug) keeps
 * its stack (`withStack`).
 */
export function errorFields(error: unknown, withStack = false): object {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const out: { type: string; message: string; code?: unknown; stack?: string } = { type: error.name, message: error.message };
    if (code !== undefined) out.code = code;
    if (withStack && error.stack !== undefined) out.stack = error.stack;
    return out;
  }
  return { type: typeof error, message: typeof error === "string" ? error : String(toText(error)) };
}

/** Calls the user's logger without ever letting it throw into the cache. */
export function writeLog(logger: Logger | undefined, level: LogLevel, fields: object, message: string): void {
  const fn = logger?.[level];
  if (typeof fn !== "function") return;
  try {
    if (isConsole(logger)) fn.call(logger, `${message} ${toText(fields)}` as never);
    else fn.call(logger, fields, message);
  } catch {
    // A broken logger must not break reads and writes.
  }
}

/**
 * `console` prints an object over several lines (and an error with its stack): it gets one line
 * of text instead, the message then the fields as JSON. pino and other structured loggers get
 * `(fields, message)`.
 */
function isConsole(logger: unknown): boolean {
  return logger === globalThis.console || logger instanceof Console;
}

interface Repeat {
  level: LogLevel;
  message: string;
  /** Fields of the last line held back. */
  fields: object | undefined;
  held: number;
  timer: unknown;
}

/**
 * The cache's log lines: one line per event, with structured fields (`event`, `scope`, `key`,
 * `operation`, `error: { type, message, code }` …), at the level of its kind of event. Failures
 * (warn and error) that repeat — same event, message, operation and error text, whatever the key —
 * are throttled: the first is written, the next ones within LOG_REPEAT_WINDOW_MS are counted and
 * written as one line with `repeated: n` when the window ends (a background timer on the cache's
 * clock; `flush()` at close writes what is still held).
 */
export class LogWriter {
  readonly logger: Logger | undefined;
  readonly #clock: TimerClock | undefined;
  readonly #repeats = new Map<string, Repeat>();

  constructor(logger: Logger | undefined, clock: TimerClock | undefined) {
    this.logger = logger;
    this.#clock = clock;
  }

  write(level: LogLevel, event: string, fields: object, message: string): void {
    const logger = this.logger;
    if (logger === undefined || typeof logger[level] !== "function") return;
    const line = lineFields(event, fields);
    if ((level === "warn" || level === "error") && this.#clock !== undefined) {
      const f = line as { operation?: unknown; error?: { type?: unknown; message?: unknown } };
      const id = `${level}\u0000${event}\u0000${message}\u0000${String(f.operation ?? "")}\u0000${String(f.error?.type ?? "")}\u0000${String(f.error?.message ?? "")}`;
      const repeat = this.#repeats.get(id);
      if (repeat !== undefined) {
        repeat.held++;
        repeat.fields = line;
        return;
      }
      if (this.#repeats.size < MAX_THROTTLED) this.#hold(id, level, message);
    }
    writeLog(logger, level, line, message);
  }

  /** Writes the summary of every failure still held back (at close). */
  flush(): void {
    for (const [id, r] of [...this.#repeats]) {
      this.#clock!.clearTimeout(r.timer);
      this.#repeats.delete(id);
      this.#summarize(r);
    }
  }

  #hold(id: string, level: LogLevel, message: string): void {
    const r: Repeat = { level, message, fields: undefined, held: 0, timer: undefined };
    this.#repeats.set(id, r);
    const end = (): void => {
      if (r.held === 0) {
        this.#repeats.delete(id);
        return;
      }
      // Still failing: one summary line per window for as long as it goes on.
      this.#summarize(r);
      r.held = 0;
      r.timer = this.#clock!.setTimeout(end, LOG_REPEAT_WINDOW_MS, true);
    };
    r.timer = this.#clock!.setTimeout(end, LOG_REPEAT_WINDOW_MS, true);
  }

  #summarize(r: Repeat): void {
    if (r.held === 0) return;
    writeLog(this.logger, r.level, { ...r.fields, repeated: r.held, windowMs: LOG_REPEAT_WINDOW_MS }, `${r.message} (repeated ${r.held} times)`);
  }
}

/**
 * The fields of one line: `event` first, an error as `error: { type, message, code }`. (Not
 * `err`: pino runs its error serializer on that field, which would add an empty stack and call
 * the type "Object".)
 */
function lineFields(event: string, fields: object): object {
  const { err, error, ...rest } = fields as { err?: unknown; error?: unknown };
  const failure = err ?? error;
  const out: Record<string, unknown> = { event };
  for (const k in rest) {
    const v = (rest as Record<string, unknown>)[k];
    if (v !== undefined) out[k] = v;
  }
  if (failure !== undefined) out.error = errorFields(failure, event === "internalError");
  return out;
}
