/**
 * The optional native part of the file backend (native/nbd_file.c, built
 * at install by scripts/build-native.mjs): fallocate, SEEK_DATA/SEEK_HOLE,
 * posix_fadvise and the block-device ioctls, none of which Node's fs has.
 *
 * Loading never throws: a missing or broken addon (no compiler at install,
 * another OS, NBD_ENGINE_NO_NATIVE=1) gives `null` and a reason, and the
 * file backend falls back to what plain fs can do.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One extent of a regular file as SEEK_DATA/SEEK_HOLE see it. */
export interface FileExtent {
  readonly length: number;
  readonly hole: boolean;
}

/** The addon's calls, checked and typed. Every call runs on the thread pool. */
export interface FileNative {
  /**
   * fallocate(PUNCH_HOLE | KEEP_SIZE): deallocate, reads return zeroes. `sync`: fdatasync after,
   * in the same thread-pool job (FUA for one round trip instead of two).
   */
  punchHole(fd: number, offset: number, length: number, sync?: boolean): Promise<void>;
  /** fallocate(ZERO_RANGE | KEEP_SIZE): zeroes without writing data; `sync` as for punchHole. */
  zeroRange(fd: number, offset: number, length: number, sync?: boolean): Promise<void>;
  /** posix_fadvise(WILLNEED): start reading the range into the page cache. */
  fadviseWillneed(fd: number, offset: number, length: number): Promise<void>;
  /** ioctl(BLKDISCARD) on a block device; `sync` as for punchHole. */
  blkDiscard(fd: number, offset: number, length: number, sync?: boolean): Promise<void>;
  /** ioctl(BLKGETSIZE64): a block device's size in bytes. */
  blkGetSize64(fd: number): Promise<number>;
  /** Data and holes of [offset, offset + length), at most `maxExtents` of them, in order. */
  mapExtents(fd: number, offset: number, length: number): Promise<FileExtent[]>;
  /**
   * The same walk on the calling thread, at most `max` extents (default and cap `maxExtents`):
   * no thread-pool round trip (QEMU's file driver calls lseek inline too). Throws what
   * mapExtents rejects with.
   */
  mapExtentsSync(fd: number, offset: number, length: number, max?: number): FileExtent[];
  /**
   * preadv2(RWF_NOWAIT) into `buffer` at `offset`, on the calling thread: copies only what the page
   * cache holds, never waits for the disk. Returns the bytes copied (fewer than asked: the rest is
   * not cached or the file ends) or a negative errno (-EAGAIN: nothing cached; -EOPNOTSUPP: the
   * filesystem cannot). Absent in an addon built before version 3.
   */
  readonly preadNowait?: (fd: number, buffer: Buffer, offset: number) => number;
  readonly maxExtents: number;
}

interface RawAddon {
  punchHole(fd: number, offset: number, length: number, sync: boolean): Promise<void>;
  zeroRange(fd: number, offset: number, length: number, sync: boolean): Promise<void>;
  fadviseWillneed(fd: number, offset: number, length: number): Promise<void>;
  blkDiscard(fd: number, offset: number, length: number, sync: boolean): Promise<void>;
  blkGetSize64(fd: number): Promise<number>;
  mapExtents(fd: number, offset: number, length: number): Promise<number[]>;
  mapExtentsSync(fd: number, offset: number, length: number, max: number): number[];
  preadNowait?(fd: number, buffer: Buffer, offset: number): number;
  maxExtents: number;
  /**
   * The calls' version (2: punch, zero and discard take `sync`; mapExtentsSync. 3: preadNowait);
   * a build older than 2 is not used, a build of version 2 is used without preadNowait.
   */
  version?: number;
}

/** The addon version this code speaks (native/nbd_file.c's `version`). */
export const ADDON_VERSION = 3;
/** The oldest addon version still used (without the calls added since). */
export const ADDON_MIN_VERSION = 2;

const EBADF = 9;

export type NativeState = { readonly native: FileNative; readonly path: string } | { readonly native: null; readonly reason: string };

/** Where the build puts the addon, relative to the package root. */
export const ADDON_RELATIVE_PATH = 'native/build/Release/nbd_file.node';

/** The environment variable that turns the native part off (for tests and for comparing). */
export const NO_NATIVE_ENV = 'NBD_ENGINE_NO_NATIVE';

function packageRoot(): string {
  // src/backends/ (vitest) and dist/backends/ (built) are both two levels below the root.
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
}

function checkRange(fd: number, offset: number, length: number): void {
  for (const [name, v] of [['fd', fd], ['offset', offset], ['length', length]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`nbd_file: ${name} must be a non-negative safe integer, got ${v}`);
  }
}

/** The addon's flat [length, hole, length, hole, …] as objects. */
function extentsOf(flat: readonly number[]): FileExtent[] {
  const out: FileExtent[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push({ length: flat[i]!, hole: flat[i + 1] === 1 });
  return out;
}

/** Wrap the raw addon: argument checks in JS (clear messages), extents as objects. */
export function wrapAddon(raw: RawAddon): FileNative {
  return {
    maxExtents: raw.maxExtents,
    punchHole: async (fd, offset, length, sync = false) => (checkRange(fd, offset, length), raw.punchHole(fd, offset, length, sync)),
    zeroRange: async (fd, offset, length, sync = false) => (checkRange(fd, offset, length), raw.zeroRange(fd, offset, length, sync)),
    fadviseWillneed: async (fd, offset, length) => (checkRange(fd, offset, length), raw.fadviseWillneed(fd, offset, length)),
    blkDiscard: async (fd, offset, length, sync = false) => (checkRange(fd, offset, length), raw.blkDiscard(fd, offset, length, sync)),
    blkGetSize64: async (fd) => (checkRange(fd, 0, 0), raw.blkGetSize64(fd)),
    mapExtents: async (fd, offset, length) => {
      checkRange(fd, offset, length);
      return extentsOf(await raw.mapExtents(fd, offset, length));
    },
    mapExtentsSync: (fd, offset, length, max = raw.maxExtents) => {
      checkRange(fd, offset, length);
      if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`nbd_file: max must be a positive integer, got ${max}`);
      return extentsOf(raw.mapExtentsSync(fd, offset, length, Math.min(max, raw.maxExtents)));
    },
    // The hot path of every cached READ: the addon checks its own arguments (a TypeError).
    ...(typeof raw.preadNowait === 'function' && (raw.version ?? 0) >= 3 ? { preadNowait: raw.preadNowait.bind(raw) } : {}),
  };
}

let cached: NativeState | undefined;

/**
 * Load the addon once per process. `addonPath` (tests) overrides where it
 * is looked for; the environment variable NBD_ENGINE_NO_NATIVE=1 disables it.
 */
export function loadFileNative(addonPath?: string): NativeState {
  // Read the variable at every open (not cached), so one process can serve both ways.
  if (process.env[NO_NATIVE_ENV] === '1') return { native: null, reason: `${NO_NATIVE_ENV}=1` };
  if (addonPath === undefined && cached) return cached;
  let state: NativeState;
  const file = addonPath ?? path.join(packageRoot(), ADDON_RELATIVE_PATH);
  if (process.platform !== 'linux') state = { native: null, reason: `not built on ${process.platform}` };
  else if (!fs.existsSync(file)) state = { native: null, reason: `${file} not built (see docs/file-backend.md)` };
  else {
    try {
      const raw = createRequire(import.meta.url)(file) as RawAddon;
      if (typeof raw.mapExtents !== 'function' || typeof raw.punchHole !== 'function') throw new Error('not the nbd_file addon');
      // An addon built from older source would ignore `sync` (a FUA that does not reach the disk) and lack
      // mapExtentsSync: rebuild it. Version 2 lacks only preadNowait (every READ then takes the thread pool).
      const v = raw.version ?? 1;
      if (!(v >= ADDON_MIN_VERSION && v <= ADDON_VERSION)) throw new Error(`version ${v}, expected ${ADDON_VERSION} (rebuild: npm run build:native)`);
      state = { native: wrapAddon(raw), path: file };
    } catch (err) {
      state = { native: null, reason: `${file} failed to load: ${(err as Error).message}` };
    }
  }
  if (addonPath === undefined) cached = state;
  return state;
}

/**
 * The addon's calls for one open file, fenced by its close: the addon takes
 * a bare fd number, which the kernel hands to the next open() once closed,
 * so no call may start after `close()` began and close waits for those
 * still on the thread pool.
 */
export function fencedNative(native: FileNative): { native: FileNative; close(): Promise<void> } {
  const inflight = new Set<Promise<unknown>>();
  let closed = false;
  const fence =
    <A extends unknown[], R>(fn: (...a: A) => Promise<R>) =>
    (...a: A): Promise<R> => {
      if (closed) return Promise.reject(Object.assign(new Error('file backend closed'), { code: 'EBADF' }));
      const p = fn(...a);
      inflight.add(p);
      const done = () => void inflight.delete(p);
      p.then(done, done);
      return p;
    };
  return {
    native: {
      maxExtents: native.maxExtents,
      punchHole: fence(native.punchHole),
      zeroRange: fence(native.zeroRange),
      fadviseWillneed: fence(native.fadviseWillneed),
      blkDiscard: fence(native.blkDiscard),
      blkGetSize64: fence(native.blkGetSize64),
      mapExtents: fence(native.mapExtents),
      mapExtentsSync: (...a) => {
        if (closed) throw Object.assign(new Error('file backend closed'), { code: 'EBADF' });
        return native.mapExtentsSync(...a);
      },
      ...(native.preadNowait ? { preadNowait: (fd: number, buffer: Buffer, offset: number) => (closed ? -EBADF : native.preadNowait!(fd, buffer, offset)) } : {}),
    },
    close: async () => {
      closed = true;
      await Promise.allSettled([...inflight]);
    },
  };
}
