/**
 * A sparse in-memory backend: pages are allocated on first write; TRIM and
 * zeroing free whole pages (and zero-fill partial ones); unallocated areas
 * read as holes (OFFSET_HOLE chunks with structured replies) and report
 * HOLE|ZERO for base:allocation. Reads return views of the pages (no copy).
 *
 * Storage comes in 1 MiB blocks (calloc'd by Buffer.alloc, so pages never
 * written cost no RSS), looked up in a plain array by block number. A page
 * is a hole until written; TRIM / zeroing of a whole page zero-fills it and
 * makes it a hole again, and a block left without data pages is freed. The
 * pages of a block are contiguous, so a large READ is one view per block.
 *
 * WRITEs change the export only once the whole payload has arrived: a WRITE
 * cut off by a disconnect changes nothing, and no reader sees half of one.
 * Most are stored by copy, from the socket's read buffers, once complete.
 * A WRITE of whole blocks (offset and length multiples of the block size,
 * the shape of 1 MiB sequential writes) is received without a copy
 * (`writeTargets`): the socket reads its payload into spare block buffers,
 * and the commit swaps them in for the blocks' old buffers. An old buffer
 * goes back to the spares only if no READ was ever answered from it —
 * reads return views of the blocks, and a reply still queued to a slow
 * client may point into one; a buffer a READ has seen is left to the
 * garbage collector instead. At most `spareBlocks` spares are kept.
 */
import { STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Backend, ZeroOptions } from '../api/backend.js';

export interface MemoryBackendOptions {
  /** Export size in bytes. */
  readonly size: number;
  /** Page size, a power of 2 (default 64 KiB). */
  readonly pageSize?: number;
  readonly readOnly?: boolean;
  /**
   * Spare block buffers kept for receiving whole-block WRITEs without a copy
   * (default 16: 16 MiB with the default 1 MiB blocks). 0 keeps none; such
   * WRITEs then allocate a buffer each.
   */
  readonly spareBlocks?: number;
}

export interface MemoryBackend extends Backend {
  readonly size: number;
  /** Bytes of pages currently allocated. */
  readonly allocatedBytes: number;
}

/** Storage is allocated in blocks of this size (or one page, if pages are bigger). */
const BLOCK_SIZE = 1024 * 1024;
/** Block tables up to this many entries are plain arrays; bigger exports use a Map. */
const ARRAY_TABLE_MAX = 1 << 22;

/** One block of storage: a zero-filled slab, and which of its pages hold data. */
interface Block {
  /** Replaced (not written) by a whole-block WRITE's commit. */
  slab: Buffer;
  readonly present: Uint8Array;
  count: number;
  /** A READ was answered with a view of this slab: it must never be reused as a spare. */
  viewed: boolean;
}

const DEFAULT_SPARE_BLOCKS = 16;

export function memoryBackend(options: MemoryBackendOptions | number): MemoryBackend {
  const opts = typeof options === 'number' ? { size: options } : options;
  const size = opts.size;
  const pageSize = opts.pageSize ?? 64 * 1024;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backend size must be a safe integer ≥ 0 (got ${size})`);
  if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0) throw new RangeError('pageSize must be a power of 2 ≥ 512');
  const spareMax = opts.spareBlocks ?? DEFAULT_SPARE_BLOCKS;
  if (!Number.isSafeInteger(spareMax) || spareMax < 0) throw new RangeError(`spareBlocks must be an integer ≥ 0 (got ${spareMax})`);
  const blockSize = Math.max(pageSize, BLOCK_SIZE);
  const pagesPerBlock = blockSize / pageSize;
  const blockCount = Math.ceil(size / blockSize);
  let pagesPresent = 0;

  // The block table: an array indexed by block number (no hashing on the hot path), or a Map for huge exports.
  let getBlock: (i: number) => Block | undefined;
  let setBlock: (i: number, b: Block | undefined) => void;
  if (blockCount <= ARRAY_TABLE_MAX) {
    const table: (Block | undefined)[] = [];
    for (let i = 0; i < blockCount; i++) table.push(undefined);
    getBlock = (i) => table[i];
    setBlock = (i, b) => {
      table[i] = b;
    };
  } else {
    const table = new Map<number, Block>();
    getBlock = (i) => table.get(i);
    setBlock = (i, b) => (b ? table.set(i, b) : table.delete(i));
  }

  const blockFor = (i: number): Block => {
    let b = getBlock(i);
    if (b === undefined) {
      // Buffer.alloc of a large block is calloc'd: untouched pages cost no RSS.
      b = { slab: Buffer.alloc(blockSize), present: new Uint8Array(pagesPerBlock), count: 0, viewed: false };
      setBlock(i, b);
    }
    return b;
  };

  /** Mark pages [first, last] of block b as holding data. */
  const markPresent = (b: Block, first: number, last: number) => {
    for (let p = first; p <= last; p++) {
      if (b.present[p] === 0) {
        b.present[p] = 1;
        b.count++;
        pagesPresent++;
      }
    }
  };

  /**
   * Walk [offset, offset+length) page by page, allocating nothing:
   * fn(block or undefined, block number, start in the block, page in the block, bytes, page holds data).
   */
  const eachPage = (
    offset: number,
    length: number,
    fn: (b: Block | undefined, bi: number, inBlock: number, p: number, n: number, data: boolean) => void,
  ) => {
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const bi = Math.floor(at / blockSize);
      const inBlock = at - bi * blockSize;
      const p = Math.floor(inBlock / pageSize);
      const n = Math.min(pageSize - (inBlock - p * pageSize), end - at);
      const b = getBlock(bi);
      fn(b, bi, inBlock, p, n, b !== undefined && b.present[p] === 1);
      at += n;
    }
  };

  /** Zero [offset, offset+length): whole pages become holes (a block without pages is freed), partial ones are zero-filled. */
  const zeroRange = (offset: number, length: number, keepAllocated: boolean) =>
    eachPage(offset, length, (b, bi, inBlock, p, n, data) => {
      if (data) {
        b!.slab.fill(0, inBlock, inBlock + n);
        if (n === pageSize && !keepAllocated) {
          b!.present[p] = 0;
          b!.count--;
          pagesPresent--;
          if (b!.count === 0) setBlock(bi, undefined);
        }
      } else if (keepAllocated) {
        markPresent(blockFor(bi), p, p);
      }
    });

  /** Walk [offset, offset+length) block by block, marking the pages as data: fn(block, start in block, bytes, bytes done). */
  const eachBlock = (offset: number, length: number, fn: (b: Block, s: number, n: number, done: number) => void) => {
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const bi = Math.floor(pos / blockSize);
      const s = pos - bi * blockSize;
      const n = Math.min(blockSize - s, length - done);
      const b = blockFor(bi);
      markPresent(b, Math.floor(s / pageSize), Math.floor((s + n - 1) / pageSize));
      fn(b, s, n, done);
      done += n;
    }
  };

  const writeAt = (offset: number, data: Buffer) => {
    const n = data.length;
    if (n === 0) return;
    // The common case (every 4 KiB write): inside one block, so no walk and no closure.
    const bi = Math.floor(offset / blockSize);
    const s = offset - bi * blockSize;
    if (s + n <= blockSize) {
      const b = blockFor(bi);
      markPresent(b, Math.floor(s / pageSize), Math.floor((s + n - 1) / pageSize));
      // TypedArray#set: the copy without Buffer#copy's argument checks and view allocation.
      b.slab.set(data, s);
      return;
    }
    eachBlock(offset, n, (b, s, m, done) => b.slab.set(m === n ? data : data.subarray(done, done + m), s));
  };

  /** Block buffers no READ has seen, for receiving whole-block WRITEs (contents: garbage, never read). */
  const spares: Buffer[] = [];

  /** Install `slab` (completely written) as block bi's storage; its old buffer becomes a spare if no READ saw it. */
  const swapIn = (bi: number, slab: Buffer) => {
    const b = getBlock(bi);
    if (b === undefined) {
      setBlock(bi, { slab, present: new Uint8Array(pagesPerBlock).fill(1), count: pagesPerBlock, viewed: false });
      pagesPresent += pagesPerBlock;
      return;
    }
    const old = b.slab;
    b.slab = slab;
    markPresent(b, 0, pagesPerBlock - 1);
    if (!b.viewed && spares.length < spareMax) spares.push(old);
    b.viewed = false;
  };

  const backend: MemoryBackend = {
    size,
    get allocatedBytes() {
      return pagesPresent * pageSize;
    },
    read(offset, length): Buffer | ReadSegment[] {
      const bi = Math.floor(offset / blockSize);
      const s = offset - bi * blockSize;
      // Fast path: inside one page.
      if (s % pageSize + length <= pageSize) {
        const b = getBlock(bi);
        if (b === undefined || b.present[Math.floor(s / pageSize)] !== 1) return [{ hole: length }];
        b.viewed = true;
        return b.slab.subarray(s, s + length);
      }
      // Runs of data pages inside a block are one view (pages of a block are contiguous); holes merge.
      const segments: ReadSegment[] = [];
      eachPage(offset, length, (b, _bi, inBlock, _p, n, data) => {
        const last = segments[segments.length - 1];
        if (data) {
          b!.viewed = true;
          const slab = b!.slab;
          if (last !== undefined && 'data' in last && last.data.buffer === slab.buffer && last.data.byteOffset + last.data.length === slab.byteOffset + inBlock) {
            segments[segments.length - 1] = { data: slab.subarray(inBlock - last.data.length, inBlock + n) };
          } else segments.push({ data: slab.subarray(inBlock, inBlock + n) });
        } else if (last !== undefined && 'hole' in last) segments[segments.length - 1] = { hole: last.hole + n };
        else segments.push({ hole: n });
      });
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
    // Whole blocks only; anything else is copied in by write/writev once complete.
    writeTargets(offset, length) {
      if (length === 0 || offset % blockSize !== 0 || length % blockSize !== 0) return null;
      const first = offset / blockSize;
      const targets: Buffer[] = [];
      for (let i = 0; i < length / blockSize; i++) targets.push(spares.pop() ?? Buffer.allocUnsafeSlow(blockSize));
      return {
        targets,
        commit() {
          for (let i = 0; i < targets.length; i++) swapIn(first + i, targets[i]!);
        },
      };
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
      eachPage(offset, length, (_b, _bi, _inBlock, _p, n, data) => {
        const flags = data ? 0 : STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;
        const last = out[out.length - 1];
        if (last && last.flags === flags) out[out.length - 1] = { length: last.length + n, flags };
        else out.push({ length: n, flags });
      });
      return out;
    },
    // One process, one table: writes are visible to every connection at once.
    multiConn: true,
    readOnly: opts.readOnly,
  };
  return backend;
}
