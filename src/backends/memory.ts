/**
 * A sparse in-memory backend: pages are allocated on first write; TRIM and
 * zeroing free whole pages (and zero-fill partial ones); unallocated areas
 * read as holes (OFFSET_HOLE chunks with structured replies) and report
 * HOLE|ZERO for base:allocation. Reads return views of the pages (no copy).
 *
 * Pages are carved out of 1 MiB slabs rather than allocated one by one:
 * a fresh slab comes zeroed from the allocator (calloc of a large block
 * maps untouched zero pages, so RSS grows only as pages are written), and
 * a page freed by TRIM / zeroing is zero-filled and reused before new slab
 * space is taken. One allocation per 16 pages instead of one per page.
 */
import { STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Backend, ZeroOptions } from '../api/backend.js';
import { kCopiesPayload } from '../protocol/slab-account.js';

export interface MemoryBackendOptions {
  /** Export size in bytes. */
  readonly size: number;
  /** Page size, a power of 2 (default 64 KiB). */
  readonly pageSize?: number;
  readonly readOnly?: boolean;
}

export interface MemoryBackend extends Backend {
  readonly size: number;
  /** Bytes of pages currently allocated. */
  readonly allocatedBytes: number;
}

/** Pages are carved from slabs of this size. */
const SLAB_SIZE = 1024 * 1024;

export function memoryBackend(options: MemoryBackendOptions | number): MemoryBackend {
  const opts = typeof options === 'number' ? { size: options } : options;
  const size = opts.size;
  const pageSize = opts.pageSize ?? 64 * 1024;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backend size must be a safe integer ≥ 0 (got ${size})`);
  if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0) throw new RangeError('pageSize must be a power of 2 ≥ 512');
  const pages = new Map<number, Buffer>();
  const slabSize = Math.max(pageSize, SLAB_SIZE);
  let slab: Buffer | null = null;
  let slabUsed = 0;
  /** Freed pages, zero-filled, for reuse. */
  const free: Buffer[] = [];

  const newPage = (): Buffer => {
    const reused = free.pop();
    if (reused) return reused;
    if (slab === null || slabUsed + pageSize > slab.length) {
      slab = Buffer.alloc(slabSize);
      slabUsed = 0;
    }
    const p = slab.subarray(slabUsed, slabUsed + pageSize);
    slabUsed += pageSize;
    return p;
  };

  const pageFor = (index: number): Buffer => {
    let p = pages.get(index);
    if (!p) {
      p = newPage();
      pages.set(index, p);
    }
    return p;
  };

  const dropPage = (index: number, p: Buffer) => {
    pages.delete(index);
    p.fill(0);
    free.push(p);
  };

  /** Zero [offset, offset+length): whole pages are dropped, partial ones zero-filled. */
  const zeroRange = (offset: number, length: number, keepAllocated: boolean) => {
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / pageSize);
      const start = at - index * pageSize;
      const n = Math.min(pageSize - start, end - at);
      const p = pages.get(index);
      if (p) {
        if (n === pageSize && !keepAllocated) dropPage(index, p);
        else p.fill(0, start, start + n);
      } else if (keepAllocated) {
        pageFor(index);
      }
      at += n;
    }
  };

  const writeAt = (offset: number, data: Buffer) => {
    let at = 0;
    while (at < data.length) {
      const pos = offset + at;
      const index = Math.floor(pos / pageSize);
      const s = pos - index * pageSize;
      const n = Math.min(pageSize - s, data.length - at);
      // TypedArray#set: the copy without Buffer#copy's argument checks and view allocation.
      pageFor(index).set(n === data.length ? data : data.subarray(at, at + n), s);
      at += n;
    }
  };

  const backend: MemoryBackend & { [kCopiesPayload]: true } = {
    size,
    get allocatedBytes() {
      return pages.size * pageSize;
    },
    read(offset, length): Buffer | ReadSegment[] {
      const firstIndex = Math.floor(offset / pageSize);
      const start = offset - firstIndex * pageSize;
      // Fast path: inside one page.
      if (start + length <= pageSize) {
        const p = pages.get(firstIndex);
        return p ? p.subarray(start, start + length) : [{ hole: length }];
      }
      const segments: ReadSegment[] = [];
      let at = offset;
      const end = offset + length;
      while (at < end) {
        const index = Math.floor(at / pageSize);
        const s = at - index * pageSize;
        const n = Math.min(pageSize - s, end - at);
        const p = pages.get(index);
        const last = segments[segments.length - 1];
        if (p) segments.push({ data: p.subarray(s, s + n) });
        else if (last && 'hole' in last) segments[segments.length - 1] = { hole: last.hole + n };
        else segments.push({ hole: n });
        at += n;
      }
      return segments;
    },
    write(offset, data) {
      writeAt(offset, data);
    },
    // A payload in pieces is copied piece by piece: no joined copy first.
    writev(offset, parts) {
      let at = offset;
      for (const p of parts) {
        writeAt(at, p);
        at += p.length;
      }
    },
    // Memory is as durable as it gets: flush has nothing to do, FUA is free.
    flush() {},
    fua: 'native',
    trim(offset, length) {
      zeroRange(offset, length, false);
    },
    zero(offset, length, o: ZeroOptions) {
      zeroRange(offset, length, o.noHole);
    },
    // Dropping pages is always fast.
    canFastZero: true,
    extents(offset, length): Extent[] {
      const out: Extent[] = [];
      let at = offset;
      const end = offset + length;
      while (at < end) {
        const index = Math.floor(at / pageSize);
        const n = Math.min(pageSize - (at - index * pageSize), end - at);
        const flags = pages.has(index) ? 0 : STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;
        const last = out[out.length - 1];
        if (last && last.flags === flags) out[out.length - 1] = { length: last.length + n, flags };
        else out.push({ length: n, flags });
        at += n;
      }
      return out;
    },
    // One process, one map: writes are visible to every connection at once.
    multiConn: true,
    // write/writev copy the payload before returning: its read slabs may be reused.
    [kCopiesPayload]: true,
    readOnly: opts.readOnly,
  };
  return backend;
}
