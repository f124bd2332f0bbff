/**
 * Byte accounting for reusable socket read slabs (`transport/socket.ts`).
 *
 * A read slab may be reused only when every byte read into it is dead:
 * parsed (a request header), skipped, copied out, or a WRITE payload piece
 * that a payload-copying backend has stored and that the server released.
 * The decoder and the backend path report dead bytes here; a byte that is
 * never reported (a view handed to user code, a small payload kept by
 * reference) keeps its slab out of reuse forever, and it is simply garbage
 * collected as before. Reporting a byte twice would be a bug: callers
 * report each consumed range exactly once.
 */
export interface SlabAccount {
  /** Bytes read into the slab so far. */
  handed: number;
  /** Bytes reported dead. */
  done: number;
  /** No more reads go into the slab; it is free once done === handed. */
  retired: boolean;
  onFree: (() => void) | null;
}

const accounts = new WeakMap<ArrayBufferLike, SlabAccount>();

export function trackSlab(buffer: ArrayBufferLike, onFree: () => void): SlabAccount {
  const a: SlabAccount = { handed: 0, done: 0, retired: false, onFree };
  accounts.set(buffer, a);
  return a;
}

/** Report n bytes of `buffer` (any range of it) dead. No-op for untracked memory. */
export function releaseBytes(buffer: ArrayBufferLike, n: number): void {
  const a = accounts.get(buffer);
  if (a === undefined) return;
  a.done += n;
  if (a.retired && a.done === a.handed) freeSlab(buffer, a);
}

/** Mark a slab as taking no more reads; frees it at once if everything in it is dead. */
export function retireSlab(buffer: ArrayBufferLike, a: SlabAccount): void {
  a.retired = true;
  if (a.done === a.handed) freeSlab(buffer, a);
}

function freeSlab(buffer: ArrayBufferLike, a: SlabAccount): void {
  accounts.delete(buffer);
  const f = a.onFree;
  a.onFree = null;
  if (f) f();
}

/** Marks a backend whose write/writev copies the payload before returning (synchronously). */
export const kCopiesPayload: unique symbol = Symbol('nbd-engine.copiesPayload');
