import type { TimerClock } from "../shared/clock.js";
import { withTimeout } from "../shared/resilience.js";

export interface HeartbeatOptions {
  /** The cache's clock (a bus gets it in `connect`'s context): a test drives the heartbeat with a `FakeClock`. */
  clock: TimerClock;
  /** Time between probes, and how long a probe may take to be sent and to come back. Any length works. */
  intervalMs: number;
  /**
   * Sends probe number `n` (1, 2, ...) — e.g. publishes it to an echo channel — and resolves once
   * it is sent; the bus calls `heard(n)` when it comes back. A rejection (or taking longer than an
   * interval) counts as lost.
   */
  probe(n: number): Promise<unknown>;
  /** The bus became deaf: a probe failed, one was sent but not heard back, or the bus called `lost()`. */
  onLost(): void;
  /** The bus hears again after being deaf. */
  onRegained(): void;
  /**
   * A probe was sent but not heard back within an interval: the listening side is silently broken
   * (a half-open connection, a subscription the server dropped) and should be replaced. Called at
   * each interval that finds it so; the next probe waits for it.
   */
  onSilence?(): Promise<void> | void;
  /** A probe could not be sent (its error, or a timeout). */
  onError?(error: unknown): void;
}

/**
 * Gap detection any bus can use when it cannot see every loss itself: every interval it sends a
 * probe through the bus's own path and expects to hear it back before the next one. It tracks
 * whether the bus is deaf and reports each change once. Its timers run on the injected clock and
 * are background work: they never keep the process alive.
 */
export class Heartbeat {
  readonly #o: HeartbeatOptions;
  #deaf = false;
  #stopped = true;
  #beating = false;
  #timer: unknown;
  /** Last probe sent (and whether sending it succeeded), last one heard back. */
  #sent = 0;
  #sentOk = false;
  #heard = 0;

  constructor(options: HeartbeatOptions) {
    if (!(options.intervalMs > 0)) throw new TypeError("layercache: Heartbeat intervalMs must be a positive number of milliseconds");
    this.#o = options;
  }

  /** Whether the bus is deaf now (since a loss, until something was heard). */
  get deaf(): boolean {
    return this.#deaf;
  }

  /** Starts probing: the first probe goes out one interval from now. */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#schedule();
  }

  /** Stops probing; nothing is reported afterwards. */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Probe `n` (or anything proving the bus hears) came back. */
  heard(n: number): void {
    if (this.#stopped) return;
    if (n > this.#heard) this.#heard = n;
    if (!this.#deaf) return;
    this.#deaf = false;
    this.#o.onRegained();
  }

  /** The bus saw the loss itself (a connection event): it is deaf until something is heard. */
  lost(): void {
    if (this.#stopped || this.#deaf) return;
    this.#deaf = true;
    this.#o.onLost();
  }

  /**
   * Checks the last probe and sends the next one now — what each interval does; also called by a
   * bus whose connection came back, so that the echo confirms it hears.
   */
  async beat(): Promise<void> {
    if (this.#stopped || this.#beating) return;
    this.#beating = true;
    try {
      if (this.#sentOk && this.#heard < this.#sent) {
        this.lost();
        await this.#o.onSilence?.();
        if (this.#stopped) return;
      }
      const n = ++this.#sent;
      this.#sentOk = false;
      const { clock, intervalMs } = this.#o;
      // A hung server must not hold the heartbeat: a probe gets one interval.
      await withTimeout(clock, this.#o.probe(n), intervalMs, () => new Error("heartbeat probe timed out"), true);
      this.#sentOk = true;
    } catch (error) {
      if (this.#stopped) return;
      this.#o.onError?.(error);
      this.lost();
    } finally {
      this.#beating = false;
    }
  }

  #schedule(): void {
    this.#timer = this.#o.clock.setTimeout(
      () => {
        if (this.#stopped) return;
        void this.beat();
        this.#schedule();
      },
      this.#o.intervalMs,
      true,
    );
  }
}
