/**
 * The sparse-random backend (the shape of nbdkit-sparse-random-plugin):
 * runs of random data and runs of holes, like a virtual machine's disk, for
 * testing copying tools. Deterministic for a seed: the same bytes on every
 * read, in every process.
 *
 * The disk is 4 KiB blocks, each data or hole. Run lengths are drawn from
 * exponential distributions (memoryless, as a geometric run of blocks):
 * data runs average `runlength`, holes `runlength × (100 − percent) /
 * percent`, so about `percent`% of the disk is data. So that any offset can
 * be read without walking the disk from the start, the disk is cut into
 * segments of at least 64 MiB and at least 32 average run pairs; each
 * segment's runs are generated from (seed, segment number) on first use and
 * cached. Each data block is one random non-zero byte repeated (or, with
 * `randomContent`, random bytes from (seed, block number)).
 *
 * Writes check that they write what is already there (else EIO), so one
 * instance can be both the source and the destination of a copy; trim and
 * zero succeed only on holes. Not byte-identical to nbdkit's generator.
 */
import { STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Backend, ExtentsOptions } from '../api/backend.js';
import { NbdRequestError } from '../api/errors.js';
import type { Logger } from '../transport/logger.js';
import { mulberry32 } from '../plugins/common.js';

export interface SparseRandomOptions {
  /** Export size in bytes (required). */
  readonly size: number;
  /** Seed (an integer 0 … 2^53 − 1); default: a random one (logged by the plugin). */
  readonly seed?: number;
  /** Approximate percentage of the disk that is data, 0 … 100 (default 10). */
  readonly percent?: number;
  /** Average length of a data run in bytes (default 16 MiB; at least one 4 KiB block). */
  readonly runlength?: number;
  /** Every byte random instead of one random byte per block (default false). */
  readonly randomContent?: boolean;
  /** Cached segments of runs (default 64). */
  readonly cacheSegments?: number;
  /** Where a refused write is reported (one line each). */
  readonly logger?: Logger;
}

export interface SparseRandomBackend extends Backend {
  readonly size: number;
  readonly seed: number;
}

export const SPARSE_BLOCK = 4096;
const MIN_SEGMENT_BLOCKS = (64 * 1024 * 1024) / SPARSE_BLOCK;
const HOLE_ZERO = STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;

/** A 32-bit mix of three 32-bit words (murmur3's finaliser over a simple combination). */
function hash3(a: number, b: number, c: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b ^ 0xc2b2ae35, 0x27d4eb2f) ^ Math.imul(c ^ 0x165667b1, 0xcc9e2d51);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const hi32 = (n: number) => Math.floor(n / 2 ** 32) >>> 0;
const lo32 = (n: number) => n >>> 0;

/** One segment's runs: block numbers (from the segment's start) where the state flips, starting with `firstData`. */
interface Segment {
  readonly firstData: boolean;
  readonly flips: Float64Array;
}

export function sparseRandomBackend(options: SparseRandomOptions): SparseRandomBackend {
  const size = options.size;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`sparse-random: size must be a safe integer ≥ 0 (got ${size})`);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`sparse-random: seed must be an integer ≥ 0 (got ${seed})`);
  const percent = options.percent ?? 10;
  if (!(percent >= 0 && percent <= 100)) throw new RangeError(`sparse-random: percent must be 0 … 100 (got ${percent})`);
  const runlength = options.runlength ?? 16 * 1024 * 1024;
  if (!(runlength >= 1) || !Number.isSafeInteger(runlength)) throw new RangeError(`sparse-random: runlength must be a positive integer (got ${runlength})`);
  const cacheMax = options.cacheSegments ?? 64;
  if (!Number.isSafeInteger(cacheMax) || cacheMax < 1) throw new RangeError(`sparse-random: cacheSegments must be an integer ≥ 1 (got ${cacheMax})`);
  const randomContent = options.randomContent ?? false;
  const seedHi = hi32(seed);
  const seedLo = lo32(seed);

  const blocks = Math.ceil(size / SPARSE_BLOCK);
  const dataMean = Math.max(1, runlength / SPARSE_BLOCK);
  const holeMean = percent > 0 ? (dataMean * (100 - percent)) / percent : Infinity;
  const segBlocks = Math.max(MIN_SEGMENT_BLOCKS, Math.ceil(32 * (dataMean + (Number.isFinite(holeMean) ? holeMean : 0))));

  const cache = new Map<number, Segment>();
  const makeSegment = (k: number): Segment => {
    if (percent === 0) return { firstData: false, flips: new Float64Array(0) };
    if (percent === 100) return { firstData: true, flips: new Float64Array(0) };
    const next = mulberry32(hash3(seedLo, seedHi ^ 0x5eed, k));
    const uniform = () => (next() + 1) / 4294967297; // in (0, 1): log() stays finite
    const len = Math.min(segBlocks, blocks - k * segBlocks);
    // The state at a segment's start is drawn with the long-run odds, so segments join without a visible seam.
    const firstData = uniform() * 100 < percent;
    const flips: number[] = [];
    let data = firstData;
    for (let at = 0; ; ) {
      at += Math.max(1, Math.round(-Math.log(uniform()) * (data ? dataMean : holeMean)));
      if (at >= len) break;
      flips.push(at);
      data = !data;
    }
    return { firstData, flips: Float64Array.from(flips) };
  };
  const segment = (k: number): Segment => {
    let s = cache.get(k);
    if (s !== undefined) {
      cache.delete(k); // re-insert: the Map's order is the LRU order
      cache.set(k, s);
      return s;
    }
    s = makeSegment(k);
    cache.set(k, s);
    if (cache.size > cacheMax) cache.delete(cache.keys().next().value!);
    return s;
  };

  /** Walk [offset, offset+length) as runs: fn(byte offset, bytes, isData). Neighbouring runs differ; `fn` returning false stops the walk. */
  const eachRun = (offset: number, length: number, fn: (at: number, n: number, data: boolean) => boolean | void) => {
    const end = offset + length;
    // The server only passes ranges inside the export; a direct caller going past it would never finish the walk.
    if (offset < 0 || end > size) throw new RangeError(`sparse-random: [${offset}, ${end}) is outside the ${size}-byte disk`);
    let at = offset;
    let pending: { at: number; n: number; data: boolean } | undefined;
    while (at < end) {
      const block = Math.floor(at / SPARSE_BLOCK);
      const k = Math.floor(block / segBlocks);
      const seg = segment(k);
      const inSeg = block - k * segBlocks;
      // The first flip after this block (binary search), hence the run's end.
      let lo = 0;
      let hi = seg.flips.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (seg.flips[mid]! <= inSeg) lo = mid + 1;
        else hi = mid;
      }
      const data = seg.firstData !== (lo % 2 === 1);
      const runEndBlock = lo < seg.flips.length ? seg.flips[lo]! : Math.min(segBlocks, blocks - k * segBlocks);
      const runEnd = Math.min(end, (k * segBlocks + runEndBlock) * SPARSE_BLOCK);
      if (pending && pending.data === data) pending.n += runEnd - at;
      else {
        if (pending && fn(pending.at, pending.n, pending.data) === false) return;
        pending = { at, n: runEnd - at, data };
      }
      at = runEnd;
    }
    if (pending) fn(pending.at, pending.n, pending.data);
  };

  /** The bytes of data blocks under [offset, offset + n) (all of it data). */
  const content = (offset: number, n: number): Buffer => {
    const first = Math.floor(offset / SPARSE_BLOCK);
    const last = Math.floor((offset + n - 1) / SPARSE_BLOCK);
    const base = first * SPARSE_BLOCK;
    const buf = Buffer.allocUnsafeSlow((last - first + 1) * SPARSE_BLOCK);
    const words = randomContent ? new Uint32Array(buf.buffer, 0, buf.length / 4) : undefined;
    for (let b = first; b <= last; b++) {
      const h = hash3(seedLo ^ 0xb10c, hi32(b) ^ seedHi, lo32(b));
      const at = (b - first) * SPARSE_BLOCK;
      if (words === undefined) buf.fill((h % 255) + 1, at, at + SPARSE_BLOCK);
      else {
        const next = mulberry32(h);
        for (let i = at / 4, e = (at + SPARSE_BLOCK) / 4; i < e; i++) words[i] = next();
      }
    }
    return buf.subarray(offset - base, offset - base + n);
  };

  let zeroes = Buffer.alloc(0);
  const allZero = (b: Buffer): boolean => {
    if (zeroes.length < b.length) zeroes = Buffer.alloc(Math.max(b.length, 64 * 1024));
    return b.equals(zeroes.subarray(0, b.length));
  };

  const refuse = (what: string, offset: number, length: number): never => {
    const why = `sparse-random: ${what} at offset ${offset} (${length} bytes)`;
    options.logger?.warn(why);
    throw new NbdRequestError('EIO', why);
  };

  /** A write is accepted only if it writes what is there already. */
  const check = (offset: number, data: Buffer) => {
    eachRun(offset, data.length, (at, n, isData) => {
      const part = data.subarray(at - offset, at - offset + n);
      if (isData ? !part.equals(content(at, n)) : !allZero(part)) refuse('data written does not match what is there', offset, data.length);
    });
  };
  const holesOnly = (offset: number, length: number) =>
    eachRun(offset, length, (_at, _n, isData) => {
      if (isData) refuse('trim or zero of data (only holes may be zeroed)', offset, length);
    });

  return {
    size,
    seed,
    read(offset, length): ReadSegment[] {
      const out: ReadSegment[] = [];
      eachRun(offset, length, (at, n, isData) => {
        out.push(isData ? { data: content(at, n) } : { hole: n });
      });
      return out;
    },
    write(offset, data) {
      check(offset, data);
    },
    writev(offset, parts) {
      let at = offset;
      for (const p of parts) {
        check(at, p);
        at += p.length;
      }
    },
    flush() {},
    fua: 'native',
    trim(offset, length) {
      holesOnly(offset, length);
    },
    zero(offset, length) {
      holesOnly(offset, length);
    },
    extents(offset, length, o?: ExtentsOptions): Extent[] {
      // Only as many runs as the reply will carry: a 1 TiB range of 4 KiB runs is 2^28 of them.
      const max = o?.reqOne ? 1 : (o?.maxExtents ?? Infinity);
      const out: Extent[] = [];
      eachRun(offset, length, (_at, n, isData) => out.push({ length: n, flags: isData ? 0 : HOLE_ZERO }) < max);
      return out;
    },
    multiConn: true,
  };
}
