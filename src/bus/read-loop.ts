import type { TimerClock } from "../shared/clock.js";

/** Pause after a failed read, doubling from the first figure up to the second. */
export const READ_RETRY_MS = [50, 2_000] as const;

/**
 * The loop of a bus's reader that pulls messages (a blocking stream read, a long fetch): `read`
 * again and again while `alive()`; after a failure — reported with `failed`, unless the reader was
 * stopped or replaced meanwhile — it waits before the next try, 50 ms doubling up to 2 s, on the
 * given clock (a background timer: it never keeps the process alive).
 */
export async function readLoop(clock: TimerClock, alive: () => boolean, read: () => Promise<void>, failed: (error: unknown) => void): Promise<void> {
  let delay = 0;
  while (alive()) {
    try {
      await read();
      delay = 0;
    } catch (error) {
      if (!alive()) return;
      failed(error);
      delay = Math.min(Math.max(delay * 2, READ_RETRY_MS[0]), READ_RETRY_MS[1]);
      await new Promise<void>((resolve) => clock.setTimeout(resolve, delay, true));
    }
  }
}
