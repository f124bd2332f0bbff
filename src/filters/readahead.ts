/**
 * readahead: when a connection reads sequentially, fetch more than it
 * asked for, in one larger backend READ, and answer its next READs from
 * that. The window starts at `min` and doubles with each sequential READ
 * up to `max`; a READ that does not follow on from the previous one
 * resets it and goes to the backend unchanged (random I/O is untouched).
 *
 * nbdkit-readahead-filter does this differently: it sends a CACHE
 * (prefetch) for the following data to the plugin, alongside the read,
 * and relies on the plugin (or a cache filter below) to keep it. Ours
 * holds the window itself, so it helps backends without CACHE too.
 *
 * Scope 'connection': each client has its own window (sequential streams
 * of two clients do not disturb each other). The windows are invalidated
 * by a generation counter shared by all connections of the export: any
 * WRITE, WRITE_ZEROES or TRIM through the filter, on any connection,
 * makes every window stale — so CAN_MULTI_CONN stays truthful. Writes
 * made to the backend other than through this export are not seen.
 */
import type { Backend, WriteOptions, ZeroOptions } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import { layer } from '../api/filter.js';
import { check } from './util.js';
import { readBuffer } from '../plugins/common.js';

export interface ReadaheadOptions {
  /** First window, in bytes (default 64 KiB). */
  readonly min?: number;
  /** Largest window (default 4 MiB): memory held per connection. */
  readonly max?: number;
}

export const READAHEAD_MIN = 64 * 1024;
export const READAHEAD_MAX = 4 * 1024 * 1024;

interface Window {
  readonly start: number;
  readonly end: number;
  readonly generation: number;
  readonly data: Promise<Buffer>;
}

/** A per-connection sequential read-ahead filter. */
export function readaheadFilter(options: ReadaheadOptions = {}): Filter {
  const min = options.min ?? READAHEAD_MIN;
  const max = options.max ?? READAHEAD_MAX;
  check(Number.isSafeInteger(min) && min > 0, 'readahead', `readahead-min=${min}: must be a size > 0`);
  check(Number.isSafeInteger(max) && max >= min, 'readahead', `readahead-max=${max}: must be ≥ readahead-min (${min})`);
  // Shared by every connection's instance: bumped by each change.
  let generation = 0;

  const wrap = (next: Backend): Backend => {
    const size = next.size ?? Number.MAX_SAFE_INTEGER;
    let window: Window | undefined;
    let size_ = min;
    let lastEnd = -1;

    const read = async (offset: number, length: number) => {
      const end = offset + length;
      const w = window && window.generation === generation ? window : undefined;
      if (w && offset >= w.start && end <= w.end) {
        lastEnd = end;
        const data = await w.data;
        return data.subarray(offset - w.start, end - w.start);
      }
      const sequential = offset === lastEnd || (w !== undefined && offset >= w.start && offset <= w.end);
      lastEnd = end;
      if (!sequential) {
        size_ = min;
        return next.read(offset, length);
      }
      size_ = Math.min(size_ * 2, max);
      const fetchLen = Math.max(length, Math.min(size_, size - offset));
      const data = Promise.resolve(next.read(offset, fetchLen)).then((r) => readBuffer(r, fetchLen));
      const mine: Window = { start: offset, end: offset + fetchLen, generation, data };
      window = mine;
      // A failed fetch is not kept: the next READ tries again.
      data.catch(() => {
        if (window === mine) window = undefined;
      });
      return (await data).subarray(0, length);
    };

    /** A change: windows fetched before or during it are stale. */
    const change = async (fn: () => unknown) => {
      generation++;
      try {
        await fn();
      } finally {
        generation++;
      }
    };

    return layer(next, {
      read,
      write: next.write && ((o: number, d: Buffer, opts: WriteOptions) => change(() => next.write!(o, d, opts))),
      zero: next.zero && ((o: number, l: number, opts: ZeroOptions) => change(() => next.zero!(o, l, opts))),
      trim: next.trim && ((o: number, l: number, opts: WriteOptions) => change(() => next.trim!(o, l, opts))),
    });
  };

  return { name: 'readahead', scope: 'connection', wrap };
}
