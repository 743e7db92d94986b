/**
 * L1: a bounded in-process store with SIEVE eviction (Zhang et al., NSDI '24).
 *
 * Why SIEVE and not LRU: a hit only sets a "visited" bit — no list relinking — so the hit path
 * writes one byte, and on skewed (Zipf-like) workloads it keeps more of the hot set than LRU
 * (bench/, scenario 4 measures both).
 *
 * Layout: one slot per entry, its fields in parallel arrays (struct of arrays), so an entry costs
 * a few array cells instead of an object with its own header. Keys live in the owning scope's
 * `Map<key, slot>`, so a scoped lookup needs no string concatenation.
 *
 * Times: `born` (write time) and `fresh` (end of the fresh window) are absolute float64 values, so
 * an entry's write time compares exactly with its L2 record's. The stale and fail-safe window
 * lengths are float32 milliseconds: exact for every whole-second duration up to 37 hours (and
 * every whole-minute one up to 6 days); longer ones round by a few milliseconds at most.
 */

const NIL = 0xffffffff;

/** Bit 0: read since the SIEVE hand last passed. */
export const VISITED = 1;
/** Bit 1: written before a bus gap — not served as fresh or stale any more, only as a fail-safe fallback. */
export const REVALIDATE = 2;

/** A key space whose entries live in a partition: a scope. */
export interface SlotOwner {
  readonly slots: Map<string, number>;
  /**
   * Index of this owner in its partition's owner table while it holds slots there (set by
   * `adopt`); -1 while it holds none. Ids of owners that hold nothing any more are reused.
   */
  ownerId: number;
  /** Called when the owner is about to get its first slot (before the partition makes room for it). */
  occupied?(): void;
  /** Called when the owner's last slot goes (eviction, delete, clear), once the partition is consistent again. */
  vacated?(): void;
  /** Called when a tagged entry of the owner goes or is rewritten (eviction, delete, clear, write): its tags index forgets it. */
  untag?(key: string, tags: readonly string[]): void;
}

/** The windows of one entry, as written. */
export interface EntryTimes {
  /** Write time. */
  born: number;
  /** Absolute end of the fresh window (`born + ttl`). */
  fresh: number;
  /** Length of the background stale window after `fresh`. */
  maxStale: number;
  /** Length of the fail-safe window after `fresh`. */
  failSafe: number;
}

export class L1Partition {
  readonly maxEntries: number;
  readonly maxBytes: number;
  size = 0;
  bytes = 0;
  evictions = 0;

  keys: (string | undefined)[] = [];
  values: unknown[] = [];
  /** Tags of each slot (undefined for an untagged one, which is most): what `removeByTag` finds through its scope's index. */
  tags: (readonly string[] | undefined)[] = [];
  born: Float64Array;
  fresh: Float64Array;
  maxStale: Float32Array;
  failSafe: Float32Array;
  flags: Uint8Array;
  sizes: Float64Array | undefined;
  /** Only allocated once a second scope shares this partition. */
  ownerIds: Uint32Array | undefined;
  /** Toward the head (newer). */
  prev: Uint32Array;
  /** Toward the tail (older); also chains the free list. */
  next: Uint32Array;

  /** Owners holding at least one slot here, by id; a hole is a free id (listed in `#freeIds`). */
  #owners: (SlotOwner | undefined)[] = [];
  #freeIds: number[] = [];
  /** The owner a `write` is making room for: losing its last slot then does not release it. */
  #writer: SlotOwner | undefined = undefined;
  #head = NIL;
  #tail = NIL;
  #hand = NIL;
  #free = NIL;
  #used = 0;
  #cap: number;

  constructor(maxEntries: number, maxBytes: number | undefined) {
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes ?? Infinity;
    const cap = (this.#cap = Math.min(maxEntries, 64));
    this.born = new Float64Array(cap);
    this.fresh = new Float64Array(cap);
    this.maxStale = new Float32Array(cap);
    this.failSafe = new Float32Array(cap);
    this.flags = new Uint8Array(cap);
    this.sizes = this.maxBytes < Infinity ? new Float64Array(cap) : undefined;
    this.prev = new Uint32Array(cap);
    this.next = new Uint32Array(cap);
  }

  /** Owners holding slots here now (the size of the owner table without its free ids). */
  get owners(): number {
    return this.#owners.length - this.#freeIds.length;
  }

  /**
   * Registers a scope whose keys will live here. `write` does it by itself when an owner gets its
   * first slot, and an owner whose last slot goes is released again (its id is reused), so the
   * owner table holds only owners that hold entries.
   */
  adopt(owner: SlotOwner): void {
    if (this.#isOwner(owner)) return;
    const id = this.#freeIds.length > 0 ? this.#freeIds.pop()! : this.#owners.length;
    this.#owners[id] = owner;
    owner.ownerId = id;
    // Until a second id is handed out, every slot belongs to owner 0 and needs no owner cell.
    if (id > 0 && this.ownerIds === undefined) this.ownerIds = new Uint32Array(this.#cap);
  }

  /** Forgets a scope (its entries are dropped), so a partition can be handed over. */
  release(owner: SlotOwner): void {
    if (owner.slots.size > 0) this.clearOwner(owner);
    else if (this.#isOwner(owner)) this.#vacate(owner, false);
  }

  #isOwner(owner: SlotOwner): boolean {
    return owner.ownerId >= 0 && this.#owners[owner.ownerId] === owner;
  }

  /** Frees the id of an owner that holds no slot any more, and tells it (`notify`). */
  #vacate(owner: SlotOwner, notify: boolean): void {
    this.#owners[owner.ownerId] = undefined;
    this.#freeIds.push(owner.ownerId);
    owner.ownerId = -1;
    if (notify) owner.vacated?.();
  }

  /**
   * Writes an entry; returns its slot, or -1 when it is larger than `maxBytes` on its own (it is
   * then not stored, and any older value of the key is dropped).
   */
  write(owner: SlotOwner, key: string, value: unknown, t: EntryTimes, bytes: number, tags?: readonly string[]): number {
    let idx = owner.slots.get(key);
    if (bytes > this.maxBytes) {
      if (idx !== undefined) this.#unlink(idx, true);
      return -1;
    }
    if (idx === undefined) {
      if (!this.#isOwner(owner)) {
        owner.occupied?.();
        this.adopt(owner);
      }
      // Make room first, so the new entry itself is never the one evicted (nor its owner released
      // when the room is made from its own last entry).
      this.#writer = owner;
      if (this.size >= this.maxEntries) this.#evictOne(NIL);
      while (this.sizes !== undefined && this.bytes + bytes > this.maxBytes && this.size > 0) this.#evictOne(NIL);
      this.#writer = undefined;
      idx = this.#alloc();
      this.keys[idx] = key;
      if (this.ownerIds !== undefined) this.ownerIds[idx] = owner.ownerId;
      this.flags[idx] = 0;
      this.#linkHead(idx);
      owner.slots.set(key, idx);
      this.size++;
    } else {
      this.flags[idx] = VISITED;
      if (this.sizes !== undefined) {
        while (this.bytes - this.sizes[idx]! + bytes > this.maxBytes && this.size > 1) this.#evictOne(idx);
      }
    }
    this.values[idx] = value;
    const old = this.tags[idx];
    if (old !== undefined || tags !== undefined) {
      if (old !== undefined) owner.untag?.(key, old);
      this.tags[idx] = tags;
    }
    this.born[idx] = t.born;
    this.fresh[idx] = t.fresh;
    this.maxStale[idx] = t.maxStale;
    this.failSafe[idx] = t.failSafe;
    if (this.sizes !== undefined) {
      this.bytes += bytes - this.sizes[idx]!;
      this.sizes[idx] = bytes;
    }
    return idx;
  }

  /** Removes a key; true when it was there. */
  delete(owner: SlotOwner, key: string): boolean {
    const idx = owner.slots.get(key);
    if (idx === undefined) return false;
    this.#unlink(idx, true);
    return true;
  }

  /** Removes one slot found through its owner. */
  deleteSlot(idx: number): void {
    this.#unlink(idx, true);
  }

  /** Removes every entry of one owner; returns how many there were. */
  clearOwner(owner: SlotOwner): number {
    const n = owner.slots.size;
    if (n === 0) return 0;
    for (const [key, idx] of owner.slots) {
      const tags = this.tags[idx];
      if (tags !== undefined) owner.untag?.(key, tags);
      this.#unlink(idx, false);
    }
    owner.slots.clear();
    if (this.#isOwner(owner)) this.#vacate(owner, true);
    return n;
  }

  /** Marks every entry as needing revalidation (after a bus gap); returns how many. */
  markAllRevalidate(): number {
    let n = 0;
    for (let i = this.#head; i !== NIL; i = this.next[i]!) {
      this.flags[i]! |= REVALIDATE;
      n++;
    }
    return n;
  }

  #alloc(): number {
    if (this.#free !== NIL) {
      const idx = this.#free;
      this.#free = this.next[idx]!;
      return idx;
    }
    if (this.#used === this.#cap) this.#grow();
    return this.#used++;
  }

  #grow(): void {
    const cap = Math.min(this.maxEntries, this.#cap * 2);
    this.born = grown(this.born, new Float64Array(cap));
    this.fresh = grown(this.fresh, new Float64Array(cap));
    this.maxStale = grown(this.maxStale, new Float32Array(cap));
    this.failSafe = grown(this.failSafe, new Float32Array(cap));
    this.flags = grown(this.flags, new Uint8Array(cap));
    if (this.sizes) this.sizes = grown(this.sizes, new Float64Array(cap));
    if (this.ownerIds) this.ownerIds = grown(this.ownerIds, new Uint32Array(cap));
    this.prev = grown(this.prev, new Uint32Array(cap));
    this.next = grown(this.next, new Uint32Array(cap));
    this.#cap = cap;
  }

  #linkHead(idx: number): void {
    this.prev[idx] = NIL;
    this.next[idx] = this.#head;
    if (this.#head !== NIL) this.prev[this.#head] = idx;
    this.#head = idx;
    if (this.#tail === NIL) this.#tail = idx;
  }

  /**
   * SIEVE: the hand walks from the tail toward the head, sparing (and un-marking) visited entries,
   * and evicts the first unvisited one — never `keep` (the entry being rewritten).
   */
  #evictOne(keep: number): void {
    let i = this.#hand !== NIL ? this.#hand : this.#tail;
    if (i === NIL) return;
    while ((this.flags[i]! & VISITED) !== 0 || i === keep) {
      this.flags[i]! &= ~VISITED;
      i = this.prev[i]!;
      if (i === NIL) i = this.#tail;
    }
    this.#hand = this.prev[i]!;
    this.evictions++;
    this.#unlink(i, true);
  }

  #unlink(idx: number, fromOwner: boolean): void {
    const p = this.prev[idx]!;
    const n = this.next[idx]!;
    if (this.#hand === idx) this.#hand = p;
    if (p !== NIL) this.next[p] = n;
    else this.#head = n;
    if (n !== NIL) this.prev[n] = p;
    else this.#tail = p;
    let emptied: SlotOwner | undefined;
    if (fromOwner) {
      const owner = this.ownerIds === undefined ? this.#owners[0]! : this.#owners[this.ownerIds[idx]!]!;
      const tags = this.tags[idx];
      if (tags !== undefined) owner.untag?.(this.keys[idx]!, tags);
      owner.slots.delete(this.keys[idx]!);
      if (owner.slots.size === 0 && owner !== this.#writer) emptied = owner;
    }
    this.keys[idx] = undefined;
    this.values[idx] = undefined;
    this.tags[idx] = undefined;
    if (this.sizes !== undefined) {
      this.bytes -= this.sizes[idx]!;
      this.sizes[idx] = 0;
    }
    this.next[idx] = this.#free;
    this.#free = idx;
    this.size--;
    if (emptied !== undefined) this.#vacate(emptied, true);
  }
}

function grown<T extends Float64Array | Float32Array | Uint32Array | Uint8Array>(old: T, next: T): T {
  next.set(old as never);
  return next;
}
