/**
 * Small pieces the data-path filters share: turning a read result with
 * holes into one buffer, per-block locks for read-modify-write, and
 * parameter checks with errors that name the filter and the key.
 */
import type { ReadSegment } from '../api/backend.js';
import { ParamError } from '../plugins/params.js';

/** A backend's read result as one buffer of `length` bytes (holes become zeroes). */
export function readBuffer(result: Buffer | readonly ReadSegment[], length: number): Buffer {
  if (Buffer.isBuffer(result)) return result;
  if (result.length === 1 && 'data' in result[0]! && result[0].data.length === length) return result[0].data;
  const out = Buffer.alloc(length);
  let at = 0;
  for (const s of result) {
    if ('data' in s) {
      s.data.copy(out, at);
      at += s.data.length;
    } else at += s.hole;
  }
  return out;
}

export const isPowerOf2 = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Throw a ParamError unless `ok` (configuration mistakes name the filter and the key). */
export function check(ok: boolean, filter: string, message: string): void {
  if (!ok) throw new ParamError(`${filter}: ${message}`);
}

/**
 * Locks keyed by block number, so read-modify-write cycles on one block
 * run one after another: two unaligned writes to the same block (from
 * any connection) each see the other's result instead of one overwriting
 * the other with stale bytes. Blocks nobody waits on take no memory.
 */
export class BlockLocks {
  private readonly tails = new Map<number, Promise<void>>();

  /** Run `fn` holding block `key`'s lock. */
  async with<T>(key: number, fn: () => Promise<T> | T): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Run `fn` holding the locks of blocks first..last (taken in ascending order, so two callers cannot deadlock). */
  async withRange<T>(first: number, last: number, fn: () => Promise<T> | T): Promise<T> {
    if (first > last) return fn();
    return this.with(first, () => this.withRange(first + 1, last, fn));
  }
}

/**
 * A stateful filter object (its overlay, cache or window generation) serves
 * one export: the same object in two exports would mix their data. Returns
 * a check to call in `wrap`.
 */
export function oneExport(filter: string): (exportName: string) => void {
  let bound: string | undefined;
  return (exportName) => {
    bound ??= exportName;
    check(bound === exportName, filter, `this filter object already serves export "${bound}": make one per export (for "${exportName}")`);
  };
}
