import { L1Partition, type SlotOwner } from "../l1/partition.js";
import { optionError } from "../shared/errors.js";
import type { L1Bounds } from "../api/options.js";
import type { BulkRead, Flight, Peek } from "./flight.js";

/** Key fences (see `keyFences`) below which they are not pruned while bulk reads run. */
const MIN_FENCE_PRUNE = 1024;

/** Attached scopes (the root not counted) below which no sweep runs. */
const MIN_SWEEP = 256;

/** What a collected namespace leaves behind: its entry among its parent's detached children. */
interface Ghost {
  parent: Namespace;
  name: string;
}

/** State shared by every namespace of one cache. */
class Tree {
  /** Scopes attached now (reachable from the root), the root not counted. */
  attached = 0;
  /** The attached count at which the next sweep runs. */
  sweepAt = MIN_SWEEP;
  /** Tells expired cooldowns and throttles apart; without it every stamp counts as held. */
  clock: { now(): number } | undefined;
  /** Drops a collected namespace's entry from its parent's detached children. */
  readonly registry = new FinalizationRegistry<Ghost>((g) => g.parent.forget(g.name));
  constructor(readonly root: Namespace) {}
}

/**
 * The shared state of one scope path: its L1 keys, its in-flight loads and its cooldowns. Every
 * view of the same scope (and every cached function in it) uses the same `Namespace`, so single
 * flight and invalidation are keyed by the full key, never by the view object.
 *
 * Reclamation. A scope that holds nothing — no L1 entry, no load or L2 read in flight, no live
 * cooldown or throttle, no attached child scope — is detached from its parent's `children`, so
 * scopes named after tenants, users, … do not pile up. A detached namespace is not lost: its
 * parent keeps a weak reference to it (`#detached`) for as long as anything (a view, a cached
 * function, a running operation, a nested namespace) still holds it, and `child()` finds it there
 * before creating a new one. So there is never more than one namespace object per path, and the
 * object a view or the engine holds is always *the* namespace of its path: a detached one is the
 * same as an attached empty one, and whatever stores something in it (an L1 entry through
 * `occupied`, a flight, an L2 read, a cooldown or throttle through the setters below) attaches it
 * again, its parents first. Once nothing holds a detached namespace it is garbage collected and
 * its weak entry removed (`Tree.registry`), bound and all.
 *
 * Invariants: attached ⇒ parent attached; holds something ⇒ attached; every live namespace's
 * `part` is its own partition when it has `bounds`, else its parent's (detached ones included).
 */
export class Namespace implements SlotOwner {
  readonly name: string;
  readonly parent: Namespace | undefined;
  readonly path: readonly string[];
  /** Scope path joined with "/", for events and logs ("" for the root). */
  readonly label: string;
  readonly slots = new Map<string, number>();
  ownerId = -1;
  part: L1Partition;
  /** The bounds this scope declared for an L1 partition of its own (undefined: shares its parent's). */
  bounds: L1Bounds | undefined;
  /** Attached child scopes (those reachable from the root); undefined when there is none. */
  children: Map<string, Namespace> | undefined;
  /** Reachable from the root through `children` (the root always is). */
  attached: boolean;
  /** L2 key prefix, computed on first use by the remote layer. */
  l2Prefix: string | undefined;
  readonly #tree: Tree;
  /** The weak reference its parent keeps while it is detached (one per namespace, reused). */
  #weak: WeakRef<Namespace> | undefined;
  /** Detached child scopes that may still be in use, weakly. */
  #detached: Map<string, WeakRef<Namespace>> | undefined;
  #flights: Map<string, Flight> | undefined;
  #peeks: Map<string, Peek> | undefined;
  #bulkReads: Set<BulkRead> | undefined;
  #cooldowns: Map<string, number> | undefined;
  #throttles: Map<string, number> | undefined;

  constructor(parent: Namespace | undefined, name: string, part: L1Partition, bounds?: L1Bounds) {
    this.parent = parent;
    this.name = name;
    this.path = parent ? [...parent.path, name] : [];
    this.label = this.path.join("/");
    this.part = part;
    this.bounds = bounds;
    if (parent === undefined) {
      this.#tree = new Tree(this);
      this.attached = true;
    } else {
      this.#tree = parent.#tree;
      this.attached = false;
      this.#tree.registry.register(this, { parent, name });
    }
  }

  // The engine creates these maps with `??=` (which calls the setter) and empties them; storing a
  // map attaches the scope, dropping one (a clear) may let it go.

  /** In-flight loads and refreshes by key. */
  get flights(): Map<string, Flight> | undefined {
    return this.#flights;
  }
  set flights(map: Map<string, Flight> | undefined) {
    this.#flights = map;
    this.#stored(map);
  }

  /** In-flight L2 reads of `get` by key. */
  get peeks(): Map<string, Peek> | undefined {
    return this.#peeks;
  }
  set peeks(map: Map<string, Peek> | undefined) {
    this.#peeks = map;
    this.#stored(map);
  }

  /** Multi-key L2 reads of `getOrSetMany` running here. */
  get bulkReads(): Set<BulkRead> | undefined {
    return this.#bulkReads;
  }
  set bulkReads(set: Set<BulkRead> | undefined) {
    this.#bulkReads = set;
    this.#stored(set);
  }

  /**
   * Key → fence sequence number of its latest invalidation here, kept only while bulk reads run
   * (`BulkRead.fenced`); `fenceSeq` counts them.
   */
  keyFences: Map<string, number> | undefined;
  fenceSeq = 0;
  /** Size of `keyFences` past which fences older than every bulk read still running are dropped. */
  #pruneFencesAt = MIN_FENCE_PRUNE;

  /** A bulk read ends: the fences it needed go when nothing else needs them. */
  endBulkRead(bulk: BulkRead): void {
    const running = this.#bulkReads;
    if (running === undefined || !running.delete(bulk)) return;
    const fences = this.keyFences;
    if (running.size === 0) {
      this.keyFences = undefined;
      this.#pruneFencesAt = MIN_FENCE_PRUNE;
      this.bulkReads = undefined;
    } else if (fences !== undefined && fences.size >= this.#pruneFencesAt) {
      // Bulk reads overlapping for ever must not let the fences grow for ever.
      let oldest = Infinity;
      for (const b of running) oldest = Math.min(oldest, b.since);
      for (const [key, seq] of fences) if (seq <= oldest) fences.delete(key);
      this.#pruneFencesAt = Math.max(MIN_FENCE_PRUNE, fences.size * 2);
    }
  }

  /** Key → time until which background refreshes are not started (after a failed refresh). */
  get cooldowns(): Map<string, number> | undefined {
    return this.#cooldowns;
  }
  set cooldowns(map: Map<string, number> | undefined) {
    this.#cooldowns = map;
    this.#stored(map);
  }

  /** Key → time until which a failed load's fail-safe value is served without calling the loader. */
  get throttles(): Map<string, number> | undefined {
    return this.#throttles;
  }
  set throttles(map: Map<string, number> | undefined) {
    this.#throttles = map;
    this.#stored(map);
  }

  /** Tag → keys of this scope's L1 entries carrying it (kept by `L1Partition` through `untag`). */
  tagIndex: Map<string, Set<string>> | undefined;
  /**
   * Tag → the engine's tag sequence number of its latest `removeByTag` here (local or a peer's),
   * kept only while something is running (`running`): a load or L2 read that started before it (a
   * smaller sequence number) must not write a value carrying that tag.
   */
  tagFences: Map<string, number> | undefined;
  /**
   * Loads, L2 reads of `get`, bulk L2 reads and tagged `set`s of this scope still running — detached ones
   * included. A load or read detached by an invalidation that came with the writer's generation
   * (a peer's `set`) may still put that very record in L1 when its answer comes: a `removeByTag`
   * meanwhile must fence it too, though it is in no map any more. While this is above 0 the scope
   * holds something (stays attached, so a peer's "tag" message finds it).
   */
  running = 0;
  /** Loads waiting for another instance's lease (distributed single flight), by key: wake them when its value comes. */
  leaseWaits: Map<string, Set<() => void>> | undefined;
  /** A loader here named tags of its own (`setOptions`): loads read the scope's tag epoch with their key. */
  lateTags = false;

  /** An operation that tag fences must reach has started (see `running`). */
  started(): void {
    this.running++;
    this.attach();
  }

  /** That operation has ended (nothing more to write): with nothing left running, tag fences stop nobody and go. */
  ended(): void {
    if (--this.running === 0) this.tagFences = undefined;
    this.settle();
  }

  /** Records an L1 entry's tags in the index. */
  tag(key: string, tags: readonly string[]): void {
    const index = (this.tagIndex ??= new Map());
    for (const t of tags) {
      const keys = index.get(t);
      if (keys === undefined) index.set(t, new Set([key]));
      else keys.add(key);
    }
  }

  untag(key: string, tags: readonly string[]): void {
    const index = this.tagIndex;
    if (index === undefined) return;
    for (const t of tags) {
      const keys = index.get(t);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) index.delete(t);
    }
  }

  #stored(map: Map<string, unknown> | Set<unknown> | undefined): void {
    if (map !== undefined) this.attach();
    else this.settle();
  }

  /** The clock that tells expired cooldowns and throttles (set once, on the root, by the cache). */
  useClock(clock: { now(): number }): void {
    this.#tree.clock = clock;
  }

  /** Scopes attached now in this cache, the root not counted (for tests and diagnostics). */
  get attachedScopes(): number {
    return this.#tree.attached;
  }

  /** The child scope `name` (the one object for that path), created on first use; `bounds` give it an L1 partition of its own. */
  child(name: string, bounds: L1Bounds | undefined): Namespace {
    let ns = this.children?.get(name) ?? this.#detachedChild(name);
    if (ns === undefined) {
      const part = bounds ? newPartition(this.part, bounds) : this.part;
      // Born detached: it is attached when it first stores something.
      ns = new Namespace(this, name, part, bounds);
      (this.#detached ??= new Map()).set(name, (ns.#weak = new WeakRef(ns)));
    } else if (bounds) {
      ns.#declareBounds(bounds);
    }
    return ns;
  }

  #detachedChild(name: string): Namespace | undefined {
    const ref = this.#detached?.get(name);
    if (ref === undefined) return undefined;
    const ns = ref.deref();
    if (ns === undefined) this.forget(name);
    return ns;
  }

  /** Drops the weak entry of a detached child that was garbage collected (called by the registry). */
  forget(name: string): void {
    const map = this.#detached;
    const ref = map?.get(name);
    if (ref === undefined || ref.deref() !== undefined) return;
    map!.delete(name);
    if (map!.size === 0) this.#detached = undefined;
  }

  /** An existing, attached scope by path, or undefined (never creates one). A detached scope holds nothing. */
  find(path: readonly string[]): Namespace | undefined {
    let ns: Namespace | undefined = this;
    for (const name of path) {
      ns = ns.children?.get(name);
      if (ns === undefined) return undefined;
    }
    return ns;
  }

  /** This scope and every attached scope nested in it (detached ones hold nothing). */
  *subtree(): Generator<Namespace> {
    yield this;
    if (this.children) for (const c of this.children.values()) yield* c.subtree();
  }

  /** This scope and every live scope object nested in it, detached ones included. */
  *#family(): Generator<Namespace> {
    yield this;
    if (this.children) for (const c of [...this.children.values()]) yield* c.#family();
    if (this.#detached) {
      for (const ref of [...this.#detached.values()]) {
        const c = ref.deref();
        if (c !== undefined) yield* c.#family();
      }
    }
  }

  /** L1 (through `SlotOwner`): this scope is about to get its first entry in its partition. */
  occupied(): void {
    this.attach();
  }

  /** L1 (through `SlotOwner`): this scope's last entry went. */
  vacated(): void {
    this.settle();
  }

  /** Makes this scope reachable from the root again (its parents first). */
  attach(): void {
    if (this.attached) return;
    const tree = this.#tree;
    if (tree.attached >= tree.sweepAt) sweep(tree);
    const parent = this.parent!;
    parent.attach();
    if (parent.#detached?.get(this.name)?.deref() === this) {
      parent.#detached.delete(this.name);
      if (parent.#detached.size === 0) parent.#detached = undefined;
    }
    (parent.children ??= new Map()).set(this.name, this);
    this.attached = true;
    tree.attached++;
  }

  /**
   * Detaches this scope if it holds nothing any more (and then its parent, if that leaves it with
   * nothing). The engine calls it when a flight or an L2 read of the scope ends and after it
   * deletes cooldowns or throttles; L1 calls it (`vacated`) when the scope's last entry goes.
   * Cheap when the scope still holds something.
   */
  settle(): void {
    if (!this.attached || this.parent === undefined || this.#holds()) return;
    const parent = this.parent;
    const siblings = parent.children!;
    siblings.delete(this.name);
    if (siblings.size === 0) parent.children = undefined;
    (parent.#detached ??= new Map()).set(this.name, (this.#weak ??= new WeakRef(this)));
    this.attached = false;
    this.#tree.attached--;
    // All empty: dropped, so that storing into them again goes through the setters (and attaches).
    this.#flights = this.#peeks = this.#cooldowns = this.#throttles = undefined;
    this.#bulkReads = undefined;
    // An own partition leaves the sum `stats()` takes: its eviction count moves to the parent's.
    if (this.bounds !== undefined && this.part !== parent.part) {
      parent.part.evictions += this.part.evictions;
      this.part.evictions = 0;
    }
    parent.settle();
  }

  /** Whether this scope holds anything (expired cooldowns and throttles are dropped on the way). */
  #holds(): boolean {
    if (this.slots.size > 0 || this.children !== undefined || this.running > 0) return true;
    if ((this.#flights !== undefined && this.#flights.size > 0) || (this.#peeks !== undefined && this.#peeks.size > 0)) return true;
    if (this.#bulkReads !== undefined && this.#bulkReads.size > 0) return true;
    const now = this.#tree.clock?.now();
    return live(this.#cooldowns, now) || live(this.#throttles, now);
  }

  /**
   * A scope first used without bounds and later declared with some gets its own partition; its
   * L1 entries (only a cache) are dropped in the move. Two different declarations are an error —
   * as long as the scope exists: a bound belongs to the namespace object, which lives while it
   * holds something or something (a view, a cached function) still refers to it; once it was
   * reclaimed and collected, the next declaration starts afresh.
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
    // Detached scopes move too, so that a scope attached later finds its entries where its parent's are.
    const moving = [...this.#family()].filter((ns) => ns.part === old);
    for (const ns of moving) ns.part = part;
    // Dropping their entries may detach some of them (none is lost: each stays the one object of its path).
    for (const ns of moving) old.release(ns);
  }
}

/** True when the map holds a stamp that has not expired (expired ones are deleted); every stamp counts without a clock. */
function live(map: Map<string, number> | undefined, now: number | undefined): boolean {
  if (map === undefined || map.size === 0) return false;
  if (now === undefined) return true;
  for (const [key, until] of map) {
    if (until > now) return true;
    map.delete(key);
  }
  return false;
}

/**
 * Detaches every attached scope that holds nothing (deepest first). It catches scopes left
 * attached without a reason — one whose last flight ended where nobody called `settle()`, or
 * whose cooldowns have all expired since — and runs when the number of attached scopes has
 * doubled since the last sweep, so it costs O(1) per attach, amortized.
 */
function sweep(tree: Tree): void {
  const visit = (ns: Namespace): void => {
    if (ns.children) for (const c of [...ns.children.values()]) visit(c);
    ns.settle();
  };
  visit(tree.root);
  tree.sweepAt = Math.max(MIN_SWEEP, tree.attached * 2);
}

function newPartition(parent: L1Partition, bounds: L1Bounds): L1Partition {
  return new L1Partition(bounds.maxEntries ?? parent.maxEntries, bounds.maxBytes ?? (parent.maxBytes < Infinity ? parent.maxBytes : undefined));
}
