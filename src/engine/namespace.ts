import { L1Partition, type SlotOwner } from "../memory/l1.js";
import { optionError } from "../errors.js";
import type { L1Bounds } from "../options.js";
import type { Flight, Peek } from "./flight.js";

/**
 * The shared state of one scope path: its L1 keys, its in-flight loads and its cooldowns. Every
 * view of the same scope (and every cached function in it) uses the same `Namespace`, so single
 * flight and invalidation are keyed by the full key, never by the view object.
 */
export class Namespace implements SlotOwner {
  readonly name: string;
  readonly parent: Namespace | undefined;
  readonly path: readonly string[];
  /** Scope path joined with "/", for events and logs ("" for the root). */
  readonly label: string;
  readonly slots = new Map<string, number>();
  ownerId = 0;
  part: L1Partition;
  /** The bounds this scope declared for an L1 partition of its own (undefined: shares its parent's). */
  bounds: L1Bounds | undefined;
  children: Map<string, Namespace> | undefined;
  /** In-flight loads and refreshes by key. */
  flights: Map<string, Flight> | undefined;
  /** In-flight L2 reads of `get` by key. */
  peeks: Map<string, Peek> | undefined;
  /** Key → time until which background refreshes are not started (after a failed refresh). */
  cooldowns: Map<string, number> | undefined;
  /** Key → time until which a failed load's fail-safe value is served without calling the loader. */
  throttles: Map<string, number> | undefined;
  /** L2 key prefix, computed on first use by the remote layer. */
  l2Prefix: string | undefined;

  constructor(parent: Namespace | undefined, name: string, part: L1Partition, bounds?: L1Bounds) {
    this.parent = parent;
    this.name = name;
    this.path = parent ? [...parent.path, name] : [];
    this.label = this.path.join("/");
    this.part = part;
    this.bounds = bounds;
    part.adopt(this);
  }

  /** The child scope `name`, created on first use; `bounds` give it an L1 partition of its own. */
  child(name: string, bounds: L1Bounds | undefined): Namespace {
    let ns = this.children?.get(name);
    if (ns === undefined) {
      const part = bounds ? newPartition(this.part, bounds) : this.part;
      ns = new Namespace(this, name, part, bounds);
      (this.children ??= new Map()).set(name, ns);
    } else if (bounds) {
      ns.#declareBounds(bounds);
    }
    return ns;
  }

  /** An existing scope by path, or undefined (never creates one). */
  find(path: readonly string[]): Namespace | undefined {
    let ns: Namespace | undefined = this;
    for (const name of path) {
      ns = ns.children?.get(name);
      if (ns === undefined) return undefined;
    }
    return ns;
  }

  /** This scope and every scope nested in it. */
  *subtree(): Generator<Namespace> {
    yield this;
    if (this.children) for (const c of this.children.values()) yield* c.subtree();
  }

  /**
   * A scope first used without bounds and later declared with some gets its own partition; its
   * L1 entries (only a cache) are dropped in the move. Two different declarations are an error.
   */
  #declareBounds(bounds: L1Bounds): void {
    if (this.bounds) {
      if (this.bounds.maxEntries !== bounds.maxEntries || this.bounds.maxBytes !== bounds.maxBytes) {
        const which = this.bounds.maxEntries !== bounds.maxEntries ? "maxEntries" : "maxBytes";
        throw optionError(which, `of scope "${this.label}" was already set to ${String(this.bounds[which])}; a scope has one L1 bound`);
      }
      return;
    }
    const old = this.part;
    const part = newPartition(old, bounds);
    this.bounds = bounds;
    for (const ns of this.subtree()) {
      if (ns.part !== old) continue;
      old.release(ns);
      ns.part = part;
      part.adopt(ns);
    }
  }
}

function newPartition(parent: L1Partition, bounds: L1Bounds): L1Partition {
  return new L1Partition(bounds.maxEntries ?? parent.maxEntries, bounds.maxBytes ?? (parent.maxBytes < Infinity ? parent.maxBytes : undefined));
}
