/**
 * Hidden classes of per-call objects, kept alive for the life of the process.
 *
 * V8 keeps an object's hidden class (its map) alive through the objects
 * that have it: the transitions that lead to it from the constructor's
 * initial map are weak. A class whose instances all die between two major
 * collections (one made per call and dropped at its end: a GUP collector,
 * a PFN batch, an operation context) loses its map at the next major GC,
 * and every optimized function that embedded that map is deoptimized
 * ("weak objects") and runs in the slower tiers until it has been called
 * often enough to be optimized again: in a daemon, a thousand calls or more
 * after every major GC. One small instance of each such class, kept here,
 * keeps the maps and so the optimized code.
 *
 * A kept instance must have the class's current map. When a field's
 * representation is generalized (a small-integer field is handed a boxed
 * number, as address arithmetic produces), objects made from then on get a
 * new map and the old one is deprecated; so the hot entry points call
 * shapesTick once per call, and every SHAPES_REFRESH-th call makes the kept
 * instances afresh.
 */
const makers: (() => object)[] = [];
const kept: object[] = [];
let ticks = 0;
let refreshing = false;
const SHAPES_REFRESH = 256;

/** Keep an instance made by `make` (as the calls make them, but small) for the life of the process. */
export function keepShape(make: () => object): void {
  makers.push(make);
  kept.push(make());
}

/** One call of a hot entry point (see the header). */
export function shapesTick(): void {
  if (++ticks % SHAPES_REFRESH !== 0 || refreshing) return;
  refreshing = true; // the makers run the constructors that tick
  try {
    for (let i = 0; i < makers.length; i++) kept[i] = makers[i]!();
  } finally {
    refreshing = false;
  }
}
