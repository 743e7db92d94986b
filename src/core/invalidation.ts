import type { BusOp } from "../bus/codec.js";
import type { PeerHandlers } from "../bus/link.js";
import type { L1Partition } from "../l1/partition.js";
import type { Reporter } from "../telemetry/reporter.js";
import type { Fenced } from "./flight.js";
import type { Namespace } from "./namespace.js";

/**
 * Every invalidation of one key goes through here: its in-flight load and L2 read are fenced and
 * detached (`gen`: the L2 generation of the write that replaced the value, which they may still
 * take from L2), its cooldown and throttle end, and with `drop` its L1 entry goes. True when an
 * entry was dropped.
 */
export function invalidateKey(ns: Namespace, key: string, drop: boolean, gen?: string): boolean {
  const f = ns.flights?.get(key);
  if (f !== undefined) {
    f.fence(gen);
    ns.flights!.delete(key);
  }
  const peek = ns.peeks?.get(key);
  if (peek !== undefined) {
    peek.fence(gen);
    ns.peeks!.delete(key);
  }
  fenceBulkReads(ns, key);
  ns.throttles?.delete(key);
  ns.cooldowns?.delete(key);
  const dropped = drop && ns.part.delete(ns, key);
  ns.settle();
  return dropped;
}

/** Records an invalidation of `key` for the bulk reads running in its scope (see `BulkRead`). */
function fenceBulkReads(ns: Namespace, key: string): void {
  if (ns.bulkReads !== undefined) (ns.keyFences ??= new Map()).set(key, ++ns.fenceSeq);
}

/** Fences and detaches everything in flight in a scope and its nested scopes; clears their L1 entries when `drop`. */
export function invalidateScope(ns: Namespace, drop: boolean): number {
  let dropped = 0;
  for (const n of ns.subtree()) {
    for (const map of [n.flights, n.peeks] as (Map<string, Fenced> | undefined)[]) {
      if (map === undefined) continue;
      for (const op of map.values()) op.fence();
      map.clear();
    }
    if (n.bulkReads !== undefined) for (const b of n.bulkReads) b.all = true;
    n.throttles = undefined;
    n.cooldowns = undefined;
    if (drop) dropped += n.part.clearOwner(n);
  }
  return dropped;
}

/**
 * A `removeByTag` of `tags` in one scope (exactly that scope: tags are per scope), here: the L1
 * entries carrying them go (their keys invalidated as by `remove`, which fences those keys'
 * flights), and while anything is in flight the tags are fenced from sequence number `seq` on: a
 * load or L2 read that started before (`Fenced.tagSeq` < `seq`) never writes a value carrying them.
 * Returns how many entries were dropped.
 */
export function invalidateTags(ns: Namespace, tags: readonly string[], seq: number): number {
  let dropped = 0;
  // Everything running here, detached or not, bulk reads included (see `Namespace.running`), must see the fence.
  if (ns.running > 0) {
    const fences = (ns.tagFences ??= new Map());
    for (const t of tags) fences.set(t, seq);
  }
  // Loads that will write a value carrying one of the tags (their call named it) are fenced and
  // detached, as by `remove`: callers arriving from now on start a new load rather than join one
  // that read the source before the invalidation. Loads that name no tags cannot be told apart in
  // a scope whose loaders set tags themselves: there they are fenced and detached too. L2 reads of
  // `get` (whose tags are unknown until they answer) likewise. Whatever is detached is fenced: once
  // out of the maps, a later invalidation of its key could not reach it.
  const flights = ns.flights;
  if (flights !== undefined) {
    for (const [key, f] of [...flights]) {
      const declared = f.policy.tags;
      if (declared !== undefined ? declared.some((t) => tags.includes(t)) : ns.lateTags) {
        f.fence();
        flights.delete(key);
      }
    }
  }
  const peeks = ns.peeks;
  if (peeks !== undefined) {
    for (const peek of peeks.values()) peek.fence();
    peeks.clear();
  }
  // Bulk reads stand for the loads of their keys: fenced as those loads would be.
  if (ns.bulkReads !== undefined) {
    for (const b of ns.bulkReads) if (b.tags !== undefined ? b.tags.some((t) => tags.includes(t)) : ns.lateTags) b.all = true;
  }
  for (const t of tags) {
    const keys = ns.tagIndex?.get(t);
    if (keys === undefined) continue;
    for (const key of [...keys]) if (invalidateKey(ns, key, true)) dropped++;
  }
  ns.settle();
  return dropped;
}

/** Whether a value carrying `tags` was tag-invalidated after an operation started at sequence number `since`. */
export function tagFenced(ns: Namespace, tags: readonly string[] | undefined, since: number): boolean {
  const fences = ns.tagFences;
  if (fences === undefined || tags === undefined) return false;
  for (const t of tags) if ((fences.get(t) ?? -1) > since) return true;
  return false;
}

/** The L1 partitions of a scope and its nested scopes. */
export function partitionsOf(root: Namespace): Set<L1Partition> {
  const parts = new Set<L1Partition>();
  for (const ns of root.subtree()) parts.add(ns.part);
  return parts;
}

/**
 * What peers tell this instance, through the bus facade: their invalidations, and the bus's own
 * gaps. One handler per operation; each reports what it dropped.
 */
export function peerHandlers(root: Namespace, report: Reporter, nextTagSeq: () => number): PeerHandlers {
  const reported = (op: BusOp, scope: string[], keys: string[], dropped: number, from: string): void =>
    report.peerInvalidation({ op, scope: scope.join("/"), keys, dropped, from });
  return {
    onRemove(scope, keys, from, gen) {
      const ns = root.find(scope);
      let dropped = 0;
      if (ns !== undefined) for (const key of keys) if (invalidateKey(ns, key, true, gen)) dropped++;
      reported("remove", scope, keys, dropped, from);
    },
    /** A peer's load wrote a newer value to L2: drop the L1 copies (loads in flight are not invalidated). */
    onUpdate(scope, keys, from, gen) {
      const ns = root.find(scope);
      let dropped = 0;
      if (ns !== undefined) {
        for (const key of keys) {
          // A get reading L2 may only fill L1 with this newer write, not with what it read before.
          const peek = ns.peeks?.get(key);
          if (peek !== undefined) {
            peek.fence(gen);
            ns.peeks!.delete(key);
          }
          fenceBulkReads(ns, key);
          if (ns.part.delete(ns, key)) dropped++;
          // Loads waiting for the lease holder's value: it is in L2 now.
          const waits = ns.leaseWaits?.get(key);
          if (waits !== undefined) for (const wake of [...waits]) wake();
        }
      }
      reported("update", scope, keys, dropped, from);
    },
    onTag(scope, tags, from) {
      const ns = root.find(scope);
      reported("tag", scope, tags, ns === undefined ? 0 : invalidateTags(ns, tags, nextTagSeq()), from);
    },
    onClear(scope, from) {
      const ns = root.find(scope);
      reported("clear", scope, [], ns === undefined ? 0 : invalidateScope(ns, true), from);
    },
    onDisconnect() {
      report.fact("busDisconnect", {});
    },
    /** A durable bus is back and delivered what it missed: nothing to repair. */
    onCaughtUp() {
      report.fact("busCaughtUp", {});
    },
    /**
     * The bus hears again after a gap: invalidations sent in the gap may have been missed. While it
     * was deaf, L1 kept serving (that is what it is for when Redis is down); now entries written
     * before are no longer served as fresh or stale — the next read revalidates (L2, then the
     * loader), keeping them only as fail-safe fallbacks — and loads in flight will not write back.
     */
    onReconnect() {
      invalidateScope(root, false);
      let entries = 0;
      for (const part of partitionsOf(root)) entries += part.markAllRevalidate();
      report.fact("busReconnect", { entries });
    },
  };
}
