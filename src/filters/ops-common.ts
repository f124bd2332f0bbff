/**
 * What the operational filters (delay, error, log, stats, rate, retry)
 * share: one way to wrap every operation of a backend with code that runs
 * around it, nbdkit's names for the operations, and parsers for the
 * values their parameters take (durations, bit rates, errno names).
 */
import type { Backend, MaybePromise } from '../api/backend.js';
import { layer } from '../api/filter.js';
import { NbdRequestError } from '../api/errors.js';
import { ERRNO, errnoName, hostErrnoToNbd, type ErrnoName } from '../protocol/constants.js';
import type { RequestType } from '../api/request.js';
import { isThenable, mulberry32 } from '../plugins/common.js';

/** The operations a filter sees (writev counts as write). */
export type OpName = 'read' | 'write' | 'zero' | 'trim' | 'flush' | 'extents' | 'cache';
export const OP_NAMES: readonly OpName[] = ['read', 'write', 'zero', 'trim', 'flush', 'extents', 'cache'];

/** nbdkit's action names, as its log filter prints them. */
export const NBDKIT_ACTION: Readonly<Record<OpName, string>> = {
  read: 'Read',
  write: 'Write',
  zero: 'Zero',
  trim: 'Trim',
  flush: 'Flush',
  extents: 'Extents',
  cache: 'Cache',
};

/** A request-stream request type → the operation it is. */
export const OP_OF_TYPE: Readonly<Record<RequestType, OpName>> = {
  read: 'read',
  write: 'write',
  writeZeroes: 'zero',
  trim: 'trim',
  flush: 'flush',
  blockStatus: 'extents',
  cache: 'cache',
};

/** One call of an operation, as the filters describe it. */
export interface OpCall {
  readonly op: OpName;
  readonly offset: number;
  readonly count: number;
  readonly fua?: boolean;
  readonly noHole?: boolean;
  readonly fastZero?: boolean;
  readonly reqOne?: boolean;
}

/**
 * Code run around one call: `invoke(target)` performs the operation on
 * `target` (default: the backend below), and may be called more than once
 * (retry) or not at all (an injected error).
 */
export type Around = (call: OpCall, invoke: (target?: Backend) => MaybePromise<unknown>) => MaybePromise<unknown>;

/**
 * A backend with every operation `next` has wrapped by `around`; the
 * properties (size, block sizes, flags) forwarded unchanged, so the export
 * advertises exactly what it would without the filter.
 */
export function interceptOps(next: Backend, around: Around): Backend {
  const o: Record<string, unknown> = {};
  o.read = (offset: number, count: number) => around({ op: 'read', offset, count }, (b = next) => b.read(offset, count));
  if (next.write) {
    o.write = (offset: number, data: Buffer, opts: { fua: boolean }) =>
      around({ op: 'write', offset, count: data.length, fua: opts.fua }, (b = next) => b.write!(offset, data, opts));
    // Keep writev when the backend has it, so payloads in pieces are not joined just for the filter.
    if (next.writev) {
      o.writev = (offset: number, parts: readonly Buffer[], opts: { fua: boolean }) => {
        let count = 0;
        for (const p of parts) count += p.length;
        return around({ op: 'write', offset, count, fua: opts.fua }, (b = next) => (b.writev ? b.writev(offset, parts, opts) : b.write!(offset, Buffer.concat(parts), opts)));
      };
    }
  }
  if (next.zero) {
    o.zero = (offset: number, count: number, opts: { fua: boolean; noHole: boolean; fastZero: boolean }) =>
      around({ op: 'zero', offset, count, fua: opts.fua, noHole: opts.noHole, fastZero: opts.fastZero }, (b = next) => b.zero!(offset, count, opts));
  }
  if (next.trim) {
    o.trim = (offset: number, count: number, opts: { fua: boolean }) => around({ op: 'trim', offset, count, fua: opts.fua }, (b = next) => b.trim!(offset, count, opts));
  }
  if (next.flush) o.flush = () => around({ op: 'flush', offset: 0, count: 0 }, (b = next) => b.flush!());
  if (next.extents) {
    o.extents = (offset: number, count: number, opts: { reqOne: boolean; context: string }) =>
      around({ op: 'extents', offset, count, reqOne: opts.reqOne }, (b = next) => b.extents!(offset, count, opts));
  }
  // CACHE reaches the filter even when the backend has no cache (the server would answer it as a no-op):
  // as in nbdkit, an error, delay, log or stats filter sees every CACHE the client sends.
  o.cache = (offset: number, count: number) => around({ op: 'cache', offset, count }, (b = next) => (b.cache ? b.cache(offset, count) : undefined));
  return layer(next, o as Parameters<typeof layer>[1]);
}

/**
 * Run `fn` and tell `done` how it ended — at once when it returns or
 * throws, else when its promise settles — passing its result or error on
 * unchanged (a synchronous answer stays synchronous); `done` also gets the result of a call that succeeded.
 */
export function whenSettled<T>(fn: () => T | PromiseLike<T>, done: (failed: boolean, error?: unknown, value?: T) => void): T | Promise<T> {
  let r: T | PromiseLike<T>;
  try {
    r = fn();
  } catch (e) {
    done(true, e);
    throw e;
  }
  if (!isThenable(r)) {
    done(false, undefined, r);
    return r;
  }
  return Promise.resolve(r).then(
    (v) => (done(false, undefined, v), v),
    (e: unknown) => {
      done(true, e);
      throw e;
    },
  );
}

/** Wait `ms` on a timer (never a busy wait: other requests run meanwhile). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * nbdkit's durations: `SECS` (a number of seconds, fractions allowed) or
 * `NNms` (milliseconds). Returns milliseconds.
 */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(text);
  if (!m) throw new RangeError(`cannot parse duration "${text}" (examples: 2, 0.5, 100ms)`);
  const n = Number(m[1]);
  return m[2] === 'ms' ? n : n * 1000;
}

/**
 * nbdkit's bit rates: a number of bits per second, optionally with a
 * suffix K, M, G, T (powers of 1024, as nbdkit_parse_size reads them).
 */
export function parseBitRate(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt])?\s*(?:bps|bits?(?:\/s)?)?\s*$/i.exec(text);
  if (!m) throw new RangeError(`cannot parse rate "${text}" (bits per second; examples: 8000000, 512K, 8M, 1G)`);
  const mult = m[2] ? 1024 ** ('kmgt'.indexOf(m[2].toLowerCase()) + 1) : 1;
  const n = Number(m[1]) * mult;
  if (n <= 0) throw new RangeError(`rate "${text}" must be more than 0`);
  return n;
}

/** nbdkit's probabilities: `N%` or a number from 0 to 1. */
export function parseProbability(text: string): number {
  const t = text.trim();
  const pct = t.endsWith('%');
  const n = Number(pct ? t.slice(0, -1) : t);
  if (t === '' || t === '%' || !Number.isFinite(n)) throw new RangeError(`cannot parse rate "${text}" (examples: 10%, 0.1)`);
  const p = pct ? n / 100 : n;
  if (p < 0 || p > 1) throw new RangeError(`rate "${text}" is not between 0 and 1 (0% and 100%)`);
  return p;
}

/** The errno names a filter may choose (the NBD protocol's set). */
export const ERRNO_NAMES: readonly ErrnoName[] = (Object.keys(ERRNO) as string[]).map((k) => k.slice(4) as ErrnoName);

export function parseErrno(text: string): ErrnoName {
  const name = text.trim().toUpperCase().replace(/^NBD_/, '');
  if (!(ERRNO_NAMES as readonly string[]).includes(name) || name === 'SUCCESS') {
    throw new RangeError(`unknown errno "${text}" (one of ${ERRNO_NAMES.filter((n) => (n as string) !== 'SUCCESS').join(', ')})`);
  }
  return name as ErrnoName;
}

/** The NBD errno name a thrown error will reach the client as (as the server maps it, before flag checks). */
export function errnoOf(err: unknown): string {
  if (err instanceof NbdRequestError) return errnoName(err.errno).replace(/^NBD_/, '');
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return errnoName(hostErrnoToNbd(code)).replace(/^NBD_/, '');
}

/**
 * A small seeded generator (mulberry32) for reproducible error injection:
 * the same seed and the same request order give the same errors.
 */
export function seededRandom(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}
