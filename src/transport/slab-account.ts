/**
 * Byte accounting for reusable socket read slabs (`socket.ts`).
 *
 * A read slab may be reused only when every byte read into it is dead:
 * parsed (a request header), skipped, copied out, or a WRITE payload piece
 * that the server released — after the backend's `write` / `writev`
 * returned or its promise settled, or, for requests handed to the
 * application (`requests$`), once the request was answered. The decoder
 * reports the bytes it consumes through the callback it is given
 * (`FrameDecoder`'s `DeadBytes`, which is `releaseBytes` here); the server
 * reports payloads (`releaseRequestPayload`). A byte that is never reported
 * (a view handed to user code and never released) keeps its slab out of
 * reuse forever, and it is simply garbage collected. Reporting a byte twice
 * would be a bug: callers report each consumed range exactly once.
 */
import type { RequestFrame } from '../protocol/frames.js';
import { releasePayload } from '../protocol/request-payload.js';

export interface SlabAccount {
  /** Bytes read into the slab so far. */
  handed: number;
  /** Bytes reported dead. */
  done: number;
  /** No more reads go into the slab; it is free once done === handed. */
  retired: boolean;
  onFree: (() => void) | null;
}

/**
 * Process-wide counters, for tests and diagnostics: slabs allocated, slabs
 * whose every byte was reported dead (`freed`), and full-size slabs taken
 * again from a connection's free list instead of being allocated (`reused`).
 */
export const slabCounters = { allocated: 0, freed: 0, reused: 0 };

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

/**
 * Report a WRITE payload's bytes dead (its pieces, or its single view) once
 * nobody reads them any more. Call once per frame (`NbdRequest` guards
 * that); a payload copied out of several chunks is untracked memory: a no-op.
 */
export function releaseRequestPayload(frame: RequestFrame): void {
  releasePayload(frame, releaseBytes);
}

function freeSlab(buffer: ArrayBufferLike, a: SlabAccount): void {
  accounts.delete(buffer);
  slabCounters.freed++;
  const f = a.onFree;
  a.onFree = null;
  if (f) f();
}
