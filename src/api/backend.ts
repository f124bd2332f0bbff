/**
 * The Backend interface (an nbdkit plugin, in TypeScript) and how its
 * shape decides the transmission flags (the way nbdkit derives them from a plugin's callbacks).
 */
import { FLAG, STATE } from '../protocol/constants.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';

export type MaybePromise<T> = T | Promise<T>;

export interface WriteOptions {
  /** NBD_CMD_FLAG_FUA: durable before the reply (only passed when `fua: 'native'`). */
  readonly fua: boolean;
}
export interface ZeroOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  readonly noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP unless zeroing is fast. */
  readonly fastZero: boolean;
}
export interface ExtentsOptions {
  /** NBD_CMD_FLAG_REQ_ONE: only the first extent is wanted. */
  readonly reqOne: boolean;
  /** The meta context asked for ('base:allocation'). */
  readonly context: string;
  /**
   * The most extents the reply will carry (the server's maxExtents limit); any beyond are dropped, so a
   * backend may stop there (the client asks again from where the reply ends). Absent: no hint.
   */
  readonly maxExtents?: number;
}

/** Where a zero-copy WRITE's payload is received (Backend.writeTargets), and how it is applied. */
export interface WritePlacement {
  /** Memory the payload is read into, in order, exactly the WRITE's length in total; invisible to reads. */
  readonly targets: readonly Buffer[];
  /** Apply the received payload to the export. Called at most once, only for a complete payload. */
  commit(): MaybePromise<void>;
}

/** An extent as a backend reports it: base:allocation flags (HOLE = 1, ZERO = 2). */
export type { Extent, ReadSegment };

/**
 * What a backend can do. `read` is required; every other operation is
 * optional and its presence decides what the export advertises, the way
 * nbdkit derives flags from a plugin's callbacks.
 */
export interface Backend {
  /** Size in bytes, if the backend knows it (the export's `size` overrides). */
  readonly size?: number;
  /** Read exactly `length` bytes; may return holes as `{ hole: n }` segments. */
  read(offset: number, length: number): MaybePromise<Buffer | readonly ReadSegment[]>;
  /**
   * Optional, as nbdkit's `pread`: fill all of `target` (`target.length` bytes) with the data at
   * `offset`. Present ⇒ the server answers READs with buffers it lends and takes back once the reply
   * is written (`readBufferPool`), calling this instead of `read`: no allocation per READ. `target` is
   * valid until `readInto` returns or its promise settles; do not keep it. `read` is still required
   * (filters and other callers use it). Filters forward `readInto` only when they do not change reads.
   */
  readInto?(offset: number, target: Buffer): MaybePromise<void>;
  /**
   * Present ⇒ writable (no READ_ONLY flag).
   *
   * Payload lifetime: `data` is a view of the server's socket read memory,
   * valid until `write` returns or, when it returns a promise, until that
   * promise settles (resolved or rejected). The server then reuses the
   * memory: copy what you keep longer.
   */
  write?(offset: number, data: Buffer, options: WriteOptions): MaybePromise<void>;
  /**
   * Optional: the same as `write` for a payload that arrived in pieces
   * (consecutive, in order). Present ⇒ large WRITE payloads spanning
   * socket reads are passed as those pieces, saving a copy. `parts` have
   * the same lifetime as `write`'s `data`: valid until `writev` returns or
   * its promise settles; copy what you keep.
   */
  writev?(offset: number, parts: readonly Buffer[], options: WriteOptions): MaybePromise<void>;
  /**
   * Optional zero-copy WRITE, for storage in this process's memory: return
   * memory to receive a large WRITE's payload in — `targets`, in order,
   * exactly `length` bytes in total — and `commit`, which makes those bytes
   * the export's data for [offset, offset + length); or null for the
   * ordinary path (`write` / `writev`). Called synchronously when the
   * header of a WRITE of ≥ 64 KiB arrives (already validated; no flags
   * except FUA when `fua` is 'native' — then `flush` runs after `commit`,
   * before the reply). The server reads the payload from the socket straight
   * into the targets and calls `commit` once, only when every byte has
   * arrived, before replying; `write` is not called.
   *
   * A WRITE that never completes (the client disconnects in the middle of
   * the payload, or the request is refused) is never committed and its
   * targets are simply dropped: the export must stay exactly as it was. So
   * the targets must not be storage that reads (or other writes) see until
   * `commit` — hand out scratch memory and copy or swap it in on commit.
   */
  writeTargets?(offset: number, length: number): WritePlacement | null;
  /** Present ⇒ SEND_FLUSH, and FUA emulated through it. */
  flush?(): MaybePromise<void>;
  /** Present ⇒ SEND_TRIM. */
  trim?(offset: number, length: number, options: WriteOptions): MaybePromise<void>;
  /** Present ⇒ native WRITE_ZEROES; absent ⇒ emulated by writing zeroes. */
  zero?(offset: number, length: number, options: ZeroOptions): MaybePromise<void>;
  /** Present ⇒ native CACHE; absent ⇒ CACHE is a no-op. */
  cache?(offset: number, length: number): MaybePromise<void>;
  /** Present ⇒ real base:allocation extents; absent ⇒ one "data" extent. */
  extents?(offset: number, length: number, options: ExtentsOptions): MaybePromise<readonly Extent[]>;
  /** Called when the server closes. */
  close?(): MaybePromise<void>;
  /** FUA: 'native' passes the flag to write/zero/trim; 'emulate' flushes after; default from `flush`. */
  readonly fua?: 'native' | 'emulate' | 'none';
  /** Zeroing is cheap (SEND_FAST_ZERO honoured natively). Default: false when `zero` exists. */
  readonly canFastZero?: boolean;
  /** Writes are visible across connections and FLUSH is global (CAN_MULTI_CONN). */
  readonly multiConn?: boolean;
  readonly rotational?: boolean;
  readonly readOnly?: boolean;
  /**
   * Block size constraints; defaults min 1, preferred 4096, max 32 MiB. The maximum must be a multiple of the
   * minimum (or 0xffffffff); the one advertised is at most `maxPayload`, rounded down to a multiple of the minimum.
   */
  readonly blockSizes?: { readonly minimum?: number; readonly preferred?: number; readonly maximum?: number };
}

/** Flags for an export served by the request stream instead of a Backend. */
export interface ExportFlags {
  readonly write?: boolean;
  readonly flush?: boolean;
  readonly fua?: boolean;
  readonly trim?: boolean;
  readonly zero?: boolean;
  readonly fastZero?: boolean;
  readonly cache?: boolean;
  readonly multiConn?: boolean;
  readonly rotational?: boolean;
  /** Answer BLOCK_STATUS from the stream (else: one synthesised "data" extent). */
  readonly extents?: boolean;
}

/** What the server does for each operation of one export. */
export interface Capabilities {
  readonly write: boolean;
  readonly flush: boolean;
  readonly fua: 'native' | 'emulate' | 'none';
  readonly trim: boolean;
  readonly zero: 'native' | 'emulate' | 'none';
  readonly fastZero: boolean;
  readonly cache: 'native' | 'noop';
  readonly extents: boolean;
  readonly multiConn: boolean;
  readonly rotational: boolean;
}

/** Derive capabilities from a backend's shape (as nbdkit does from a plugin's callbacks). */
export function backendCapabilities(b: Backend, readOnly = false): Capabilities {
  const write = !readOnly && !b.readOnly && typeof b.write === 'function';
  const flush = typeof b.flush === 'function';
  const fua = !write ? 'none' : (b.fua ?? (flush ? 'emulate' : 'none'));
  const zero = !write ? 'none' : typeof b.zero === 'function' ? 'native' : 'emulate';
  // nbdkit: fast zero is advertised when zeroing is emulated (it fails fast
  // with ENOTSUP), and for native zeroing only when the backend says so.
  const fastZero = zero === 'emulate' ? true : zero === 'native' ? (b.canFastZero ?? false) : false;
  return {
    write,
    flush,
    fua: fua === 'emulate' && !flush ? 'none' : fua,
    trim: write && typeof b.trim === 'function',
    zero,
    fastZero,
    cache: typeof b.cache === 'function' ? 'native' : 'noop',
    extents: typeof b.extents === 'function',
    multiConn: b.multiConn ?? false,
    rotational: b.rotational ?? false,
  };
}

/** Capabilities of a request-stream export from its declared flags. */
export function flagCapabilities(f: ExportFlags = {}, readOnly = false): Capabilities {
  const write = !readOnly && f.write !== false;
  return {
    write,
    flush: !!f.flush,
    fua: write && f.fua ? 'native' : 'none',
    trim: write && !!f.trim,
    zero: write && f.zero ? 'native' : 'none',
    fastZero: write && !!f.zero && !!f.fastZero,
    cache: 'noop',
    extents: !!f.extents,
    multiConn: !!f.multiConn,
    rotational: !!f.rotational,
  };
}

/** Transmission flags for capabilities (HAS_FLAGS and SEND_DF are added per connection). */
export function transmissionFlags(c: Capabilities, opts: { cache?: boolean } = {}): number {
  let f = FLAG.NBD_FLAG_HAS_FLAGS;
  if (!c.write) f |= FLAG.NBD_FLAG_READ_ONLY;
  if (c.flush) f |= FLAG.NBD_FLAG_SEND_FLUSH;
  if (c.fua !== 'none') f |= FLAG.NBD_FLAG_SEND_FUA;
  if (c.rotational) f |= FLAG.NBD_FLAG_ROTATIONAL;
  if (c.trim) f |= FLAG.NBD_FLAG_SEND_TRIM;
  if (c.zero !== 'none') f |= FLAG.NBD_FLAG_SEND_WRITE_ZEROES;
  if (c.zero !== 'none' && c.fastZero) f |= FLAG.NBD_FLAG_SEND_FAST_ZERO;
  if (c.multiConn) f |= FLAG.NBD_FLAG_CAN_MULTI_CONN;
  if (opts.cache ?? true) f |= FLAG.NBD_FLAG_SEND_CACHE;
  return f;
}

/**
 * Make a backend's extents fit the reply rules (reply.block-status-chunks): at least one
 * extent, none empty, inside [offset, offset + length) (clipped), equal
 * neighbours merged; with REQ_ONE exactly one. An empty answer becomes one
 * "allocated, unknown" extent (status 0 is always safe).
 */
export function normalizeExtents(extents: readonly Extent[], length: number, reqOne: boolean): Extent[] {
  const out: Extent[] = [];
  let covered = 0;
  // What a buggy backend or request-stream handler returns must still make a valid reply: anything but
  // an array counts as no extents; entries whose length is not a number ≥ 1 are skipped, fractions rounded down.
  for (const e of Array.isArray(extents) ? extents : []) {
    if (covered >= length) break;
    const el: unknown = (e as Extent | null)?.length;
    if (typeof el !== 'number' || !(el >= 1)) continue;
    const len = Math.min(Math.floor(el), length - covered);
    const flags = (e.flags >>> 0) & (STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO);
    const last = out[out.length - 1];
    if (last && last.flags === flags) out[out.length - 1] = { length: last.length + len, flags };
    else out.push({ length: len, flags });
    covered += len;
  }
  if (out.length === 0) out.push({ length: Math.max(length, 1), flags: 0 });
  return reqOne ? [out[0]!] : out;
}
