/**
 * A file or block device through a FileHandle. FLUSH and FUA by fdatasync
 * (with the native addon FUA is native: TRIM and WRITE_ZEROES sync in the
 * same thread-pool job as their fallocate);
 * read-only when asked. Opened once, shared by every connection (multi-conn
 * safe: one page cache, fdatasync is global).
 *
 * Sparse images and devices: with the native addon (file-native.ts) TRIM
 * punches holes, WRITE_ZEROES zeroes without writing data, FAST_ZERO is
 * honoured, BLOCK_STATUS reports holes (file-sparse.ts), CACHE prefetches,
 * and a device's size comes from BLKGETSIZE64. Without it (not built, or
 * NBD_ENGINE_NO_NATIVE=1, or `native: false`) the backend falls back to
 * plain fs: everything reads as data and WRITE_ZEROES is emulated by the
 * server writing zeroes. One log line at open says which.
 */
import fs from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Backend } from '../api/backend.js';
import type { Logger } from '../transport/logger.js';
import { fencedNative, loadFileNative, type FileNative } from './file-native.js';
import { sparseOps } from './file-sparse.js';
import { writeZeroChunks } from '../plugins/common.js';

/** Most buffers one pwritev takes (Linux's IOV_MAX). */
const IOV_MAX = 1024;

export interface FileBackendOptions {
  readonly path: string;
  readonly readOnly?: boolean;
  /** Create the file with this size if it does not exist. */
  readonly createSize?: number;
  /**
   * Use the native addon when it is built (default true). false: the plain-fs
   * fallback, as when the addon is missing (also NBD_ENGINE_NO_NATIVE=1).
   */
  readonly native?: boolean;
  /** Where the one line saying native vs fallback goes (native: info, fallback: warn). */
  readonly logger?: Logger;
  /**
   * BLOCK_STATUS walks SEEK_DATA / SEEK_HOLE on the event loop when nothing writes the file (default
   * true; docs/file-backend.md). false: always on the thread pool — for files where lseek itself may
   * wait (NFS, FUSE), at the cost of a thread-pool round trip per BLOCK_STATUS.
   */
  readonly inlineExtents?: boolean;
  /**
   * READs of at most this many bytes first copy what the page cache holds on the event loop
   * (preadv2 with RWF_NOWAIT, native part version 3; it never waits for the disk), and only the rest
   * goes to the thread pool (default 64 KiB; 0: every READ on the thread pool). A READ of cached
   * data then costs no thread-pool round trip. Bigger READs stay on the pool, whose threads copy in
   * parallel with the event loop (docs/file-backend.md).
   */
  readonly inlineReadMax?: number;
}

/**
 * Default `inlineReadMax`. A 64 KiB copy takes a few µs, less than the event loop spends on a
 * thread-pool round trip; nbdcopy's 256 KiB READs copied inline made a 1 GiB copy of a cached image
 * 1.4–1.8× slower (the event loop copied what four pool threads copy side by side).
 */
export const DEFAULT_INLINE_READ_MAX = 64 * 1024;
/** preadNowait's answers that mean the filesystem cannot do RWF_NOWAIT reads at all. */
const NOWAIT_UNSUPPORTED = new Set([-95 /* EOPNOTSUPP */, -22 /* EINVAL */, -38 /* ENOSYS */]);

export interface FileBackend extends Backend {
  readonly size: number;
  readonly path: string;
  /** 'native': holes, trim, fast zeroing; 'fallback': plain fs (see `fallbackReason`). */
  readonly sparse: 'native' | 'fallback';
  readonly fallbackReason?: string;
}


/** Size of a regular file or a block device (stat reports 0 for devices). */
async function deviceSize(file: string, st: fs.Stats, fd: number, native: FileNative | null): Promise<number> {
  if (!st.isBlockDevice()) return st.size;
  if (native) {
    try {
      return await native.blkGetSize64(fd);
    } catch {
      // Fall through to sysfs, which every Linux has for a block device.
    }
  }
  const real = fs.realpathSync(file);
  const sys = `/sys/class/block/${path.basename(real)}/size`;
  return Number(fs.readFileSync(sys, 'utf8').trim()) * 512;
}

export async function fileBackend(options: FileBackendOptions | string): Promise<FileBackend> {
  const opts: FileBackendOptions = typeof options === 'string' ? { path: options } : options;
  if (opts.createSize !== undefined && !fs.existsSync(opts.path)) {
    const fh = await open(opts.path, 'w');
    await fh.truncate(opts.createSize);
    await fh.close();
  }
  const state = opts.native === false ? { native: null, reason: 'native: false' } : loadFileNative();
  const fenced = state.native ? fencedNative(state.native) : null;
  const reason = state.native ? '' : state.reason;
  const native = fenced?.native ?? null;
  // As nbdkit's file plugin: a file this process may not write (mode 0444, a read-only mount, an
  // immutable file) is served read-only, with one line saying so, rather than not at all.
  let readOnly = opts.readOnly ?? false;
  let fh: FileHandle;
  try {
    fh = await open(opts.path, readOnly ? 'r' : 'r+').catch((err: NodeJS.ErrnoException) => {
      if (readOnly || (err.code !== 'EACCES' && err.code !== 'EPERM' && err.code !== 'EROFS')) throw err;
      return open(opts.path, 'r').then((h) => {
        readOnly = true;
        opts.logger?.warn(`file ${path.basename(opts.path)}: cannot be opened for writing (${err.code}): served read-only`);
        return h;
      });
    });
  } catch (err) {
    await fenced?.close();
    throw err;
  }
  let size: number;
  let st: fs.Stats;
  try {
    st = await fh.stat();
    size = await deviceSize(opts.path, st, fh.fd, native);
  } catch (err) {
    await fenced?.close();
    await fh.close();
    throw err;
  }
  const device = st.isBlockDevice();

  const inlineReadMax = opts.inlineReadMax ?? DEFAULT_INLINE_READ_MAX;
  if (!(Number.isSafeInteger(inlineReadMax) && inlineReadMax >= 0)) {
    await fenced?.close();
    await fh.close();
    throw new RangeError(`fileBackend: inlineReadMax must be a non-negative integer, got ${String(inlineReadMax)}`);
  }
  // Off for good once the filesystem says it cannot (NFS, FUSE, …): one failed call, not one per READ.
  let nowait = native?.preadNowait && inlineReadMax > 0 ? native.preadNowait : undefined;
  const readOnPool = async (buf: Buffer, done: number, offset: number, length: number): Promise<void> => {
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        // Past EOF of a file that shrank under us: zeroes, like a sparse tail.
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
  };
  // Fill `buf` from `offset`: cached data straight from the page cache; what is not cached (or past a
  // shrunk file's end) from the pool. Synchronous (undefined) when everything was cached.
  const readInto = (offset: number, buf: Buffer): undefined | Promise<void> => {
    const length = buf.length;
    let done = 0;
    if (nowait !== undefined && length <= inlineReadMax) {
      const n = nowait(fh.fd, buf, offset);
      if (n === length) return undefined;
      if (n > 0) done = n;
      else if (NOWAIT_UNSUPPORTED.has(n)) nowait = undefined;
    }
    return readOnPool(buf, done, offset, length);
  };
  const read = (offset: number, length: number): Buffer | Promise<Buffer> => {
    const buf = Buffer.allocUnsafe(length);
    const r = readInto(offset, buf);
    return r === undefined ? buf : r.then(() => buf);
  };
  const writeAll = async (offset: number, data: Buffer): Promise<void> => {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  };
  // A payload that arrived in pieces goes to the file as those pieces (pwritev): no joining copy, no
  // payload-sized buffer per WRITE for the collector (4 MiB writes spent most of their time on both).
  const writevAll = async (offset: number, parts: readonly Buffer[]): Promise<void> => {
    let list = parts.filter((p) => p.length > 0);
    let at = offset;
    while (list.length > 0) {
      const batch = list.length > IOV_MAX ? list.slice(0, IOV_MAX) : list;
      const { bytesWritten } = await fh.writev(batch as Buffer[], at);
      if (bytesWritten === 0) throw new Error(`writev at ${at} wrote nothing`);
      at += bytesWritten;
      // Drop what was written; a part written only in part continues from where it stopped.
      let n = bytesWritten;
      let i = 0;
      while (i < list.length && n >= list[i]!.length) n -= list[i++]!.length;
      list = i < list.length ? [list[i]!.subarray(n), ...list.slice(i + 1)] : [];
    }
  };
  // Writes, trims, zeroes and flushes of this file in flight: while any runs, BLOCK_STATUS does not
  // walk on the event loop (see inlineExtents).
  let mutating = 0;
  const tracked =
    <A extends unknown[], R>(fn: (...a: A) => R | Promise<R>) =>
    async (...a: A): Promise<R> => {
      mutating++;
      try {
        return await fn(...a);
      } finally {
        mutating--;
      }
    };
  const writeZeroes = (offset: number, length: number): Promise<void> => writeZeroChunks(writeAll, offset, length);

  const base = {
    size,
    path: opts.path,
    read,
    // The server's lent buffers (readBufferPool): no allocation per READ.
    readInto,
    flush: tracked(() => fh.datasync()),
    // Native calls use the bare fd: let them finish before it can be reused.
    close: async () => {
      await fenced?.close();
      await fh.close();
    },
    multiConn: true,
    readOnly,
  };
  const name = path.basename(opts.path);
  let backend: FileBackend;
  if (native) {
    opts.logger?.info?.(`file ${name}: native sparse support (${device ? 'block device: fallocate, BLKGETSIZE64, BLKDISCARD' : 'fallocate, SEEK_DATA/SEEK_HOLE'})`);
    const inline = opts.inlineExtents !== false;
    const ops = sparseOps({ fd: fh.fd, native, device, size, writeZeroes, datasync: () => fh.datasync(), inlineWalk: () => inline && mutating === 0, logger: opts.logger, name });
    // Read-only: no trim/zero (the server would not send them, and they must not be advertised).
    // FUA native: trim and zero sync in the native call's own job (one thread-pool trip, as nbdkit's file plugin).
    const writeOps = readOnly ? {} : { trim: tracked(ops.trim), zero: tracked(ops.zero), canFastZero: ops.canFastZero, fua: 'native' as const };
    backend = { ...base, sparse: 'native', ...writeOps, cache: ops.cache, ...(ops.extents ? { extents: ops.extents } : {}) };
  } else {
    opts.logger?.warn(`file ${name}: no native sparse support (${reason}): holes read as data, zeroing writes zeroes`);
    backend = { ...base, sparse: 'fallback', fallbackReason: reason };
  }
  if (!readOnly) {
    // With native FUA the flag reaches write: write, then fdatasync. (Fallback: the server emulates FUA by flush.)
    (backend as { write?: Backend['write'] }).write =
      backend.sparse === 'native'
        ? tracked(async (offset: number, data: Buffer, w: { fua: boolean }) => (await writeAll(offset, data), w.fua ? fh.datasync() : undefined))
        : (offset, data) => writeAll(offset, data);
    (backend as { writev?: Backend['writev'] }).writev =
      backend.sparse === 'native'
        ? tracked(async (offset: number, parts: readonly Buffer[], w: { fua: boolean }) => (await writevAll(offset, parts), w.fua ? fh.datasync() : undefined))
        : (offset, parts) => writevAll(offset, parts);
  }
  return backend;
}
