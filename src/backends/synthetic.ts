/**
 * Backends whose content is computed, not stored: null (zeroes, writes
 * discarded), zero (an empty disk) and pattern (each 8-byte word is its own
 * offset, big-endian) — nbdkit's null, zero and pattern plugins.
 */
import { STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { Backend } from '../api/backend.js';

const HOLE_ZERO = STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;

function checkSize(what: string, size: number): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`${what}: size must be a safe integer ≥ 0 (got ${size})`);
  return size;
}

export interface NullBackendOptions {
  /** Export size in bytes (default 0, as nbdkit's null). */
  readonly size?: number;
  /** Advertise READ_ONLY (writes are refused instead of discarded). */
  readonly readOnly?: boolean;
}

/**
 * nbdkit's null plugin: reads are zeroes (sent as holes, nothing is
 * allocated), writes, trims and zeroes are accepted and discarded, and the
 * whole disk is one hole that reads as zeroes in BLOCK_STATUS.
 */
export function nullBackend(options: NullBackendOptions | number = {}): Backend & { readonly size: number } {
  const opts = typeof options === 'number' ? { size: options } : options;
  const size = checkSize('null backend', opts.size ?? 0);
  return {
    size,
    read: (_offset, length): ReadSegment[] => [{ hole: length }],
    write() {},
    // Declared so a payload in pieces is not joined first, only to be dropped.
    writev() {},
    flush() {},
    fua: 'native',
    trim() {},
    zero() {},
    // Nothing to do, so zeroing is as fast as it gets (nbdkit's null says so too).
    canFastZero: true,
    cache() {},
    extents: (_offset, length): Extent[] => [{ length, flags: HOLE_ZERO }],
    // Nothing is stored, so every connection sees the same (nothing).
    multiConn: true,
    readOnly: opts.readOnly,
  };
}

/**
 * nbdkit's (deprecated) zero plugin: a read-only disk of zero bytes, for
 * corner cases of clients. It takes no parameters; for zeroes of a given
 * size use `nullBackend({ size, readOnly: true })`.
 */
export function zeroBackend(): Backend & { readonly size: number } {
  return {
    size: 0,
    read: (_offset, length): ReadSegment[] => [{ hole: length }],
    // Only zero-length requests fit in a 0-byte disk; what there is of it is a hole, as with null.
    extents: (_offset, length): Extent[] => [{ length, flags: HOLE_ZERO }],
    readOnly: true,
    multiConn: true,
  };
}

export interface PatternBackendOptions {
  /** Export size in bytes (required, as for nbdkit's pattern). */
  readonly size: number;
}

const TWO32 = 2 ** 32;

/**
 * Fill `buf` with the pattern for the 8-aligned offset `start`: word i is
 * start + 8i as a big-endian 64-bit number. Written as two 32-bit halves
 * (no BigInt per word); the high half only changes every 4 GiB.
 */
export function fillPattern(buf: Buffer, start: number): void {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
  const words = Math.floor(buf.length / 8);
  let hi = Math.floor(start / TWO32);
  let lo = start - hi * TWO32;
  for (let i = 0, at = 0; i < words; i++, at += 8) {
    view.setUint32(at, hi);
    view.setUint32(at + 4, lo);
    lo += 8;
    if (lo >= TWO32) {
      lo -= TWO32;
      hi++;
    }
  }
}

/**
 * The pattern's bytes at `offset`, into all of `target`: whole words straight in, a partial word at
 * either end through an 8-byte scratch.
 */
function patternAt(offset: number, target: Buffer): void {
  let done = 0;
  const skip = offset % 8;
  if (skip !== 0) {
    const word = Buffer.allocUnsafe(8);
    fillPattern(word, offset - skip);
    done = word.copy(target, 0, skip, Math.min(8, skip + target.length));
  }
  const whole = Math.floor((target.length - done) / 8) * 8;
  if (whole > 0) fillPattern(target.subarray(done, done + whole), offset + done);
  done += whole;
  if (done < target.length) {
    const word = Buffer.allocUnsafe(8);
    fillPattern(word, offset + done);
    word.copy(target, done, 0, target.length - done);
  }
}

/**
 * nbdkit's pattern plugin, byte for byte: read-only; every 8-byte aligned
 * word holds its own offset, big-endian; a size that is not a multiple of 8
 * cuts the last word short.
 */
export function patternBackend(options: PatternBackendOptions | number): Backend & { readonly size: number } {
  const opts = typeof options === 'number' ? { size: options } : options;
  const size = checkSize('pattern backend', opts.size);
  return {
    size,
    read(offset, length): Buffer {
      const buf = Buffer.allocUnsafe(length);
      patternAt(offset, buf);
      return buf;
    },
    // Into the server's lent buffer (readBufferPool): no allocation per READ, so reading back many
    // big READs does not leave their buffers to the collector.
    readInto(offset, target): void {
      patternAt(offset, target);
    },
    readOnly: true,
    // Computed from the offset: every connection reads the same.
    multiConn: true,
  };
}
