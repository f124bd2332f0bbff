/**
 * Small pieces backends, filters and the server share: a read result as one
 * buffer, zeroes written in chunks, a thenable test, a power-of-2 test,
 * per-key locks for read-modify-write, and a seeded generator for
 * reproducible test data and error injection.
 */
import type { ReadSegment } from '../api/backend.js';

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

/** Largest piece of zeroes written at once (1 MiB, as nbdkit emulates zeroing). */
const ZERO_CHUNK = 1 << 20;
let zeroChunk: Buffer | undefined;

/** Zero [offset, offset + length) through `write`, in pieces of at most 1 MiB of one shared, never-written buffer. */
export async function writeZeroChunks(write: (offset: number, data: Buffer) => unknown, offset: number, length: number): Promise<void> {
  zeroChunk ??= Buffer.alloc(ZERO_CHUNK);
  for (let at = 0; at < length; ) {
    const n = Math.min(ZERO_CHUNK, length - at);
    await write(offset + at, zeroChunk.subarray(0, n));
    at += n;
  }
}

/** A promise or any other thenable (what a backend call may return instead of a plain value). */
export function isThenable<T = unknown>(v: unknown): v is PromiseLike<T> {
  return v !== null && typeof v === 'object' && typeof (v as { then?: unknown }).then === 'function';
}

/** A positive safe integer that is a power of 2 (also above 2^32, where `n & (n - 1)` would truncate). */
export function isPowerOf2(n: number): boolean {
  if (!Number.isSafeInteger(n) || n <= 0) return false;
  while (n > 0x40000000) {
    if (n % 2 !== 0) return false;
    n /= 2;
  }
  return (n & (n - 1)) === 0;
}

/**
 * Locks keyed by number (a block, an object), so read-modify-write cycles on one block
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

/** mulberry32: a small, fast 32-bit generator (not cryptographic); each call gives the next unsigned 32-bit value. */
/**
 * The keys of `map` in [first, last], ascending. A range narrower than the map is probed key by key; a
 * wider one (a whole-export request over a sparse table) is read off the map's own keys, so the work
 * depends on what the map holds, not on the range.
 */
export function keysInRange(map: ReadonlyMap<number, unknown>, first: number, last: number): number[] {
  const out: number[] = [];
  if (last - first + 1 <= map.size) {
    for (let k = first; k <= last; k++) if (map.has(k)) out.push(k);
    return out;
  }
  for (const k of map.keys()) if (k >= first && k <= last) out.push(k);
  return out.sort((a, b) => a - b);
}

export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}
