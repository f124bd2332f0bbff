/**
 * cow: a writable copy-on-write overlay over a backend that is never
 * written (nbdkit-cow-filter). The export is cut into blocks of
 * `blockSize`; a block the client changed lives in the overlay, every
 * other block is read from the base. Writes, zeroes and trims only touch
 * the overlay, so the base may be read-only (a file opened `-r`, a
 * pattern, a remote image).
 *
 * Scope 'shared': one overlay for the export, so every connection sees the
 * same disk (as nbdkit's, unlike `nbd-server -c`), and CAN_MULTI_CONN is
 * advertised. The overlay lives in memory unless `file` is given (nbdkit
 * always uses an unlinked temporary file in $TMPDIR); either way it is
 * thrown away when the server closes.
 *
 * A write that covers part of a block is a read-modify-write of the whole
 * block; each block's changes hold that block's lock, so two overlapping
 * unaligned writes from different connections never lose an update.
 */
import fs from 'node:fs';
import path from 'node:path';
import { open, type FileHandle } from 'node:fs/promises';
import type { Backend, Extent, WriteOptions } from '../api/backend.js';
import type { Filter, FilterContext } from '../api/filter.js';
import { layer } from '../api/filter.js';
import { normalizeExtents } from '../api/backend.js';
import { STATE } from '../protocol/constants.js';
import { NbdRequestError } from '../api/errors.js';
import { check, oneExport } from './util.js';
import { BlockLocks, isPowerOf2, readBuffer } from '../plugins/common.js';

export interface CowOptions {
  /** Overlay block size: a power of 2 ≥ 4096 (default 64 KiB, as nbdkit's `cow-block-size`). */
  readonly blockSize?: number;
  /** Keep the overlay in this file instead of memory: a path that does not exist yet, created at the first write, deleted when the server closes. */
  readonly file?: string;
  /** Copy blocks read from the base into the overlay (`cow-on-read`); a string is a path: on while it exists. */
  readonly onRead?: boolean | string;
  /** Copy blocks named by CACHE requests into the overlay (`cow-on-cache`); otherwise CACHE goes to the base. */
  readonly onCache?: boolean;
  /** Most bytes the overlay may hold (`cow-max-size`; default 0: no limit but the export size). Writes needing more fail with ENOSPC. */
  readonly maxSize?: number;
}

export const COW_BLOCK_SIZE = 64 * 1024;

/** Where changed blocks are kept: a Map of buffers, or slots in a file. */
interface Store {
  /** Bytes held, and whether block b has storage. */
  bytes(): number;
  has(block: number): boolean;
  get(block: number, length: number): Promise<Buffer>;
  put(block: number, data: Buffer): Promise<void>;
  drop(block: number): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}

function memoryStore(): Store {
  const blocks = new Map<number, Buffer>();
  let bytes = 0;
  return {
    bytes: () => bytes,
    has: (b) => blocks.has(b),
    get: async (b) => blocks.get(b)!,
    // Blocks are replaced, never changed in place: a READ reply still
    // queued may point at the old buffer.
    put: async (b, data) => {
      bytes += data.length - (blocks.get(b)?.length ?? 0);
      blocks.set(b, data);
    },
    drop: (b) => {
      bytes -= blocks.get(b)?.length ?? 0;
      blocks.delete(b);
    },
    flush: async () => {},
    close: async () => blocks.clear(),
  };
}

function fileStore(file: string, blockSize: number): Store {
  let fh: Promise<FileHandle> | undefined;
  // Created exclusively ('wx+'): a file that exists is never truncated — were it the base image
  // itself, or anything else, the first write would destroy it (the path was checked to be free at
  // start; one made since fails the write instead). Only a file this store made is deleted at close.
  let made: FileHandle | undefined;
  const handle = () =>
    (fh ??= open(file, 'wx+').then((h) => {
      made = h;
      return h;
    }));
  // A block keeps its slot for good (never reused): a READ of a block that is
  // being trimmed can then never see another block's bytes.
  const slots = new Map<number, number>();
  return {
    bytes: () => slots.size * blockSize,
    has: (b) => slots.has(b),
    async get(b, length) {
      const buf = Buffer.alloc(length);
      await (await handle()).read(buf, 0, length, slots.get(b)! * blockSize);
      return buf;
    },
    async put(b, data) {
      let slot = slots.get(b);
      if (slot === undefined) slots.set(b, (slot = slots.size));
      const h = await handle();
      let done = 0;
      while (done < data.length) done += (await h.write(data, done, data.length - done, slot * blockSize + done)).bytesWritten;
    },
    drop: () => {},
    flush: async () => {
      if (fh) await (await fh).datasync();
    },
    async close() {
      if (!made) return;
      await made.close();
      fs.rmSync(file, { force: true });
    },
  };
}

type BlockState = 'data' | 'zero' | 'trim';

/**
 * Blocks the overlay keeps a state for (data, zeroed, trimmed), at most: each costs a Map entry
 * (~100 bytes), so a WRITE_ZEROES of a whole 16 TiB export (256 Mi blocks) would take tens of GiB.
 * A WRITE_ZEROES that would mark more fails with ENOSPC; a TRIM that would is ignored (TRIM is
 * advisory: the spec lets a server do nothing).
 */
export const COW_MAX_MARKS = 1 << 22;

/** Bytes of one CACHE request that cow-on-cache copies into the overlay, at most. */
const COW_CACHE_MAX = 64 * 1024 * 1024;

/** A copy-on-write overlay filter (nbdkit-cow-filter). */
export function cowFilter(options: CowOptions = {}): Filter {
  const bs = options.blockSize ?? COW_BLOCK_SIZE;
  check(isPowerOf2(bs) && bs >= 4096, 'cow', `cow-block-size=${bs}: must be a power of 2 ≥ 4096`);
  if (options.file !== undefined) {
    // Said now, not as an EIO on every write later.
    const dir = path.dirname(path.resolve(options.file));
    let ok = false;
    try {
      fs.accessSync(dir, fs.constants.W_OK);
      ok = fs.statSync(dir).isDirectory();
    } catch {
      ok = false;
    }
    check(ok, 'cow', `cow-file=${options.file}: ${dir} is not a writable directory`);
    // The overlay file is the filter's own, made at the first write and deleted at exit: an existing
    // path (a file, the base image itself, a directory) is refused, never truncated.
    check(!fs.existsSync(options.file), 'cow', `cow-file=${options.file}: already exists (cow-file must name a new file: it is created at the first write and deleted at exit)`);
  }
  const store = options.file ? fileStore(options.file, bs) : memoryStore();
  const maxSize = options.maxSize ?? 0;
  check(Number.isSafeInteger(maxSize) && maxSize >= 0, 'cow', `cow-max-size=${maxSize}: must be a size ≥ 0`);
  const full = (b: number, length: number) => maxSize > 0 && !store.has(b) && store.bytes() + length > maxSize;
  /** Store a block, unless that would take the overlay over cow-max-size. */
  const put = async (b: number, data: Buffer) => {
    if (full(b, data.length)) throw new NbdRequestError('ENOSPC', `cow: overlay full (cow-max-size=${maxSize})`);
    await store.put(b, data);
  };
  const state = new Map<number, BlockState>();
  const locks = new BlockLocks();
  let closeRegistered = false;
  const onRead = (): boolean => (typeof options.onRead === 'string' ? fs.existsSync(options.onRead) : !!options.onRead);

  const bind = oneExport('cow');
  const wrap = (next: Backend, ctx: FilterContext): Backend => {
    bind(ctx.export);
    const size = next.size;
    if (size === undefined) throw new Error('cow: the backend below has no size');
    if (!closeRegistered) {
      closeRegistered = true;
      ctx.onClose(() => store.close());
    }
    const blockLen = (b: number) => Math.min(bs, size - b * bs);

    /** A fresh copy of block b's current contents (to modify). */
    const current = async (b: number): Promise<Buffer> => {
      const st = state.get(b);
      const len = blockLen(b);
      if (st === 'data') return Buffer.from(await store.get(b, len));
      if (st) return Buffer.alloc(len);
      return Buffer.from(readBuffer(await next.read(b * bs, len), len));
    };

    /** Change [offset, offset + length) block by block: `whole` for covered blocks, `patch` for partial ones. */
    const change = async (offset: number, length: number, whole: (b: number, from: number) => Promise<void>, patch: (buf: Buffer, at: number, from: number, n: number) => void) => {
      const end = offset + length;
      let steps = 0;
      for (let pos = offset; pos < end; ) {
        // A change of many blocks lets other requests run between its pieces.
        if (++steps % 1024 === 0) await new Promise((r) => setImmediate(r));
        const b = Math.floor(pos / bs);
        const bStart = b * bs;
        const stop = Math.min(end, bStart + blockLen(b));
        await locks.with(b, async () => {
          if (pos === bStart && stop === bStart + blockLen(b)) return whole(b, pos - offset);
          const buf = await current(b);
          patch(buf, pos - bStart, pos - offset, stop - pos);
          await put(b, buf);
          state.set(b, 'data');
        });
        pos = stop;
      }
    };

    const write = (offset: number, data: Buffer) =>
      change(
        offset,
        data.length,
        async (b, from) => {
          await put(b, Buffer.from(data.subarray(from, from + blockLen(b))));
          state.set(b, 'data');
        },
        (buf, at, from, n) => void data.copy(buf, at, from, from + n),
      );

    const clear = (kind: 'zero' | 'trim') => async (offset: number, length: number) => {
      const blocks = Math.ceil((offset + length) / bs) - Math.floor(offset / bs);
      if (state.size + blocks > COW_MAX_MARKS) {
        if (kind === 'trim') return;
        throw new NbdRequestError('ENOSPC', `cow: zeroing ${blocks} blocks would take the overlay past ${COW_MAX_MARKS} tracked blocks`);
      }
      return change(
        offset,
        length,
        async (b) => {
          state.set(b, kind);
          store.drop(b);
        },
        (buf, at, _from, n) => void buf.fill(0, at, at + n),
      );
    };

    /** Copy absent blocks in [first, last] from the base into the overlay (cow-on-read, cow-on-cache). */
    const keep = async (first: number, last: number, data?: Buffer) => {
      const base = data ?? readBuffer(await next.read(first * bs, (last - first) * bs + blockLen(last)), (last - first) * bs + blockLen(last));
      for (let b = first; b <= last; b++) {
        await locks.with(b, async () => {
          // Changed meanwhile (the change wins), or no room: a copy is only an optimisation.
          if (state.has(b) || full(b, blockLen(b))) return;
          const at = (b - first) * bs;
          await put(b, Buffer.from(base.subarray(at, at + blockLen(b))));
          state.set(b, 'data');
        });
      }
    };

    /** The first block from `b` on (up to `last`) the overlay has a state for, or last + 1. */
    const nextMarked = (b: number, last: number): number => {
      // Over a range wider than the overlay, look through the overlay's blocks, not the range's.
      if (last - b + 1 > state.size) {
        let best = last + 1;
        for (const k of state.keys()) if (k >= b && k < best) best = k;
        return best;
      }
      while (b <= last && !state.has(b)) b++;
      return b;
    };

    /** Runs of blocks in [offset, end): [pos, stop, state] with absent blocks coalesced. */
    function* runs(offset: number, end: number): Generator<[number, number, BlockState | undefined]> {
      for (let pos = offset; pos < end; ) {
        const b = Math.floor(pos / bs);
        const st = state.get(b);
        let stop = Math.min(end, b * bs + blockLen(b));
        if (!st && stop < end) stop = Math.min(end, nextMarked(b + 1, Math.floor((end - 1) / bs)) * bs);
        yield [pos, stop, st];
        pos = stop;
      }
    }

    const read = async (offset: number, length: number): Promise<Buffer> => {
      const out = Buffer.alloc(length);
      const copyIn = onRead();
      for (const [pos, stop, st] of runs(offset, offset + length)) {
        if (st === 'data') {
          const b = Math.floor(pos / bs);
          const buf = await store.get(b, blockLen(b));
          buf.copy(out, pos - offset, pos - b * bs, stop - b * bs);
        } else if (!st && copyIn) {
          const first = Math.floor(pos / bs);
          const last = Math.floor((stop - 1) / bs);
          const span = (last - first) * bs + blockLen(last);
          const base = readBuffer(await next.read(first * bs, span), span);
          base.copy(out, pos - offset, pos - first * bs, stop - first * bs);
          await keep(first, last, base);
        } else if (!st) {
          readBuffer(await next.read(pos, stop - pos), stop - pos).copy(out, pos - offset);
        } // zero / trim: already zeroes
      }
      return out;
    };

    const extents = async (offset: number, length: number, opts: { reqOne: boolean; context: string; maxExtents?: number }): Promise<Extent[]> => {
      const out: Extent[] = [];
      const max = opts.maxExtents ?? Infinity;
      for (const [pos, stop, st] of runs(offset, offset + length)) {
        if (st === 'data') out.push({ length: stop - pos, flags: 0 });
        else if (st === 'zero') out.push({ length: stop - pos, flags: STATE.NBD_STATE_ZERO });
        else if (st === 'trim') out.push({ length: stop - pos, flags: STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO });
        else if (next.extents) out.push(...normalizeExtents(await next.extents(pos, stop - pos, opts), stop - pos, false));
        else out.push({ length: stop - pos, flags: 0 });
        if (opts.reqOne || out.length >= max) break;
      }
      return out;
    };

    const cache = options.onCache
      ? async (offset: number, length: number) => {
          // CACHE is a hint: copy in at most COW_CACHE_MAX bytes of it (a 4 GiB CACHE must not copy 4 GiB).
          const first = Math.floor(offset / bs);
          const last = Math.floor((offset + Math.min(length, COW_CACHE_MAX) - 1) / bs);
          for (let b = first; b <= last; b++) if (!state.has(b)) await keep(b, b);
        }
      : next.cache && ((o: number, l: number) => next.cache!(o, l));

    return layer(next, {
      readOnly: false,
      multiConn: true,
      // Nothing the client writes is durable anyway: FUA is emulated by the (cheap) flush.
      fua: undefined,
      canFastZero: true,
      read,
      write: (o: number, d: Buffer, _opts: WriteOptions) => write(o, d),
      zero: clear('zero'),
      trim: clear('trim'),
      flush: () => store.flush(),
      extents,
      cache,
    });
  };

  return { name: 'cow', scope: 'shared', wrap };
}
