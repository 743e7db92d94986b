/**
 * Switches that bring back known, fixed defects — for the chaos checker's sabotage runs only
 * (`npm run chaos -- --sabotage …`), which must show that the checker catches them. Not exported
 * from the package; nothing in the library sets them.
 */
export const sabotage = {
  /**
   * Issue [5] point 1: callers arriving after a flight answered early with a stale value join it
   * and get that stale value, even once it is past `ttl + maxStale` (the old behaviour).
   */
  staleJoin: false,
};
