/**
 * A sparse in-memory backend: pages are allocated on first write; TRIM and
 * zeroing free whole pages (and zero-fill partial ones); unallocated areas
 * read as holes (OFFSET_HOLE chunks with structured replies) and report
 * HOLE|ZERO for base:allocation. Reads return views of the pages (no copy).
 *
 * The export is cut into 1 MiB blocks, looked up in a plain array by block
 * number; each block maps its pages (64 KiB by default) to the memory that
 * holds them — a store. A page written by copy lives in its block's own
 * backing (calloc'd by Buffer.alloc, so pages never written cost no RSS);
 * a page written by a placed WRITE lives in the buffer that WRITE was
 * received into. Neighbouring pages in one store are one view, so a large
 * READ of data written together is one buffer.
 *
 * WRITEs change the export only once the whole payload has arrived: a WRITE
 * cut off by a disconnect changes nothing, and no reader sees half of one.
 * A WRITE of whole pages (offset and length multiples of the page size: 1
 * MiB sequential writes, nbdcopy's 256 KiB pieces) is received without a
 * copy (`writeTargets`): the socket reads its payload into spare buffers,
 * and the commit points the pages at them. Anything else is copied in from
 * the socket's read buffers once complete. A store no page points at any
 * more goes back to the spares only if no READ was ever answered from it —
 * a reply still queued to a slow client may point into it; a store a READ
 * has seen is left to the garbage collector instead. At most
 * `spareBlocks` MiB of spares are kept. A received store less than half
 * in use has its pages copied into the block's backing and is let go, so
 * memory stays within about twice the data.
 */
import { STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Backend, ExtentsOptions, ZeroOptions } from '../api/backend.js';
import { keysInRange } from '../plugins/common.js';
import { BufferPool } from '../transport/buffer-pool.js';

export interface MemoryBackendOptions {
  /** Export size in bytes. */
  readonly size: number;
  /** Page size, a power of 2 (default 64 KiB). */
  readonly pageSize?: number;
  readonly readOnly?: boolean;
  /**
   * Spare receive buffers kept for WRITEs of whole pages, received without
   * a copy: at most this many MiB of them (default 16). 0 keeps none; such
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

/** Memory pages live in: a block's own backing, or the buffer a placed WRITE was received into. */
interface Store {
  readonly buf: Buffer;
  /** Pages pointing into it. */
  refs: number;
  /** A READ was answered with a view of it: it must never be reused as a spare. */
  viewed: boolean;
  /** A placed WRITE's buffer (may become a spare); a block's backing never does. */
  readonly received: boolean;
}

/** One block: for each page, the store holding it (undefined: a hole) and where in that store. */
interface Block {
  readonly stores: Array<Store | undefined>;
  readonly at: Float64Array;
  /** Pages holding data. */
  count: number;
  /** The calloc'd block-size buffer pages written by copy live in, made on first need. */
  backing: Store | undefined;
  /** Page p's region of the backing holds bytes of an old page (zero it before reuse). */
  readonly stale: Uint8Array;
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
  /** The numbers of the blocks holding pages in [first, last], ascending. */
  let presentBlocks: (first: number, last: number) => number[];
  if (blockCount <= ARRAY_TABLE_MAX) {
    const table: (Block | undefined)[] = [];
    for (let i = 0; i < blockCount; i++) table.push(undefined);
    getBlock = (i) => table[i];
    setBlock = (i, b) => {
      table[i] = b;
    };
    presentBlocks = (first, last) => {
      const out: number[] = [];
      for (let i = first; i <= last; i++) if (table[i] !== undefined) out.push(i);
      return out;
    };
  } else {
    const table = new Map<number, Block>();
    getBlock = (i) => table.get(i);
    setBlock = (i, b) => (b ? table.set(i, b) : table.delete(i));
    // Probing every block of a wide range would walk the whole export (16 Mi blocks at 16 TiB).
    presentBlocks = (first, last) => keysInRange(table, first, last);
  }

  const blockFor = (i: number): Block => {
    let b = getBlock(i);
    if (b === undefined) {
      const stores: Array<Store | undefined> = [];
      for (let p = 0; p < pagesPerBlock; p++) stores.push(undefined);
      b = { stores, at: new Float64Array(pagesPerBlock), count: 0, backing: undefined, stale: new Uint8Array(pagesPerBlock) };
      setBlock(i, b);
    }
    return b;
  };

  // ── spares: received stores no page and no READ holds, by length, at most spareBlocks MiB ──
  const spares = new BufferPool(spareMax * BLOCK_SIZE);

  /** A store no page points at: back to the spares if it was received and no READ saw it. */
  const retire = (st: Store) => {
    if (st.received && !st.viewed) spares.give(st.buf);
  };

  /** Page p of block b stops pointing at its store (replaced or made a hole); returns that store. */
  const unlink = (b: Block, p: number): Store => {
    const st = b.stores[p]!;
    b.stores[p] = undefined;
    if (st === b.backing) {
      b.stale[p] = 1;
      if (--st.refs === 0) b.backing = undefined;
    } else if (--st.refs === 0) retire(st);
    return st;
  };

  /** The block's backing, made (calloc'd: untouched pages cost no RSS) on first need. */
  const backingOf = (b: Block): Store => {
    if (b.backing === undefined) {
      b.backing = { buf: Buffer.alloc(blockSize), refs: 0, viewed: false, received: false };
      b.stale.fill(0);
    }
    return b.backing;
  };

  /**
   * Memory stays within twice the data a block's received stores hold: a
   * received store less than half of whose pages are still in use has those
   * pages copied into the block's backing and is let go. (Otherwise a client
   * rewriting ever smaller page ranges could keep a 1 MiB buffer alive for
   * each 64 KiB page.) Stores never span blocks, so all its pages are in b.
   */
  const compact = (b: Block, st: Store) => {
    if (!st.received || st.refs === 0 || st.refs * pageSize * 2 >= st.buf.length) return;
    const back = backingOf(b);
    for (let q = 0; q < pagesPerBlock && st.refs > 0; q++) {
      if (b.stores[q] !== st) continue;
      const from = b.at[q]!;
      back.buf.set(st.buf.subarray(from, from + pageSize), q * pageSize);
      back.refs++;
      b.stale[q] = 0;
      b.stores[q] = back;
      b.at[q] = q * pageSize;
      st.refs--;
    }
    retire(st);
  };

  /** Page p of block b becomes data in the block's backing (zeroed); returns the backing. */
  const attachBacking = (b: Block, p: number): Store => {
    const st = backingOf(b);
    if (b.stale[p] === 1) st.buf.fill(0, p * pageSize, (p + 1) * pageSize);
    b.stale[p] = 0;
    st.refs++;
    b.stores[p] = st;
    b.at[p] = p * pageSize;
    b.count++;
    pagesPresent++;
    return st;
  };

  /** Make page p of block bi a hole; a block left without data is dropped. */
  const dropPage = (bi: number, b: Block, p: number) => {
    compact(b, unlink(b, p));
    b.count--;
    pagesPresent--;
    if (b.count === 0) setBlock(bi, undefined);
  };

  /** Where a byte offset is, set by `locate` (no object per lookup: reads and writes call it for every request). */
  let atBlock = 0;
  let atPage = 0;
  let atInPage = 0;
  const locate = (offset: number) => {
    atBlock = Math.floor(offset / blockSize);
    const inBlock = offset - atBlock * blockSize;
    atPage = Math.floor(inBlock / pageSize);
    atInPage = inBlock - atPage * pageSize;
  };

  /**
   * Walk [offset, offset+length) page by page, allocating nothing:
   * fn(block or undefined, block number, page in the block, start in the page, bytes).
   */
  const eachPage = (offset: number, length: number, fn: (b: Block | undefined, bi: number, p: number, inPage: number, n: number) => void) => {
    let at = offset;
    const end = offset + length;
    while (at < end) {
      locate(at);
      const bi = atBlock;
      const p = atPage;
      const inPage = atInPage;
      const n = Math.min(pageSize - inPage, end - at);
      fn(getBlock(bi), bi, p, inPage, n);
      at += n;
    }
  };

  /**
   * Walk [offset, offset+length) as eachPage does, but in time that depends on the blocks holding
   * pages, not on the range: each run of blocks without pages is one call with b undefined (n may
   * then span many pages). `fn` returning false stops the walk. For whole-export TRIM, WRITE_ZEROES
   * and BLOCK_STATUS, which extended headers allow in one request (16 TiB is 256 Mi pages).
   */
  const eachPresent = (offset: number, length: number, fn: (b: Block | undefined, bi: number, p: number, inPage: number, n: number) => boolean | void): void => {
    const end = offset + length;
    if (length <= 0) return;
    const first = Math.floor(offset / blockSize);
    const last = Math.floor((end - 1) / blockSize);
    let at = offset;
    for (const bi of presentBlocks(first, last)) {
      const start = Math.max(at, bi * blockSize);
      if (start > at && fn(undefined, Math.floor(at / blockSize), 0, 0, start - at) === false) return;
      const b = getBlock(bi)!;
      const stop = Math.min(end, (bi + 1) * blockSize);
      for (at = start; at < stop; ) {
        locate(at);
        const n = Math.min(pageSize - atInPage, stop - at);
        if (fn(b, bi, atPage, atInPage, n) === false) return;
        at += n;
      }
    }
    if (at < end) fn(undefined, Math.floor(at / blockSize), 0, 0, end - at);
  };

  /**
   * Zero [offset, offset+length): whole pages become holes (a block without pages is dropped), partial
   * ones are zero-filled. With `keepAllocated` (NO_HOLE) pages holding data are zero-filled in place;
   * holes stay holes, as in nbdkit's memory plugin: a hole of a RAM disk reads as zeroes and is
   * written later like any page, and provisioning it here would let one request of a 16 TiB export
   * allocate 16 TiB.
   */
  const zeroRange = (offset: number, length: number, keepAllocated: boolean) =>
    eachPresent(offset, length, (b, bi, p, inPage, n) => {
      const st = b?.stores[p];
      if (st === undefined) return;
      // A whole page, or all of the export's last page (cut short by the size): freed.
      const whole = n === pageSize || (inPage === 0 && bi * blockSize + p * pageSize + n >= size);
      if (whole && !keepAllocated) dropPage(bi, b!, p);
      else st.buf.fill(0, b!.at[p]! + inPage, b!.at[p]! + inPage + n);
    });

  /** Copy `data` in at `offset`, page by page (a page without data is given the block's backing first). */
  const writeAt = (offset: number, data: Buffer) => {
    const n = data.length;
    if (n === 0) return;
    locate(offset);
    // The common case (every 4 KiB write): inside one page, so no walk and no closure.
    if (atInPage + n <= pageSize) {
      const b = blockFor(atBlock);
      const p = atPage;
      const st = b.stores[p] ?? attachBacking(b, p);
      // TypedArray#set: the copy without Buffer#copy's argument checks and view allocation.
      st.buf.set(data, b.at[p]! + atInPage);
      return;
    }
    let done = 0;
    eachPage(offset, n, (_b, bj, q, from, m) => {
      const b = blockFor(bj);
      const st = b.stores[q] ?? attachBacking(b, q);
      st.buf.set(m === n ? data : data.subarray(done, done + m), b.at[q]! + from);
      done += m;
    });
  };

  /** Point the pages under [offset, offset + buf.length) (whole pages, inside one block) at `buf`, received complete. */
  const install = (offset: number, buf: Buffer) => {
    const bi = Math.floor(offset / blockSize);
    const first = (offset - bi * blockSize) / pageSize;
    const pages = buf.length / pageSize;
    const b = blockFor(bi);
    const st: Store = { buf, refs: pages, viewed: false, received: true };
    let replaced: Store | undefined;
    let others: Store[] | undefined;
    for (let k = 0; k < pages; k++) {
      const p = first + k;
      if (b.stores[p] !== undefined) {
        const old = unlink(b, p);
        if (replaced === undefined) replaced = old;
        else if (old !== replaced && !(others ??= []).includes(old)) others.push(old);
      } else {
        b.count++;
        pagesPresent++;
      }
      b.stores[p] = st;
      b.at[p] = k * pageSize;
    }
    // Only once every page is in place: a store this WRITE replaced wholly is not copied first.
    if (replaced !== undefined) compact(b, replaced);
    if (others !== undefined) for (const o of others) compact(b, o);
  };

  const backend: MemoryBackend = {
    size,
    get allocatedBytes() {
      return pagesPresent * pageSize;
    },
    read(offset, length): Buffer | ReadSegment[] {
      locate(offset);
      // Fast path: inside one page.
      if (atInPage + length <= pageSize) {
        const b = getBlock(atBlock);
        const st = b?.stores[atPage];
        if (st === undefined) return [{ hole: length }];
        st.viewed = true;
        const at = b!.at[atPage]! + atInPage;
        return st.buf.subarray(at, at + length);
      }
      // Neighbouring pages in one store are one view; holes merge.
      const segments: ReadSegment[] = [];
      eachPage(offset, length, (b, _bi, q, from, n) => {
        const last = segments[segments.length - 1];
        const st = b?.stores[q];
        if (st !== undefined) {
          st.viewed = true;
          const buf = st.buf;
          const at = b!.at[q]! + from;
          if (last !== undefined && 'data' in last && last.data.buffer === buf.buffer && last.data.byteOffset + last.data.length === buf.byteOffset + at) {
            segments[segments.length - 1] = { data: buf.subarray(at - last.data.length, at + n) };
          } else segments.push({ data: buf.subarray(at, at + n) });
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
    // Whole pages only (one buffer per block spanned); anything else is copied in by write/writev once complete.
    writeTargets(offset, length) {
      if (length === 0 || offset % pageSize !== 0 || length % pageSize !== 0) return null;
      const targets: Buffer[] = [];
      const starts: number[] = [];
      for (let at = offset; at < offset + length; ) {
        const n = Math.min(blockSize - (at % blockSize), offset + length - at);
        targets.push(spares.take(n));
        starts.push(at);
        at += n;
      }
      return {
        targets,
        commit() {
          for (let i = 0; i < targets.length; i++) install(starts[i]!, targets[i]!);
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
    extents(offset, length, o?: ExtentsOptions): Extent[] {
      // Only as many extents as the reply will carry (one more is started, then the walk stops).
      const max = o?.reqOne ? 1 : (o?.maxExtents ?? Infinity);
      const out: Extent[] = [];
      eachPresent(offset, length, (b, _bi, p, _from, n) => {
        const flags = b?.stores[p] !== undefined ? 0 : STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;
        const last = out[out.length - 1];
        if (last && last.flags === flags) out[out.length - 1] = { length: last.length + n, flags };
        else if (out.length === max) return false;
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
