/**
 * TRIM, WRITE_ZEROES, BLOCK_STATUS and CACHE for the file backend, on top
 * of the native calls (file-native.ts). Chosen the way nbdkit's file plugin
 * chooses, per operation:
 *
 * - TRIM: punch a hole (regular file) or BLKDISCARD (block device). TRIM is
 *   advisory, so where the filesystem or device cannot, it is a no-op.
 * - WRITE_ZEROES: punch a hole when the client allows one (no NO_HOLE), else
 *   fallocate ZERO_RANGE; either way no data is written. Only when both are
 *   refused (EOPNOTSUPP: tmpfs has no ZERO_RANGE, old filesystems neither)
 *   are zeroes written — unless the client asked FAST_ZERO, which then gets
 *   ENOTSUP so it can pick another way (qemu-img convert does).
 * - BLOCK_STATUS: SEEK_DATA / SEEK_HOLE, on the event loop unless the file is being written, holes HOLE|ZERO.
 * - CACHE: posix_fadvise WILLNEED.
 *
 * What the filesystem refused once is not asked again (a refusal is a
 * property of the filesystem, and asking costs a thread-pool round trip).
 */
import type { Backend, Extent, WriteOptions, ZeroOptions } from '../api/backend.js';
import { NbdRequestError } from '../api/errors.js';
import type { Logger } from '../transport/logger.js';
import type { FileExtent, FileNative } from './file-native.js';

const HOLE_ZERO = 3; // NBD_STATE_HOLE | NBD_STATE_ZERO
/** Extents of one BLOCK_STATUS walked on the event loop before the walk moves to the thread pool. */
export const INLINE_EXTENTS = 32;

export interface SparseContext {
  readonly fd: number;
  readonly native: FileNative;
  /** A block device: BLKDISCARD for trim, no SEEK_HOLE map. */
  readonly device: boolean;
  /** Export size (extents are clipped to it). */
  readonly size: number;
  /** The fallback: write real zeroes over [offset, offset + length). */
  writeZeroes(offset: number, length: number): Promise<void>;
  /** fdatasync (FUA where the native call did not do it). */
  datasync(): Promise<void>;
  /**
   * Whether BLOCK_STATUS may walk inline now: false while a write, trim, zero or flush of this
   * file is in flight (lseek waits for the inode lock those hold, for as long as they run) or when
   * inline walking is turned off (`inlineExtents: false`). Default: always.
   */
  inlineWalk?(): boolean;
  readonly logger?: Logger;
  readonly name: string;
}

export type SparseOps = Required<Pick<Backend, 'trim' | 'zero' | 'cache'>> & Pick<Backend, 'extents'> & { readonly canFastZero: boolean };

/**
 * What a block device's discard and zeroing are aligned to: a multiple of every logical sector size
 * in use (512 and 4096), so the aligned part of a range is one the device accepts.
 */
export const DEVICE_ALIGN = 4096;

/** The largest DEVICE_ALIGN-aligned part of [offset, offset + length), as [offset, length] (length 0: none). */
function inward(offset: number, length: number): [number, number] {
  const start = Math.ceil(offset / DEVICE_ALIGN) * DEVICE_ALIGN;
  const end = Math.floor((offset + length) / DEVICE_ALIGN) * DEVICE_ALIGN;
  return end > start ? [start, end - start] : [offset, 0];
}

/** Errors that mean "this filesystem / device cannot", not "this request failed". */
function unsupported(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'ENOTTY';
}

export function sparseOps(ctx: SparseContext): SparseOps {
  const { fd, native, device } = ctx;
  // What the filesystem still may support; set false at its first refusal.
  const can = { punch: true, zeroRange: true, discard: true };
  const refused = (what: keyof typeof can, err: unknown) => {
    can[what] = false;
    ctx.logger?.info?.(`file ${ctx.name}: ${(err as Error).message}; not asked again`);
  };

  // FUA (opts.fua): the native call's `sync` does fdatasync in its own job; the other ways sync after.
  const trim = async (offset: number, length: number, opts: WriteOptions): Promise<void> => {
    const what = device ? 'discard' : 'punch';
    // A device discards whole sectors only (EINVAL otherwise): the aligned part of the range, and
    // nothing when there is none (TRIM is advisory).
    const [at, len] = device ? inward(offset, length) : [offset, length];
    if (len > 0 && can[what]) {
      try {
        return await (device ? native.blkDiscard(fd, at, len, opts.fua) : native.punchHole(fd, at, len, opts.fua));
      } catch (err) {
        if (!unsupported(err)) throw err;
        refused(what, err);
      }
    }
    if (opts.fua) await ctx.datasync();
  };

  // A device zeroes whole sectors only (fallocate and BLKDISCARD refuse the rest with EINVAL): the
  // aligned middle takes the fast ways, the unaligned head and tail are written as zeroes, and a
  // FAST_ZERO that has such edges fails with ENOTSUP (writing them is not fast).
  const zero = async (offset: number, length: number, opts: ZeroOptions): Promise<void> => {
    if (!device || length === 0) return zeroRange(offset, length, opts);
    const [at, len] = inward(offset, length);
    if (at === offset && len === length) return zeroRange(offset, length, opts);
    if (opts.fastZero) throw new NbdRequestError('ENOTSUP', `file ${ctx.name}: no fast way to zero a range that is not aligned to ${DEVICE_ALIGN} bytes on a block device`);
    if (len === 0) {
      await ctx.writeZeroes(offset, length);
    } else {
      await ctx.writeZeroes(offset, at - offset);
      await zeroRange(at, len, { ...opts, fua: false });
      await ctx.writeZeroes(at + len, offset + length - (at + len));
    }
    if (opts.fua) await ctx.datasync();
  };

  const zeroRange = async (offset: number, length: number, opts: ZeroOptions): Promise<void> => {
    if (length === 0) return opts.fua ? ctx.datasync() : undefined;
    // A hole is allowed: punching both zeroes and frees the space. On a block
    // device the kernel does it only where the hardware can (no slow fallback).
    if (!opts.noHole && can.punch) {
      try {
        return await native.punchHole(fd, offset, length, opts.fua);
      } catch (err) {
        if (!unsupported(err)) throw err;
        refused('punch', err);
      }
    }
    // ZERO_RANGE on a block device may make the kernel write zeroes itself:
    // not fast, so a FAST_ZERO request does not take that way.
    if (can.zeroRange && !(device && opts.fastZero)) {
      try {
        return await native.zeroRange(fd, offset, length, opts.fua);
      } catch (err) {
        if (!unsupported(err)) throw err;
        refused('zeroRange', err);
      }
    }
    if (opts.fastZero) throw new NbdRequestError('ENOTSUP', `file ${ctx.name}: no fast way to zero here`);
    await ctx.writeZeroes(offset, length);
    if (opts.fua) await ctx.datasync();
  };

  // The first INLINE_EXTENTS extents are walked inline (mapExtentsSync), as QEMU's file driver
  // does: SEEK_DATA / SEEK_HOLE answer from the filesystem's extent tree in microseconds, where a
  // thread-pool round trip took 0.1-3 ms on a busy 2-vCPU host (bench/RESULTS.md, "Issue 15:
  // native FUA, inline BLOCK_STATUS …"). A range with more extents than that (a fragmented image)
  // is finished on the thread pool, so the event loop never does more than INLINE_EXTENTS steps of
  // the walk; and while this file is being written (ctx.inlineWalk() false) the whole walk goes to
  // the thread pool: on ext4 lseek waits for the inode lock a buffered write holds (a 1 GiB write
  // kept it for 1.2 s), which must not stop every connection's event loop.
  const toExtents = (map: readonly FileExtent[]): Extent[] => map.map((e) => ({ length: e.length, flags: e.hole ? HOLE_ZERO : 0 }));
  const failed = (err: unknown, len: number): Extent[] => {
    // "All data" is always a correct answer; a failing lseek must not fail the client.
    ctx.logger?.warn(`file ${ctx.name}: SEEK_DATA/SEEK_HOLE failed (${(err as Error).message}); reporting data`);
    return [{ length: len, flags: 0 }];
  };
  const extents = (offset: number, length: number): readonly Extent[] | Promise<readonly Extent[]> => {
    const len = Math.min(length, ctx.size - offset);
    if (len <= 0) return [{ length, flags: 0 }];
    if (ctx.inlineWalk && !ctx.inlineWalk()) return native.mapExtents(fd, offset, len).then(toExtents, (err: unknown) => failed(err, len));
    let first: FileExtent[];
    try {
      first = native.mapExtentsSync(fd, offset, len, INLINE_EXTENTS);
    } catch (err) {
      return failed(err, len);
    }
    const covered = first.reduce((n, e) => n + e.length, 0);
    if (covered >= len || first.length < INLINE_EXTENTS) return toExtents(first);
    return native.mapExtents(fd, offset + covered, len - covered).then(
      (rest) => toExtents([...first, ...rest].slice(0, native.maxExtents)),
      (err: unknown) => {
        // What was mapped is right; the client asks again for the rest.
        ctx.logger?.warn(`file ${ctx.name}: SEEK_DATA/SEEK_HOLE failed (${(err as Error).message}); answering the first ${first.length} extents`);
        return toExtents(first);
      },
    );
  };

  const cache = async (offset: number, length: number): Promise<void> => {
    const len = Math.min(length, ctx.size - offset);
    if (len > 0) await native.fadviseWillneed(fd, offset, len);
  };

  // Devices have no SEEK_HOLE map worth asking (the whole device is "data").
  return device ? { trim, zero, cache, canFastZero: true } : { trim, zero, cache, extents, canFastZero: true };
}
