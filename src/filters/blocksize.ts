/**
 * blocksize: make every request the backend sees meet its limits
 * (nbdkit-blocksize-filter), whatever the client sends.
 *
 *  - `minblock`: requests reach the backend aligned to it. READs are
 *    widened to aligned boundaries; the unaligned head and tail of a WRITE
 *    or WRITE_ZEROES is a read-modify-write of that block; the unaligned
 *    head and tail of a TRIM are dropped (TRIM is advisory); the export
 *    size is rounded down to a multiple of minblock.
 *  - `maxdata`: READs and WRITEs larger than this are split.
 *  - `maxlen`: TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS larger than this
 *    are split (BLOCK_STATUS is just cut short, as the protocol allows).
 *
 * The client is told minimum block size 1 (this filter accepts anything),
 * preferred max(minblock, the backend's preferred) — as nbdkit's filter
 * does. Advertising minblock as the minimum would make the server refuse
 * the very requests this filter exists to fix.
 *
 * Scope 'shared': the only state is the per-block locks that serialize
 * read-modify-write cycles, and those must be common to all connections.
 * Whole aligned blocks of a request are passed on without a lock; two
 * concurrent requests overlapping the same bytes have no order in NBD.
 */
import type { Backend, Extent, WriteOptions, ZeroOptions } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import { layer } from '../api/filter.js';
import { NbdRequestError } from '../api/errors.js';
import { check } from './util.js';
import { BlockLocks, isPowerOf2, readBuffer } from '../plugins/common.js';

export interface BlocksizeOptions {
  /** Alignment for the backend: a power of 2 ≤ 64 KiB (default: the backend's minimum block size, or 1). */
  readonly minblock?: number;
  /** Largest READ/WRITE passed on (default: min(64 MiB, the backend's maximum)), a multiple of minblock. */
  readonly maxdata?: number;
  /** Largest TRIM/ZERO/CACHE/BLOCK_STATUS passed on (default: 2^32 - 1 rounded down to minblock), a multiple of minblock. */
  readonly maxlen?: number;
}

export const BLOCKSIZE_MAXDATA = 64 * 1024 * 1024;

/** The limits in force for a backend (defaults filled in, checked). */
export function blocksizeLimits(options: BlocksizeOptions, next: Backend): { minblock: number; maxdata: number; maxlen: number } {
  const minblock = options.minblock ?? next.blockSizes?.minimum ?? 1;
  check(isPowerOf2(minblock) && minblock <= 65536, 'blocksize', `minblock=${minblock}: must be a power of 2 ≤ 64k`);
  const down = (n: number) => Math.floor(n / minblock) * minblock;
  const maxdata = options.maxdata ?? down(Math.min(BLOCKSIZE_MAXDATA, next.blockSizes?.maximum ?? BLOCKSIZE_MAXDATA));
  const maxlen = options.maxlen ?? down(0xffffffff);
  check(maxdata >= minblock && maxdata % minblock === 0, 'blocksize', `maxdata=${maxdata}: must be a multiple of minblock (${minblock})`);
  check(maxlen >= minblock && maxlen % minblock === 0, 'blocksize', `maxlen=${maxlen}: must be a multiple of minblock (${minblock})`);
  return { minblock, maxdata, maxlen };
}

/** A filter adapting requests to a backend's block size limits (nbdkit-blocksize-filter). */
export function blocksizeFilter(options: BlocksizeOptions = {}): Filter {
  // Checked now too, so a bad value is a configuration error before the server starts.
  if (options.minblock !== undefined || options.maxdata !== undefined || options.maxlen !== undefined) {
    blocksizeLimits({ minblock: options.minblock ?? 1, ...options }, {} as Backend);
  }
  const locks = new BlockLocks();

  const wrap = (next: Backend): Backend => {
    const { minblock: mb, maxdata, maxlen } = blocksizeLimits(options, next);
    if (next.size === undefined) throw new Error('blocksize: the backend below has no size');
    const size = Math.floor(next.size / mb) * mb;

    /** Call `fn` on [pos, end) in pieces of at most `max` bytes, in order. */
    const pieces = async (pos: number, end: number, max: number, fn: (at: number, n: number) => Promise<unknown> | unknown) => {
      for (; pos < end; pos += max) await fn(pos, Math.min(max, end - pos));
    };

    /** Read-modify-write block b under its lock: `patch` changes the block's bytes in place. */
    const rmw = (b: number, patch: (buf: Buffer) => void, opts: WriteOptions) =>
      locks.with(b, async () => {
        const buf = Buffer.from(readBuffer(await next.read(b * mb, mb), mb));
        patch(buf);
        await next.write!(b * mb, buf, opts);
      });

    /**
     * Apply a change to [offset, offset + length): `partial(b, from, to)`
     * for an unaligned head or tail within block b (bytes [from, to) of the
     * request), `aligned(at, n)` for the aligned middle.
     */
    const split = async (offset: number, length: number, partial: (b: number, from: number, to: number) => Promise<void>, aligned: (at: number, n: number) => Promise<void>) => {
      const end = offset + length;
      let pos = offset;
      if (pos % mb !== 0) {
        const b = Math.floor(pos / mb);
        const stop = Math.min(end, (b + 1) * mb);
        await partial(b, pos - offset, stop - offset);
        pos = stop;
      }
      const alignedEnd = Math.max(pos, Math.floor(end / mb) * mb);
      if (alignedEnd > pos) await aligned(pos, alignedEnd - pos);
      if (alignedEnd < end) await partial(Math.floor(alignedEnd / mb), alignedEnd - offset, end - offset);
    };

    const read = async (offset: number, length: number) => {
      const a0 = Math.floor(offset / mb) * mb;
      const a1 = Math.ceil((offset + length) / mb) * mb;
      if (a0 === offset && a1 === offset + length && length <= maxdata) return next.read(offset, length);
      const buf = Buffer.alloc(a1 - a0);
      await pieces(a0, a1, maxdata, async (at, n) => void readBuffer(await next.read(at, n), n).copy(buf, at - a0));
      return buf.subarray(offset - a0, offset - a0 + length);
    };

    const write = (offset: number, data: Buffer, opts: WriteOptions) =>
      split(
        offset,
        data.length,
        (b, from, to) => rmw(b, (buf) => void data.copy(buf, offset + from - b * mb, from, to), opts),
        (at, n) => pieces(at, at + n, maxdata, (p, k) => next.write!(p, data.subarray(p - offset, p - offset + k), opts)),
      );

    const zero = (offset: number, length: number, opts: ZeroOptions) => {
      // A read-modify-write is not fast: refuse, so the client zeroes another way.
      if (opts.fastZero && (offset % mb !== 0 || length % mb !== 0)) throw new NbdRequestError('ENOTSUP', 'blocksize: unaligned fast zero');
      return split(
        offset,
        length,
        (b, from, to) => rmw(b, (buf) => void buf.fill(0, offset + from - b * mb, offset + to - b * mb), opts),
        (at, n) => pieces(at, at + n, maxlen, (p, k) => next.zero!(p, k, opts)),
      );
    };

    const trim = (offset: number, length: number, opts: WriteOptions) =>
      split(offset, length, async () => {}, (at, n) => pieces(at, at + n, maxlen, (p, k) => next.trim!(p, k, opts)));

    const cache = async (offset: number, length: number) => {
      const a0 = Math.floor(offset / mb) * mb;
      await pieces(a0, Math.ceil((offset + length) / mb) * mb, maxlen, (p, k) => next.cache!(p, k));
    };

    const extents = async (offset: number, length: number, opts: { reqOne: boolean; context: string }): Promise<Extent[]> => {
      const a0 = Math.floor(offset / mb) * mb;
      const a1 = Math.min(a0 + maxlen, Math.ceil((offset + length) / mb) * mb);
      // The backend answers from the aligned start: drop what lies before `offset`.
      let skip = offset - a0;
      const out: Extent[] = [];
      // With REQ_ONE the one extent could end before `offset`: ask for all, the server keeps the first.
      for (const e of await next.extents!(a0, a1 - a0, skip > 0 ? { ...opts, reqOne: false } : opts)) {
        const len = e.length - Math.min(skip, e.length);
        skip -= e.length - len;
        if (len > 0) out.push({ length: len, flags: e.flags });
      }
      return out;
    };

    const preferred = Math.max(mb, 512, next.blockSizes?.preferred ?? 4096);
    return layer(next, {
      size,
      blockSizes: { minimum: 1, preferred, maximum: 0xffffffff },
      read,
      write: next.write && write,
      zero: next.zero && next.write && zero,
      trim: next.trim && trim,
      cache: next.cache && cache,
      extents: next.extents && extents,
    });
  };

  return { name: 'blocksize', scope: 'shared', wrap };
}
