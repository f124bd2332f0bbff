/**
 * cache: a bounded in-memory read cache in front of a slow or costly
 * backend (after nbdkit-cache-filter, which keeps its cache in a temporary
 * file). Data is cached in blocks of `minBlockSize`; at most `maxSize`
 * bytes are kept, least recently used blocks dropped first.
 *
 * Writes go through to the backend before they are acknowledged
 * (writethrough — nbdkit's default is writeback, which holds writes in the
 * cache until a flush; a crash of this process would lose them, so we do
 * not offer it), and WRITE, WRITE_ZEROES and TRIM drop the blocks they
 * touch. CACHE requests prefetch their blocks into the cache.
 *
 * Scope 'shared': one cache for the export, so what one connection reads
 * another finds, and a write on any connection invalidates for all.
 * Only data is cached: BLOCK_STATUS goes to the backend.
 */
import fs from 'node:fs';
import type { Backend, WriteOptions, ZeroOptions } from '../api/backend.js';
import type { Filter, FilterContext } from '../api/filter.js';
import { layer } from '../api/filter.js';
import { check, oneExport } from './util.js';
import { isPowerOf2, keysInRange, readBuffer } from '../plugins/common.js';

export interface CacheOptions {
  /** Only 'writethrough' (the default; see above). */
  readonly mode?: 'writethrough';
  /** Bytes of cached data kept at most (default 64 MiB). */
  readonly maxSize?: number;
  /** Cache block size: a power of 2 ≥ 4096 (default 64 KiB). */
  readonly minBlockSize?: number;
  /** Keep what READs fetch (default true; nbdkit's default is false); a string is a path: on while it exists. */
  readonly onRead?: boolean | string;
}

export interface CacheStats {
  /** Blocks served from the cache / fetched from the backend, since the start. */
  readonly hits: number;
  readonly misses: number;
  /** Blocks and bytes held now. */
  readonly blocks: number;
  readonly bytes: number;
}

export interface CacheFilter extends Filter {
  stats(): CacheStats;
}

export const CACHE_MAX_SIZE = 64 * 1024 * 1024;
export const CACHE_BLOCK_SIZE = 64 * 1024;

/** A bounded LRU read cache filter (nbdkit-cache-filter, writethrough). */
export function cacheFilter(options: CacheOptions = {}): CacheFilter {
  const bs = options.minBlockSize ?? CACHE_BLOCK_SIZE;
  const max = options.maxSize ?? CACHE_MAX_SIZE;
  check(isPowerOf2(bs) && bs >= 4096, 'cache', `cache-min-block-size=${bs}: must be a power of 2 ≥ 4096`);
  check(Number.isSafeInteger(max) && max >= 0, 'cache', `cache-max-size=${max}: must be a size ≥ 0`);
  check((options.mode ?? 'writethrough') === 'writethrough', 'cache', `cache=${options.mode}: only writethrough is supported`);
  const onRead = (): boolean => (typeof options.onRead === 'string' ? fs.existsSync(options.onRead) : options.onRead ?? true);

  // Map order is the LRU order: a hit moves its block to the end.
  const blocks = new Map<number, Buffer>();
  let bytes = 0;
  let hits = 0;
  let misses = 0;
  // Fetches in flight, by block: a write that lands meanwhile removes the
  // entry, and the fetch (which may have read the old bytes) is not kept.
  const fetching = new Map<number, symbol>();

  const drop = (b: number) => {
    const buf = blocks.get(b);
    if (buf) {
      blocks.delete(b);
      bytes -= buf.length;
    }
    fetching.delete(b);
  };
  const insert = (b: number, buf: Buffer) => {
    drop(b);
    if (buf.length > max) return;
    blocks.set(b, buf);
    bytes += buf.length;
    for (const [old] of blocks) {
      if (bytes <= max) break;
      drop(old);
    }
  };

  const bind = oneExport('cache');
  const wrap = (next: Backend, ctx: FilterContext): Backend => {
    bind(ctx.export);
    const size = next.size;
    if (size === undefined) throw new Error('cache: the backend below has no size');
    const blockLen = (b: number) => Math.min(bs, size - b * bs);

    /** Fetch blocks first..last from the backend, keeping those no write touched meanwhile. */
    const fetch = async (first: number, last: number, keep: boolean): Promise<Buffer> => {
      const tokens = new Map<number, symbol>();
      if (keep) for (let b = first; b <= last; b++) fetching.set(b, tokens.set(b, Symbol()).get(b)!);
      const span = (last - first) * bs + blockLen(last);
      misses += last - first + 1;
      try {
        const data = readBuffer(await next.read(first * bs, span), span);
        for (const [b, token] of tokens) {
          if (fetching.get(b) !== token) continue;
          fetching.delete(b);
          const at = (b - first) * bs;
          // A copy per block: a view would keep the whole fetch alive (and the backend's memory) while any block of it is cached.
          insert(b, Buffer.from(data.subarray(at, at + blockLen(b))));
        }
        return data;
      } finally {
        for (const [b, token] of tokens) if (fetching.get(b) === token) fetching.delete(b);
      }
    };

    /** Runs of [offset, end) over blocks: cached (one block) or not (coalesced). */
    const visit = async (offset: number, length: number, keep: boolean, use: (pos: number, src: Buffer, srcStart: number, stop: number) => void) => {
      const end = offset + length;
      for (let pos = offset; pos < end; ) {
        const b = Math.floor(pos / bs);
        const hit = blocks.get(b);
        if (hit) {
          hits++;
          blocks.delete(b);
          blocks.set(b, hit);
          const stop = Math.min(end, b * bs + hit.length);
          use(pos, hit, b * bs, stop);
          pos = stop;
          continue;
        }
        let last = b;
        while ((last + 1) * bs < end && !blocks.has(last + 1)) last++;
        const data = await fetch(b, last, keep);
        const stop = Math.min(end, last * bs + blockLen(last));
        use(pos, data, b * bs, stop);
        pos = stop;
      }
    };

    const read = async (offset: number, length: number) => {
      if (!onRead() && ![...range(offset, length)].some((b) => blocks.has(b))) {
        misses += Math.ceil((offset + length) / bs) - Math.floor(offset / bs);
        return next.read(offset, length);
      }
      const out = Buffer.alloc(length);
      await visit(offset, length, onRead(), (pos, src, srcStart, stop) => void src.copy(out, pos - offset, pos - srcStart, stop - srcStart));
      return out;
    };

    function* range(offset: number, length: number) {
      for (let b = Math.floor(offset / bs); b * bs < offset + length; b++) yield b;
    }
    // A zero or trim of a whole large export must not visit every block of it: keysInRange reads the cached ones.
    const invalidate = (offset: number, length: number) => {
      const first = Math.floor(offset / bs);
      const last = Math.ceil((offset + length) / bs) - 1;
      for (const map of [blocks, fetching]) for (const b of keysInRange(map, first, last)) drop(b);
    };
    /** Run a change on the backend, dropping the blocks it touches before and after. */
    const through = async (offset: number, length: number, change: () => unknown) => {
      invalidate(offset, length);
      try {
        await change();
      } finally {
        invalidate(offset, length);
      }
    };

    return layer(next, {
      read,
      write: next.write && ((o: number, d: Buffer, opts: WriteOptions) => through(o, d.length, () => next.write!(o, d, opts))),
      zero: next.zero && ((o: number, l: number, opts: ZeroOptions) => through(o, l, () => next.zero!(o, l, opts))),
      trim: next.trim && ((o: number, l: number, opts: WriteOptions) => through(o, l, () => next.trim!(o, l, opts))),
      // CACHE: prefetch into this cache (what the request asks for, whatever cache-on-read says), but no
      // more than the cache holds: CACHE is a hint, and a 4 GiB one must not read 4 GiB at once.
      cache: (o: number, l: number) => visit(o, Math.min(l, Math.max(max, bs)), true, () => {}),
    });
  };

  return {
    name: 'cache',
    scope: 'shared',
    wrap,
    stats: () => ({ hits, misses, blocks: blocks.size, bytes }),
  };
}
