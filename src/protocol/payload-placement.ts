/**
 * Zero-copy WRITEs, the decoder's side: where a large WRITE's payload is
 * received instead of the decoder's buffer (`PlacementTargets`, offered per
 * WRITE header by a `PlacementProvider`), and the cursor that tracks how
 * much of it has arrived (`Placement`). The decoder (./decoder.ts) asks the
 * provider, fills the targets from bytes it already holds, and hands the
 * socket the unfilled part of the current target to read into
 * (`unfilledWindow`).
 */
import type { ByteQueue } from './byte-queue.js';
import type { RequestFrame } from './frames.js';

/** A payload being received into its targets: the cursor in them. */
export interface Placement {
  readonly targets: PlacementTargets;
  /** Index of the target being filled, and the offset inside it. */
  ti: number;
  at: number;
  /** Payload bytes still to arrive. */
  left: number;
}

/**
 * Where a placed payload is received: views, in order, exactly the
 * payload's length in total. `commit`, if present, travels with the
 * finished frame (`RequestFrame.commitPlacement`): whoever answers the
 * request calls it to apply the received bytes. A payload that never
 * completes never reaches a frame, so it is never committed.
 */
export interface PlacementTargets extends ReadonlyArray<Buffer> {
  readonly commit?: () => void | PromiseLike<void>;
}

/**
 * Asked once per WRITE header whose payload is at least `PLACE_MIN` bytes:
 * return memory to receive the payload in (`PlacementTargets`), or null to
 * buffer it as usual. The frame has no payload yet. The provider decides
 * (validation, backend support).
 */
export type PlacementProvider = (frame: RequestFrame) => PlacementTargets | null;

/** Payloads at least this long may be placed straight into storage. */
export const PLACE_MIN = 64 * 1024;

/** `n` more payload bytes are in the targets: move the cursor past them. */
export function advancePlacement(p: Placement, n: number): void {
  p.left -= n;
  p.at += n;
  while (p.ti < p.targets.length && p.at >= p.targets[p.ti]!.length && p.left > 0) {
    p.at -= p.targets[p.ti]!.length;
    p.ti++;
  }
}

/** Copy bytes buffered in `queue` into the placement targets (as many as the payload still needs). */
export function fillPlacement(p: Placement, queue: ByteQueue): void {
  while (p.left > 0 && queue.length > 0) {
    const t = p.targets[p.ti]!;
    advancePlacement(p, queue.copyInto(t, p.at, Math.min(p.left, t.length - p.at)));
  }
}

/** The unfilled part of the current target, never more than the payload still to come. */
export function unfilledWindow(p: Placement): Buffer {
  const t = p.targets[p.ti]!;
  return t.subarray(p.at, p.at + Math.min(p.left, t.length - p.at));
}
