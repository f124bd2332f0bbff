/**
 * A validated request as the application sees it: what the seed library's
 * callback received (type, flags, handle/cookie, offset, length) plus the
 * export and connection it belongs to. Answered exactly once.
 */
import { camelNames, CMD, CMD_FLAG, ERRNO, errnoName, hostErrnoToNbd, type ErrnoName, type NbdErrno } from '../protocol/constants.js';
import type { RequestFrame } from '../protocol/frames.js';
import { payloadParts } from '../protocol/decoder.js';
import type { Extent } from '../protocol/encoder.js';
import type { ReadSegment } from '../protocol/replies.js';
import type { MetaContextSelection } from '../machines/types.js';
import { NbdError, NbdRequestError, specErrno } from './errors.js';
import { releaseRequestPayload } from '../transport/slab-account.js';
import { DEFAULTS } from '../defaults.js';
import { normalizeExtents } from './backend.js';

export type RequestType = 'read' | 'write' | 'flush' | 'trim' | 'cache' | 'writeZeroes' | 'blockStatus';

/** Command code → request type, derived from the CMD table (DISC and RESIZE never reach the application). */
const TYPE_NAMES: ReadonlyMap<number, RequestType> = camelNames(CMD, 'NBD_CMD_', ['NBD_CMD_DISC', 'NBD_CMD_RESIZE']);

export interface RequestFlags {
  readonly fua: boolean;
  readonly noHole: boolean;
  readonly df: boolean;
  readonly reqOne: boolean;
  readonly fastZero: boolean;
}

export interface ExportRef {
  readonly name: string;
  readonly size: number;
}

export interface ConnectionRef {
  readonly id: number;
  readonly peer: string;
  /** TLS state, and the PSK identity / certificate subject when known. */
  readonly tls: boolean;
  readonly tlsIdentity?: string;
}

/**
 * Where a request's outcome goes: a session, whose one reply encoder picks
 * the reply form negotiation fixed (simple, structured, extended), or a test
 * double. Each call answers the request; `released` is what it held (its
 * WRITE payload or READ length), now free for the connection's budget.
 */
export interface ReplySink {
  /** Success without data. */
  ok(cookie: bigint, offset: number, released: number): void;
  /**
   * A successful READ: exactly the requested bytes, one buffer or segments with holes; `df`: NBD_CMD_FLAG_DF.
   * `lent`: `data` is the buffer `lend` gave for this READ; the sink takes it back once the reply is out of it.
   */
  read(cookie: bigint, offset: number, data: Buffer | readonly ReadSegment[], df: boolean, released: number, lent?: boolean): void;
  /** A buffer of `length` bytes for one READ's data, lent until that READ's reply is written (absent: none lent, one is allocated). */
  lend?(length: number): Buffer;
  /** A successful BLOCK_STATUS: the extents of each selected context. */
  blockStatus(cookie: bigint, offset: number, contexts: ReadonlyArray<{ readonly id: number; readonly extents: readonly Extent[] }>, released: number): void;
  /** An error reply: the errno, and a message where the reply form carries one. */
  error(cookie: bigint, command: number, errno: number, message: string | undefined, offset: number, released: number): void;
  /** Extent descriptors a BLOCK_STATUS reply carries per context at most (default DEFAULTS.maxExtents); more are dropped. */
  readonly maxExtents?: number;
  /** Bytes the request counts against the connection's byte budget until answered, given back as `released` (absent: 0, a sink without flow control). */
  heldBytes?(frame: RequestFrame): number;
}

function decodeFlags(bits: number): RequestFlags {
  return {
    fua: (bits & CMD_FLAG.NBD_CMD_FLAG_FUA) !== 0,
    noHole: (bits & CMD_FLAG.NBD_CMD_FLAG_NO_HOLE) !== 0,
    df: (bits & CMD_FLAG.NBD_CMD_FLAG_DF) !== 0,
    reqOne: (bits & CMD_FLAG.NBD_CMD_FLAG_REQ_ONE) !== 0,
    fastZero: (bits & CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO) !== 0,
  };
}

export class NbdRequest {
  readonly type: RequestType;
  /** The wire command code. */
  readonly command: number;
  /** Raw command flag bits. */
  readonly rawFlags: number;
  /** The opaque 8-byte cookie (historically "handle"). */
  readonly cookie: bigint;
  readonly offset: number;
  readonly length: number;
  /** The decoded frame (its payload is joined lazily when it arrived in pieces). */
  private readonly frame: RequestFrame;
  readonly export: ExportRef;
  readonly connection: ConnectionRef;
  /** Meta contexts selected on this connection (for blockStatus). */
  readonly contexts: readonly MetaContextSelection[];
  private answered = false;
  private flagsCache: RequestFlags | undefined;
  /** The buffer readBuffer() lent, if it was called. */
  private lent: Buffer | undefined;
  private payloadReleased: boolean;

  constructor(
    frame: RequestFrame,
    private readonly sink: ReplySink,
    exp: ExportRef,
    connection: ConnectionRef,
    contexts: readonly MetaContextSelection[],
  ) {
    this.type = TYPE_NAMES.get(frame.type)!;
    this.command = frame.type;
    this.rawFlags = frame.flags;
    this.cookie = frame.cookie;
    this.offset = frame.offset;
    this.length = frame.length;
    this.frame = frame;
    // A placed payload went into memory the backend handed out: there is nothing to read here.
    this.payloadReleased = frame.placed === true;
    this.export = exp;
    this.connection = connection;
    this.contexts = contexts;
  }

  /**
   * BLOCK_STATUS: the most extents the reply carries per context (the server's `maxExtents` limit);
   * `reply` drops any beyond, so a backend may stop computing there.
   */
  get maxExtents(): number {
    return this.sink.maxExtents ?? DEFAULTS.maxExtents;
  }

  /** The WRITE payload was received straight into memory the backend handed out (Backend.writeTargets). */
  get isPlaced(): boolean {
    return this.frame.placed === true;
  }

  /**
   * @internal The server's backend path, for a placed WRITE: apply the
   * received payload to the export (the placement's `commit`), before the
   * reply. The payload is complete: a cut-off one never becomes a request.
   */
  commitPlacement(): void | PromiseLike<void> {
    const commit = this.frame.commitPlacement;
    if (commit === undefined) throw new Error(`${this.toString()}: placed WRITE without a commit`);
    return commit();
  }

  /**
   * WRITE payload: a view of the received bytes, valid until the request is
   * answered (`reply` / `fail`); the server then reuses the memory, and
   * `data` throws NBD_ERR_PAYLOAD_RELEASED. Copy what you keep longer.
   */
  get data(): Buffer | undefined {
    if (this.payloadReleased) throw payloadReleasedError(this);
    return this.frame.payload;
  }

  /**
   * The WRITE payload as the pieces it arrived in (views, in order) when a
   * large payload spanned socket reads; undefined otherwise (use `data`).
   * Reading these instead of `data` saves joining them into one buffer.
   * Valid as long as `data` is.
   */
  get dataParts(): readonly Buffer[] | undefined {
    if (this.payloadReleased) throw payloadReleasedError(this);
    return payloadParts(this.frame);
  }

  /**
   * @internal Nobody reads the WRITE payload any more (the backend's write
   * returned or settled, or the request is answered): its socket read memory
   * may be reused, so `data` / `dataParts` throw from now on instead of
   * showing reused memory. Once only; later calls do nothing.
   */
  releasePayload(): void {
    if (this.payloadReleased) return;
    this.payloadReleased = true;
    releaseRequestPayload(this.frame);
  }

  /** Bytes this request counts against the connection's byte budget until it is answered (the sink's flow control decides). */
  private get held(): number {
    return this.sink.heldBytes?.(this.frame) ?? 0;
  }

  get flags(): RequestFlags {
    return (this.flagsCache ??= decodeFlags(this.rawFlags));
  }

  /**
   * READ: a buffer of exactly `length` bytes (contents undefined) to fill and answer with
   * (`reply(buffer)`), lent by the server, which takes it back once the reply is written and lends it
   * again to a later READ: no allocation per READ (the `readBufferPool` limit). It is yours until you
   * answer; after `reply(buffer)` do not touch it. Answered otherwise (`fail`, another buffer), it is
   * simply dropped. The same buffer on every call; undefined for other commands and for 0-byte READs.
   */
  readBuffer(): Buffer | undefined {
    if (this.command !== CMD.NBD_CMD_READ || this.length === 0 || this.answered) return undefined;
    return (this.lent ??= this.sink.lend ? this.sink.lend(this.length) : Buffer.allocUnsafe(this.length));
  }

  /** The handle, as the seed library called the cookie. */
  get handle(): bigint {
    return this.cookie;
  }

  get isAnswered(): boolean {
    return this.answered;
  }

  private claim(what: string): void {
    if (this.answered) {
      throw new NbdError(
        'NBD_ERR_ALREADY_ANSWERED',
        `${this.type} request (cookie ${this.cookie}) answered twice: ${what} after an earlier answer`,
      );
    }
    this.answered = true;
    // Answered: the WRITE payload's lifetime ends here (see `data`).
    if (!this.payloadReleased && this.command === CMD.NBD_CMD_WRITE) this.releasePayload();
  }

  /**
   * Answer successfully. READ: the data (exactly `length` bytes, as one
   * Buffer or as segments with holes). BLOCK_STATUS: the extents (for every
   * selected context) or a map context name → extents. Others: nothing.
   */
  reply(data?: Buffer | readonly ReadSegment[] | readonly Extent[] | ReadonlyMap<string, readonly Extent[]>): void {
    if (this.type === 'read') {
      // The common case, one Buffer of the right length: no segment list.
      if (Buffer.isBuffer(data) && data.length === this.length) {
        this.claim('reply');
        this.sink.read(this.cookie, this.offset, data, (this.rawFlags & CMD_FLAG.NBD_CMD_FLAG_DF) !== 0, this.held, data === this.lent);
        return;
      }
      const segments = toSegments(data as Buffer | readonly ReadSegment[] | undefined);
      let total = 0;
      for (const s of segments ?? []) {
        const n = segmentLength(s);
        if (n < 0) {
          // A negative or fractional hole, data that is not bytes: it would put the wrong bytes on the wire.
          this.fail('EIO', `read returned an invalid segment (${describeSegment(s)})`);
          throw new NbdError('NBD_ERR_BAD_REPLY', `read reply with an invalid segment (${describeSegment(s)}): a segment is { data: Buffer } or { hole: n } with n a non-negative integer`);
        }
        total += n;
      }
      if (segments === null) {
        this.fail('EIO', `read returned ${describeSegment(data)}, not a Buffer or a list of segments`);
        throw new NbdError('NBD_ERR_BAD_REPLY', `read reply is ${describeSegment(data)}, not a Buffer or a list of segments`);
      }
      if (total !== this.length) {
        // A short or long read would desynchronise the client: fail it instead.
        this.fail('EIO', `read returned ${total} bytes, expected ${this.length}`);
        throw new NbdError('NBD_ERR_BAD_REPLY', `read reply of ${total} bytes for a ${this.length}-byte request`);
      }
      this.claim('reply');
      this.sink.read(this.cookie, this.offset, segments, this.flags.df, this.held);
      return;
    }
    if (this.type === 'blockStatus') {
      this.claim('reply');
      const byContext = data instanceof Map ? (data as ReadonlyMap<string, readonly Extent[]>) : undefined;
      const max = this.maxExtents;
      const reqOne = (this.rawFlags & CMD_FLAG.NBD_CMD_FLAG_REQ_ONE) !== 0;
      const list = this.contexts.map((c) => {
        const given = byContext ? byContext.get(c.name) : (data as readonly Extent[] | undefined);
        // Whatever the handler gave becomes a valid reply (reply.block-status-chunks): inside the request, no
        // empty or negative extents, neighbours merged, one with REQ_ONE; none at all is one data extent.
        const extents = normalizeExtents(given ?? [], this.length, reqOne);
        // A reply describing less than was asked is valid (the client asks again from where it ended).
        return { id: c.id, extents: extents.length > max ? extents.slice(0, max) : extents };
      });
      this.sink.blockStatus(this.cookie, this.offset, list, this.held);
      return;
    }
    this.claim('reply');
    this.sink.ok(this.cookie, this.offset, this.held);
  }

  /**
   * Answer with an error: an errno name (`'EIO'`), its NBD value, or an
   * Error (NbdRequestError's errno, a SystemError's host code, else EIO).
   */
  fail(error: ErrnoName | NbdErrno | Error, message?: string): void {
    this.claim('fail');
    const errno = toErrno(error, this.flags);
    const text = message ?? (error instanceof Error ? error.message : undefined);
    this.sink.error(this.cookie, this.command, errno, text, this.offset, this.held);
  }

  toString(): string {
    return `${this.type}(offset=${this.offset}, length=${this.length}, cookie=${this.cookie})`;
  }
}

function payloadReleasedError(req: NbdRequest): NbdError {
  return new NbdError('NBD_ERR_PAYLOAD_RELEASED', `${req.toString()}: the WRITE payload was stored by the backend and released; copy it in the handler to keep it`);
}

/** The segments a READ answer stands for; null when it is none of the accepted shapes. */
function toSegments(data: Buffer | readonly ReadSegment[] | undefined): readonly ReadSegment[] | null {
  if (data === undefined) return [];
  if (Buffer.isBuffer(data)) return [{ data }];
  // A Uint8Array (what fs and web APIs give) is bytes too: viewed as a Buffer, not copied.
  if (data instanceof Uint8Array) return [{ data: Buffer.from((data as Uint8Array).buffer, (data as Uint8Array).byteOffset, (data as Uint8Array).byteLength) }];
  return Array.isArray(data) ? data : null;
}

/** Bytes a READ segment covers, or −1 when it is not one (a negative, fractional or huge hole, data that is not bytes). */
function segmentLength(s: unknown): number {
  if (typeof s !== 'object' || s === null) return -1;
  if ('data' in s) return Buffer.isBuffer(s.data) ? s.data.length : -1;
  if ('hole' in s) return Number.isSafeInteger(s.hole) && (s.hole as number) >= 0 ? (s.hole as number) : -1;
  return -1;
}

function describeSegment(s: unknown): string {
  if (typeof s !== 'object' || s === null) return String(s);
  if ('hole' in s) return `hole ${String(s.hole)}`;
  if ('data' in s) return `data that is ${s.data === null ? 'null' : typeof s.data === 'object' ? (s.data as object).constructor?.name ?? 'an object' : typeof s.data}`;
  return 'an object with neither data nor hole';
}

export function toErrno(error: ErrnoName | NbdErrno | Error, flags: RequestFlags): NbdErrno {
  let errno: NbdErrno;
  // A name or number the spec does not define (12345, 0, a host errno, a typo) must not reach the wire: EIO instead.
  if (typeof error === 'number' || typeof error === 'string') errno = specErrno(error);
  // Checked again here: a subclass or a caller may have set `errno` to anything.
  else if (error instanceof NbdRequestError) errno = specErrno(error.errno);
  else return hostErrnoToNbd((error as NodeJS.ErrnoException).code, { fastZero: flags.fastZero, df: flags.df });
  // transmission.error-values: ENOTSUP only for FAST_ZERO, EOVERFLOW only for DF; otherwise EINVAL.
  if (errno === ERRNO.NBD_ENOTSUP && !flags.fastZero) return ERRNO.NBD_EINVAL;
  if (errno === ERRNO.NBD_EOVERFLOW && !flags.df) return ERRNO.NBD_EINVAL;
  return errno;
}

export { errnoName };
