/**
 * Test-side NBD wire codec: the *client's* view of the protocol.
 *
 * Written from the spec (doc/proto.md in NetworkBlockDevice/nbd), and
 * deliberately independent of `src/`: nothing here imports the server's
 * constants, encoders or decoder, so a test that builds bytes with this module
 * and decodes them with `src/` (or the other way round) checks the two
 * against each other instead of against themselves.
 *
 * Two halves:
 *  - encoders for client → server bytes (client flags, options, requests);
 *  - strict parsers for server → client bytes (greeting, option replies,
 *    EXPORT_NAME reply, simple replies, structured / extended chunks and
 *    their payloads). Parsers throw `WireError` on anything malformed or
 *    truncated, so a test that parses a server's output also validates it.
 *
 * All integers are big-endian. 64-bit values are `bigint` on the
 * parsing side; encoders accept `number | bigint`.
 */

// ── spec numbers (magics, option replies, chunk types), repeated here on purpose ─

/** Magic numbers, as written in the spec. */
export const W = {
  NBDMAGIC: 0x4e42444d41474943n,
  IHAVEOPT: 0x49484156454f5054n,
  REP_MAGIC: 0x0003e889045565a9n,
  REQUEST_MAGIC: 0x25609513,
  SIMPLE_REPLY_MAGIC: 0x67446698,
  STRUCTURED_REPLY_MAGIC: 0x668e33ef,
  EXTENDED_REQUEST_MAGIC: 0x21e41c71,
  EXTENDED_REPLY_MAGIC: 0x6e8a278c,
} as const;

/** Structured chunk types. */
export const CHUNK = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** NBD_REPLY_FLAG_DONE. */
export const DONE = 0x0001;

/** Client flags (u32, client → server): FIXED_NEWSTYLE | NO_ZEROES is 3. */
export const CLIENT_FLAG = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;

/** Option codes. */
export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Option reply types; errors have bit 31 set. */
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
  ERR_EXT_HEADER_REQD: 0x8000000a,
} as const;

/** True for an option reply type that is an error (bit 31 set). */
export const isRepError = (type: number): boolean => type >= 0x80000000;

/** The reply that ends an option's answer: ACK or an error. */
export const isFinalRep = (type: number): boolean => type === REP.ACK || isRepError(type);

/** The spec's error values (doc/proto.md, "Error values"). */
export const ERRNO_SPEC = {
  NBD_EPERM: 1,
  NBD_EIO: 5,
  NBD_ENOMEM: 12,
  NBD_EINVAL: 22,
  NBD_ENOSPC: 28,
  NBD_EOVERFLOW: 75,
  NBD_ENOTSUP: 95,
  NBD_ESHUTDOWN: 108,
} as const;

/** Information types inside NBD_REP_INFO (and requested by INFO / GO). */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Command types. */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;

/** Command flags (u16). */
export const CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16, PAYLOAD_LEN: 32 } as const;

/** Sizes of the fixed frames, in bytes. */
export const SIZE = {
  GREETING: 18,
  OPTION_HEADER: 16,
  OPTION_REPLY_HEADER: 20,
  REQUEST: 28,
  EXTENDED_REQUEST: 32,
  SIMPLE_REPLY: 16,
  STRUCTURED_REPLY: 20,
  EXTENDED_REPLY: 32,
} as const;

/** Thrown by every parser on malformed or truncated server bytes. */
export class WireError extends Error {
  override readonly name = 'WireError';
}

// ── small utilities ──────────────────────────────────────────────────────

/** Bytes from a hex string; whitespace, `_` and `|` are ignored so fixtures can be laid out by field. */
export function hex(s: string): Buffer {
  const clean = s.replace(/[\s_|]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-f]/i.test(clean)) throw new Error(`bad hex fixture: ${s}`);
  return Buffer.from(clean, 'hex');
}

/** Concatenate a `Buffer[]` frame (or several) into one buffer. */
export function flat(...frames: ReadonlyArray<Buffer | readonly Buffer[]>): Buffer {
  const parts: Buffer[] = [];
  for (const f of frames) {
    if (Buffer.isBuffer(f)) parts.push(f);
    else parts.push(...f);
  }
  return Buffer.concat(parts);
}

/** Cut `buf` at the given (sorted, in-range) offsets; views, no copies. */
export function splitAt(buf: Buffer, offsets: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const o of offsets) {
    out.push(buf.subarray(at, o));
    at = o;
  }
  out.push(buf.subarray(at));
  return out;
}

/** Cut `buf` into chunks of `size` bytes (the last may be shorter). */
export function chunksOf(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length; at += size) out.push(buf.subarray(at, at + size));
  return out;
}

function str(s: string | Buffer): Buffer {
  return typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

function u64(v: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v), 0);
  return b;
}

// ── client → server encoders ─────────────────────────────────────────────

/** Newstyle step 2: the 4-byte client flags. */
export function encodeClientFlags(flags: number): Buffer {
  return u32(flags);
}

/**
 * Option request: IHAVEOPT · code u32 · length u32 · data.
 * `declaredLength` overrides the length field (to build lying frames).
 */
export function encodeOption(code: number, data: Buffer = Buffer.alloc(0), declaredLength?: number): Buffer {
  return Buffer.concat([u64(W.IHAVEOPT), u32(code), u32(declaredLength ?? data.length), data]);
}

/** INFO / GO data: name length u32 · name · count u16 · info codes u16[]. */
export function encodeInfoGoData(name: string | Buffer, infos: readonly number[] = []): Buffer {
  const n = str(name);
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

/** LIST/SET_META_CONTEXT data: name length u32 · name · count u32 · {length u32 · query}[]. */
export function encodeMetaContextData(name: string | Buffer, queries: ReadonlyArray<string | Buffer>): Buffer {
  const n = str(name);
  const parts: Buffer[] = [u32(n.length), n, u32(queries.length)];
  for (const q of queries) {
    const b = str(q);
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

/** The header fields of a transmission request (compact or extended). */
export interface RequestFields {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number | bigint;
  /** u32 in compact requests, u64 in extended ones. */
  length: number | bigint;
}

/** Compact request: 28-byte header, then the payload (WRITE) if given. */
export function encodeRequest(r: RequestFields, payload?: Buffer): Buffer {
  return encodeRequestFrame(false, r, payload);
}

/** Extended request: 32-byte header (64-bit length), then the payload if given. */
export function encodeExtendedRequest(r: RequestFields, payload?: Buffer): Buffer {
  return encodeRequestFrame(true, r, payload);
}

/** The two request layouts differ only in the magic and the length field (u32 or u64). */
function encodeRequestFrame(extended: boolean, r: RequestFields, payload?: Buffer): Buffer {
  const h = Buffer.alloc(extended ? SIZE.EXTENDED_REQUEST : SIZE.REQUEST);
  h.writeUInt32BE(extended ? W.EXTENDED_REQUEST_MAGIC : W.REQUEST_MAGIC, 0);
  h.writeUInt16BE(r.flags, 4);
  h.writeUInt16BE(r.type, 6);
  h.writeBigUInt64BE(r.cookie, 8);
  h.writeBigUInt64BE(BigInt(r.offset), 16);
  if (extended) h.writeBigUInt64BE(BigInt(r.length), 24);
  else h.writeUInt32BE(Number(r.length), 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

// ── server → client parsers: handshake ───────────────────────────────────

export interface Greeting {
  handshakeFlags: number;
}

/** Newstyle step 1: exactly 18 bytes, NBDMAGIC · IHAVEOPT · flags u16. */
export function parseGreeting(buf: Buffer): Greeting {
  if (buf.length !== 18) throw new WireError(`greeting is ${buf.length} bytes, expected 18`);
  if (buf.readBigUInt64BE(0) !== W.NBDMAGIC) throw new WireError('greeting lacks NBDMAGIC');
  if (buf.readBigUInt64BE(8) !== W.IHAVEOPT) throw new WireError('greeting lacks IHAVEOPT');
  return { handshakeFlags: buf.readUInt16BE(16) };
}

export interface OptionReply {
  /** The option code being answered (echo). */
  option: number;
  /** NBD_REP_* */
  type: number;
  /** Reply data (a view into the input). */
  data: Buffer;
}

/** A sequence of fixed-newstyle option replies; the buffer must end on a reply boundary. */
export function parseOptionReplies(buf: Buffer): OptionReply[] {
  const out: OptionReply[] = [];
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < 20) throw new WireError(`truncated option reply header at ${at}`);
    if (buf.readBigUInt64BE(at) !== W.REP_MAGIC) throw new WireError(`bad option reply magic at ${at}`);
    const option = buf.readUInt32BE(at + 8);
    const type = buf.readUInt32BE(at + 12);
    const len = buf.readUInt32BE(at + 16);
    if (buf.length - at - 20 < len) throw new WireError(`truncated option reply data at ${at}`);
    out.push({ option, type, data: buf.subarray(at + 20, at + 20 + len) });
    at += 20 + len;
  }
  return out;
}

/** Headerless EXPORT_NAME reply: 10 bytes, or 134 with the zero padding. */
export function parseExportNameReply(buf: Buffer): { size: bigint; flags: number; zeroes: boolean } {
  if (buf.length !== 10 && buf.length !== 134) throw new WireError(`EXPORT_NAME reply is ${buf.length} bytes`);
  if (buf.length === 134 && buf.subarray(10).some((b) => b !== 0)) throw new WireError('EXPORT_NAME padding is not zero');
  return { size: buf.readBigUInt64BE(0), flags: buf.readUInt16BE(8), zeroes: buf.length === 134 };
}

/** NBD_REP_SERVER data: name length u32 · name · optional description. */
export function parseRepServer(data: Buffer): { name: string; description: string } {
  if (data.length < 4) throw new WireError('NBD_REP_SERVER shorter than 4');
  const n = data.readUInt32BE(0);
  if (n > data.length - 4) throw new WireError('NBD_REP_SERVER name runs past the reply');
  return { name: data.toString('utf8', 4, 4 + n), description: data.toString('utf8', 4 + n) };
}

/** NBD_REP_META_CONTEXT data: context id u32 · name. */
export function parseRepMetaContext(data: Buffer): { id: number; name: string } {
  if (data.length < 4) throw new WireError('NBD_REP_META_CONTEXT shorter than 4');
  return { id: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}

/** A decoded NBD_REP_INFO payload. */
export type InfoReply =
  | { info: 'export'; size: bigint; flags: number }
  | { info: 'name'; name: string }
  | { info: 'description'; description: string }
  | { info: 'blockSize'; minimum: number; preferred: number; maximum: number }
  | { info: 'unknown'; code: number; data: Buffer };

/** NBD_REP_INFO data with its exact-length rules (EXPORT = 12, BLOCK_SIZE = 14). */
export function parseRepInfo(data: Buffer): InfoReply {
  if (data.length < 2) throw new WireError('NBD_REP_INFO shorter than 2');
  const code = data.readUInt16BE(0);
  switch (code) {
    case 0:
      if (data.length !== 12) throw new WireError(`NBD_INFO_EXPORT of ${data.length} bytes, expected 12`);
      return { info: 'export', size: data.readBigUInt64BE(2), flags: data.readUInt16BE(10) };
    case 1:
      return { info: 'name', name: data.toString('utf8', 2) };
    case 2:
      return { info: 'description', description: data.toString('utf8', 2) };
    case 3:
      if (data.length !== 14) throw new WireError(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes, expected 14`);
      return { info: 'blockSize', minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
    default:
      return { info: 'unknown', code, data: data.subarray(2) };
  }
}

// ── server → client parsers: transmission ────────────────────────────────

/** Simple reply. `data` only for a successful READ whose cookie is in `readLengths`. */
export interface SimpleReply {
  kind: 'simple';
  cookie: bigint;
  error: number;
  data?: Buffer;
}

/** Structured chunk / extended chunk (`offset` present only for extended). */
export interface ReplyChunk {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  offset?: bigint;
  payload: Buffer;
}

export type TransmissionReply = SimpleReply | ReplyChunk;

export interface TransmissionParseOptions {
  /** Structured replies negotiated: structured chunks allowed (simple replies still are). */
  structured?: boolean;
  /** Extended headers negotiated: only 32-byte extended chunks are allowed. */
  extended?: boolean;
  /**
   * Cookie → requested length of the outstanding READs. A simple reply with
   * error 0 for such a cookie is followed by exactly that many data bytes
   * (reply.negotiated-mode: the client can only frame simple replies this way).
   */
  readLengths?: ReadonlyMap<bigint, number>;
}

/** Parse a byte stream of transmission replies; the buffer must end on a reply boundary. */
export function parseTransmissionReplies(buf: Buffer, o: TransmissionParseOptions = {}): TransmissionReply[] {
  const out: TransmissionReply[] = [];
  const reads = o.readLengths ?? new Map<bigint, number>();
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < 4) throw new WireError(`truncated reply magic at ${at}`);
    const magic = buf.readUInt32BE(at);
    if (magic === W.SIMPLE_REPLY_MAGIC) {
      if (o.extended) throw new WireError('simple reply while extended headers are on (reply.negotiated-mode)');
      if (buf.length - at < 16) throw new WireError(`truncated simple reply at ${at}`);
      const error = buf.readUInt32BE(at + 4);
      const cookie = buf.readBigUInt64BE(at + 8);
      at += 16;
      const len = reads.get(cookie);
      if (error === 0 && len !== undefined) {
        if (buf.length - at < len) throw new WireError(`truncated READ data for cookie ${cookie}`);
        out.push({ kind: 'simple', cookie, error, data: buf.subarray(at, at + len) });
        at += len;
      } else {
        out.push({ kind: 'simple', cookie, error });
      }
    } else if (magic === W.STRUCTURED_REPLY_MAGIC) {
      if (o.extended) throw new WireError('compact structured chunk while extended headers are on');
      if (!o.structured) throw new WireError('structured chunk without structured replies negotiated');
      if (buf.length - at < 20) throw new WireError(`truncated structured chunk header at ${at}`);
      const len = buf.readUInt32BE(at + 16);
      if (buf.length - at - 20 < len) throw new WireError(`truncated structured chunk payload at ${at}`);
      out.push({
        kind: 'chunk',
        flags: buf.readUInt16BE(at + 4),
        type: buf.readUInt16BE(at + 6),
        cookie: buf.readBigUInt64BE(at + 8),
        payload: buf.subarray(at + 20, at + 20 + len),
      });
      at += 20 + len;
    } else if (magic === W.EXTENDED_REPLY_MAGIC) {
      if (!o.extended) throw new WireError('extended chunk without extended headers negotiated');
      if (buf.length - at < 32) throw new WireError(`truncated extended chunk header at ${at}`);
      const len = buf.readBigUInt64BE(at + 24);
      if (BigInt(buf.length - at - 32) < len) throw new WireError(`truncated extended chunk payload at ${at}`);
      out.push({
        kind: 'chunk',
        flags: buf.readUInt16BE(at + 4),
        type: buf.readUInt16BE(at + 6),
        cookie: buf.readBigUInt64BE(at + 8),
        offset: buf.readBigUInt64BE(at + 16),
        payload: buf.subarray(at + 32, at + 32 + Number(len)),
      });
      at += 32 + Number(len);
    } else {
      throw new WireError(`bad reply magic 0x${magic.toString(16)} at ${at}`);
    }
  }
  return out;
}

// ── chunk payload decoders ────────────────────────────────────────────────

/** OFFSET_DATA: offset u64 · data (≥ 1 byte). `data` is a view into the payload. */
export function decodeOffsetData(p: Buffer): { offset: bigint; data: Buffer } {
  if (p.length < 9) throw new WireError(`OFFSET_DATA payload of ${p.length} bytes, expected ≥ 9`);
  return { offset: p.readBigUInt64BE(0), data: p.subarray(8) };
}

/** OFFSET_HOLE: offset u64 · size u32 (exactly 12 bytes, size non-zero). */
export function decodeOffsetHole(p: Buffer): { offset: bigint; size: number } {
  if (p.length !== 12) throw new WireError(`OFFSET_HOLE payload of ${p.length} bytes, expected 12`);
  const size = p.readUInt32BE(8);
  if (size === 0) throw new WireError('OFFSET_HOLE of size 0');
  return { offset: p.readBigUInt64BE(0), size };
}

/** BLOCK_STATUS: context id u32 · n × {length u32 · flags u32}, n ≥ 1. */
export function decodeBlockStatus(p: Buffer): { contextId: number; extents: Array<{ length: number; flags: number }> } {
  if (p.length < 12 || (p.length - 4) % 8 !== 0) throw new WireError(`BLOCK_STATUS payload of ${p.length} bytes is not 4 + 8n`);
  const extents: Array<{ length: number; flags: number }> = [];
  for (let at = 4; at < p.length; at += 8) extents.push({ length: p.readUInt32BE(at), flags: p.readUInt32BE(at + 4) });
  return { contextId: p.readUInt32BE(0), extents };
}

/** BLOCK_STATUS_EXT: context id u32 · count u32 · count × {length u64 · flags u64}. */
export function decodeBlockStatusExt(p: Buffer): { contextId: number; extents: Array<{ length: bigint; flags: bigint }> } {
  if (p.length < 8) throw new WireError(`BLOCK_STATUS_EXT payload of ${p.length} bytes, expected ≥ 8`);
  const count = p.readUInt32BE(4);
  if (count === 0) throw new WireError('BLOCK_STATUS_EXT with zero descriptors');
  if (p.length !== 8 + 16 * count) throw new WireError(`BLOCK_STATUS_EXT of ${p.length} bytes does not hold ${count} descriptors`);
  const extents: Array<{ length: bigint; flags: bigint }> = [];
  for (let at = 8; at < p.length; at += 16) extents.push({ length: p.readBigUInt64BE(at), flags: p.readBigUInt64BE(at + 8) });
  return { contextId: p.readUInt32BE(0), extents };
}

/** ERROR: error u32 (non-zero) · message length u16 · message; the message fills the rest exactly. */
export function decodeError(p: Buffer): { error: number; message: string } {
  if (p.length < 6) throw new WireError(`ERROR payload of ${p.length} bytes, expected ≥ 6`);
  const error = p.readUInt32BE(0);
  const n = p.readUInt16BE(4);
  if (error === 0) throw new WireError('ERROR chunk with error 0');
  if (n !== p.length - 6) throw new WireError(`ERROR message length ${n} does not match payload ${p.length} - 6`);
  return { error, message: p.toString('utf8', 6, 6 + n) };
}

/** ERROR_OFFSET: error u32 · message length u16 · message · offset u64. */
export function decodeErrorOffset(p: Buffer): { error: number; message: string; offset: bigint } {
  if (p.length < 14) throw new WireError(`ERROR_OFFSET payload of ${p.length} bytes, expected ≥ 14`);
  const error = p.readUInt32BE(0);
  const n = p.readUInt16BE(4);
  if (error === 0) throw new WireError('ERROR_OFFSET chunk with error 0');
  if (n !== p.length - 14) throw new WireError(`ERROR_OFFSET message length ${n} does not match payload ${p.length} - 14`);
  return { error, message: p.toString('utf8', 6, 6 + n), offset: p.readBigUInt64BE(6 + n) };
}

/** A chunk's payload decoded according to its type. */
export type DecodedChunk =
  | { type: 'none' }
  | ({ type: 'offsetData' } & ReturnType<typeof decodeOffsetData>)
  | ({ type: 'offsetHole' } & ReturnType<typeof decodeOffsetHole>)
  | ({ type: 'blockStatus' } & ReturnType<typeof decodeBlockStatus>)
  | ({ type: 'blockStatusExt' } & ReturnType<typeof decodeBlockStatusExt>)
  | ({ type: 'error' } & ReturnType<typeof decodeError>)
  | ({ type: 'errorOffset' } & ReturnType<typeof decodeErrorOffset>);

/** Dispatch on the chunk type; unknown types throw (clients disconnect on them, as the spec says). */
export function decodeChunk(c: Pick<ReplyChunk, 'type' | 'payload' | 'flags'>): DecodedChunk {
  switch (c.type) {
    case CHUNK.NONE:
      if (c.payload.length !== 0) throw new WireError('NONE chunk with a payload');
      if ((c.flags & DONE) === 0) throw new WireError('NONE chunk without DONE');
      return { type: 'none' };
    case CHUNK.OFFSET_DATA:
      return { type: 'offsetData', ...decodeOffsetData(c.payload) };
    case CHUNK.OFFSET_HOLE:
      return { type: 'offsetHole', ...decodeOffsetHole(c.payload) };
    case CHUNK.BLOCK_STATUS:
      return { type: 'blockStatus', ...decodeBlockStatus(c.payload) };
    case CHUNK.BLOCK_STATUS_EXT:
      return { type: 'blockStatusExt', ...decodeBlockStatusExt(c.payload) };
    case CHUNK.ERROR:
      return { type: 'error', ...decodeError(c.payload) };
    case CHUNK.ERROR_OFFSET:
      return { type: 'errorOffset', ...decodeErrorOffset(c.payload) };
    default:
      throw new WireError(`unknown chunk type 0x${c.type.toString(16)}`);
  }
}
