import { createHash } from "node:crypto";

/** Points per server on the ring: enough to spread keys evenly over a handful of servers. */
const POINTS_PER_SERVER = 160;

function md5(text: string): Buffer {
  return createHash("md5").update(text).digest();
}

/**
 * Consistent hashing of keys over servers (the ketama scheme: each server owns 160 points of a
 * 32-bit ring, a key goes to the first point at or after its hash). Adding or removing a server
 * moves only the keys of the points it gains or loses. A server that is down keeps its keys: they
 * are never sent to another server meanwhile, since a remove written there would be lost when the
 * first one comes back with the old record.
 */
export class Ring<T> {
  readonly #points: Uint32Array;
  readonly #owners: T[];
  readonly #single: T | undefined;

  constructor(servers: readonly { label: string; server: T }[]) {
    this.#single = servers.length === 1 ? servers[0]!.server : undefined;
    const points: { at: number; server: T }[] = [];
    for (const { label, server } of servers) {
      for (let i = 0; i < POINTS_PER_SERVER / 4; i++) {
        const d = md5(`${label}-${i}`);
        for (let j = 0; j < 4; j++) points.push({ at: d.readUInt32LE(j * 4), server });
      }
    }
    points.sort((a, b) => a.at - b.at);
    this.#points = Uint32Array.from(points, (p) => p.at);
    this.#owners = points.map((p) => p.server);
  }

  /** The server of `key` (the key as sent to the server). */
  serverOf(key: string): T {
    if (this.#single !== undefined) return this.#single;
    const h = md5(key).readUInt32LE(0);
    const points = this.#points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return this.#owners[lo === points.length ? 0 : lo]!;
  }
}
