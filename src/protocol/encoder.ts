/**
 * Encoders for every server → client frame.
 *
 * Headers are allocated at their exact size and filled in place. Payloads
 * travel as separate buffers (a frame is `Buffer[]`: header first, then the
 * payload views) so a READ reply is never copied into a bigger buffer
 * (docs/design.md, "The data path").
 */
import {
  FLAG,
  HANDSHAKE_FLAGS,
  INFO,
  MAGIC,
  REP,
  REPLY_FLAG,
  REPLY_TYPE,
  SIZE,
  type RepErrName,
} from './constants.js';
import type { BlockSizes } from './frames.js';

export type Frame = Buffer[];

const TWO_32 = 0x1_0000_0000;

function writeU64(buf: Buffer, value: number | bigint, at: number): void {
  if (typeof value === 'bigint') {
    buf.writeBigUInt64BE(value, at);
    return;
  }
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32 >>> 0, at + 4);
}

function utf8(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

// ── handshake ──────────────────────────────────────────────────────────

/** The newstyle greeting: NBDMAGIC · IHAVEOPT · handshake flags (u16). */
export function encodeGreeting(handshakeFlags: number = HANDSHAKE_FLAGS.NBD_FLAG_FIXED_NEWSTYLE | HANDSHAKE_FLAGS.NBD_FLAG_NO_ZEROES): Buffer {
  const b = Buffer.allocUnsafe(SIZE.GREETING);
  b.writeBigUInt64BE(MAGIC.NBDMAGIC, 0);
  b.writeBigUInt64BE(MAGIC.IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags & 0x3, 16); // handshake.greeting-flags: only bits 0–1
  return b;
}

/** A fixed-newstyle option reply: header + data (data as its own buffer; option.reply-header). */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Frame {
  const h = Buffer.allocUnsafe(SIZE.OPTION_REPLY_HEADER);
  h.writeBigUInt64BE(MAGIC.NBD_REP_MAGIC, 0);
  h.writeUInt32BE(option >>> 0, 8);
  h.writeUInt32BE(type >>> 0, 12);
  h.writeUInt32BE(data ? data.length : 0, 16);
  return data && data.length > 0 ? [h, data] : [h];
}

export function encodeAck(option: number): Frame {
  return encodeOptionReply(option, REP.NBD_REP_ACK);
}

/** Clip a message to the 4096-byte string limit (general.string-limits: never emit longer). */
function message(text: string | undefined): Buffer | undefined {
  if (!text) return undefined;
  let b = utf8(text.replace(/\0/g, ''));
  if (b.length > SIZE.MAX_STRING) {
    // Cut on a character boundary: never emit half a UTF-8 sequence (strings are UTF-8).
    let end = SIZE.MAX_STRING;
    while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
    b = b.subarray(0, end);
  }
  return b;
}

/** Any NBD_REP_ERR_*, with an optional human-readable message as data. */
export function encodeOptionError(option: number, error: RepErrName, text?: string): Frame {
  return encodeOptionReply(option, REP[error], message(text));
}

/** NBD_REP_SERVER: name length · name · optional description. */
export function encodeRepServer(option: number, name: string, description?: string): Frame {
  const n = utf8(name);
  const d = description ? utf8(description) : undefined;
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(n.length, 0);
  return encodeOptionReply(option, REP.NBD_REP_SERVER, Buffer.concat(d ? [len, n, d] : [len, n]));
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: size u64 · flags u16, exactly 12 bytes, no padding (handshake.no-zeroes, option.info-export). */
export function encodeInfoExport(option: number, size: number, transmissionFlags: number): Frame {
  const d = Buffer.allocUnsafe(12);
  d.writeUInt16BE(INFO.NBD_INFO_EXPORT, 0);
  writeU64(d, size, 2);
  d.writeUInt16BE(transmissionFlags & 0xffff, 10);
  return encodeOptionReply(option, REP.NBD_REP_INFO, d);
}

function infoString(option: number, info: number, text: string): Frame {
  const s = utf8(text);
  const d = Buffer.allocUnsafe(2 + s.length);
  d.writeUInt16BE(info, 0);
  s.copy(d, 2);
  return encodeOptionReply(option, REP.NBD_REP_INFO, d);
}

export function encodeInfoName(option: number, name: string): Frame {
  return infoString(option, INFO.NBD_INFO_NAME, name);
}

export function encodeInfoDescription(option: number, description: string): Frame {
  return infoString(option, INFO.NBD_INFO_DESCRIPTION, description);
}

/** NBD_INFO_BLOCK_SIZE: min u32 · preferred u32 · max payload u32, exactly 14 bytes. */
export function encodeInfoBlockSize(option: number, sizes: BlockSizes): Frame {
  const d = Buffer.allocUnsafe(14);
  d.writeUInt16BE(INFO.NBD_INFO_BLOCK_SIZE, 0);
  d.writeUInt32BE(sizes.minimum >>> 0, 2);
  d.writeUInt32BE(sizes.preferred >>> 0, 6);
  d.writeUInt32BE(sizes.maximum >>> 0, 10);
  return encodeOptionReply(option, REP.NBD_REP_INFO, d);
}

/** NBD_REP_META_CONTEXT: context id u32 · name. */
export function encodeMetaContext(option: number, id: number, name: string): Frame {
  const s = utf8(name);
  const d = Buffer.allocUnsafe(4 + s.length);
  d.writeUInt32BE(id >>> 0, 0);
  s.copy(d, 4);
  return encodeOptionReply(option, REP.NBD_REP_META_CONTEXT, d);
}

/** EXPORT_NAME success (no reply header): size u64 · flags u16 · 124 zeroes unless NO_ZEROES (handshake.no-zeroes). */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? SIZE.EXPORT_NAME_REPLY : SIZE.EXPORT_NAME_REPLY + SIZE.EXPORT_NAME_ZEROES);
  writeU64(b, size, 0);
  b.writeUInt16BE(transmissionFlags & 0xffff, 8);
  return b;
}

// ── transmission ───────────────────────────────────────────────────────

/** Write a simple reply header (16 bytes) into `buf` at `at`, for writers that encode in place. */
export function writeSimpleReplyHeader(buf: Buffer, at: number, cookie: bigint, error: number): void {
  buf.writeUInt32BE(MAGIC.NBD_SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error >>> 0, at + 4);
  buf.writeBigUInt64BE(cookie, at + 8);
}

/** Bytes `writeReadReplyHeader` writes for each reply mode. */
export const READ_REPLY_HEADER_SIZE = {
  simple: SIZE.SIMPLE_REPLY,
  structured: SIZE.STRUCTURED_REPLY + 8,
  extended: SIZE.EXTENDED_REPLY + 8,
} as const;

/**
 * Write, in place, everything that precedes the data of a successful READ
 * answered by `length` ≥ 1 contiguous bytes: a simple reply header, or one
 * OFFSET_DATA chunk carrying DONE (structured or extended chunk header,
 * then the offset u64). The same bytes as `encodeSimpleReply(cookie, 0, data)`
 * / `encodeChunkOffsetData(cookie, offset, data, { done: true, … })` minus
 * the data, with no buffers allocated. Returns the bytes written.
 */
export function writeReadReplyHeader(
  buf: Buffer,
  at: number,
  mode: 'simple' | 'structured' | 'extended',
  cookie: bigint,
  offset: number,
  length: number,
): number {
  if (mode === 'simple') {
    writeSimpleReplyHeader(buf, at, cookie, 0);
    return SIZE.SIMPLE_REPLY;
  }
  const extended = mode === 'extended';
  buf.writeUInt32BE(extended ? MAGIC.NBD_EXTENDED_REPLY_MAGIC : MAGIC.NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(REPLY_FLAG.NBD_REPLY_FLAG_DONE, at + 4);
  buf.writeUInt16BE(REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, at + 6);
  buf.writeBigUInt64BE(cookie, at + 8);
  let p = at + 16;
  if (extended) {
    writeU64(buf, offset, p); // MUST equal the request's offset
    writeU64(buf, 8 + length, p + 8);
    p += 16;
  } else {
    buf.writeUInt32BE((8 + length) >>> 0, p);
    p += 4;
  }
  writeU64(buf, offset, p);
  return p + 8 - at;
}

/** Simple reply header; for a successful READ the data follows as its own buffer. */
export function encodeSimpleReply(cookie: bigint, error: number, data?: Buffer | readonly Buffer[]): Frame {
  const h = Buffer.allocUnsafe(SIZE.SIMPLE_REPLY);
  writeSimpleReplyHeader(h, 0, cookie, error);
  if (!data || error !== 0) return [h]; // reply.simple-read: no data after a non-zero error
  return Array.isArray(data) ? [h, ...data] : [h, data as Buffer];
}

/**
 * One structured (20 bytes) or extended (32 bytes) chunk header. `payloadLength`
 * counts everything after the header; the caller supplies the payload buffers.
 */
export function chunkHeader(
  extended: boolean,
  cookie: bigint,
  flags: number,
  type: number,
  payloadLength: number,
  offset: number | bigint = 0,
): Buffer {
  if (extended) {
    const h = Buffer.allocUnsafe(SIZE.EXTENDED_REPLY);
    h.writeUInt32BE(MAGIC.NBD_EXTENDED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    writeU64(h, offset, 16); // MUST equal the request's offset
    writeU64(h, payloadLength, 24);
    return h;
  }
  const h = Buffer.allocUnsafe(SIZE.STRUCTURED_REPLY);
  h.writeUInt32BE(MAGIC.NBD_STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(payloadLength >>> 0, 16);
  return h;
}

/** Options shared by chunk encoders. */
export interface ChunkOptions {
  /** Use 32-byte extended headers (EXTENDED_HEADERS negotiated). */
  extended?: boolean;
  /** The request's offset, echoed in extended headers. */
  requestOffset?: number | bigint;
  /** Set NBD_REPLY_FLAG_DONE. */
  done?: boolean;
}

const doneFlag = (o: ChunkOptions) => (o.done ? REPLY_FLAG.NBD_REPLY_FLAG_DONE : 0);

/** NBD_REPLY_TYPE_NONE: length 0, MUST carry DONE. */
export function encodeChunkNone(cookie: bigint, o: ChunkOptions = {}): Frame {
  return [chunkHeader(!!o.extended, cookie, REPLY_FLAG.NBD_REPLY_FLAG_DONE, REPLY_TYPE.NBD_REPLY_TYPE_NONE, 0, o.requestOffset)];
}

/** NBD_REPLY_TYPE_OFFSET_DATA: offset u64 · data. Data buffers are not copied. */
export function encodeChunkOffsetData(cookie: bigint, offset: number, data: Buffer | readonly Buffer[], o: ChunkOptions = {}): Frame {
  const off = Buffer.allocUnsafe(8);
  writeU64(off, offset, 0);
  if (!Array.isArray(data)) {
    const d = data as Buffer;
    return [chunkHeader(!!o.extended, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, 8 + d.length, o.requestOffset), off, d];
  }
  const parts = data as readonly Buffer[];
  let len = 0;
  for (const p of parts) len += p.length;
  const h = chunkHeader(!!o.extended, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA, 8 + len, o.requestOffset);
  return [h, off, ...parts];
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: offset u64 · hole size u32. */
export function encodeChunkOffsetHole(cookie: bigint, offset: number, size: number, o: ChunkOptions = {}): Frame {
  const h = chunkHeader(!!o.extended, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE, 12, o.requestOffset);
  const p = Buffer.allocUnsafe(12);
  writeU64(p, offset, 0);
  p.writeUInt32BE(size >>> 0, 8);
  return [h, p];
}

export interface Extent {
  readonly length: number;
  readonly flags: number;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS (compact) or BLOCK_STATUS_EXT (extended headers). */
export function encodeChunkBlockStatus(cookie: bigint, contextId: number, extents: readonly Extent[], o: ChunkOptions = {}): Frame {
  if (o.extended) {
    const p = Buffer.allocUnsafe(8 + 16 * extents.length);
    p.writeUInt32BE(contextId >>> 0, 0);
    p.writeUInt32BE(extents.length, 4);
    let at = 8;
    for (const e of extents) {
      writeU64(p, e.length, at);
      writeU64(p, e.flags >>> 0, at + 8);
      at += 16;
    }
    return [chunkHeader(true, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS_EXT, p.length, o.requestOffset), p];
  }
  const p = Buffer.allocUnsafe(4 + 8 * extents.length);
  p.writeUInt32BE(contextId >>> 0, 0);
  let at = 4;
  for (const e of extents) {
    p.writeUInt32BE(e.length >>> 0, at);
    p.writeUInt32BE(e.flags >>> 0, at + 4);
    at += 8;
  }
  return [chunkHeader(false, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS, p.length), p];
}

/** NBD_REPLY_TYPE_ERROR: error u32 · message length u16 · message. */
export function encodeChunkError(cookie: bigint, error: number, text?: string, o: ChunkOptions = {}): Frame {
  const m = message(text) ?? Buffer.alloc(0);
  const p = Buffer.allocUnsafe(6 + m.length);
  p.writeUInt32BE(error >>> 0, 0);
  p.writeUInt16BE(m.length, 4);
  m.copy(p, 6);
  return [chunkHeader(!!o.extended, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_ERROR, p.length, o.requestOffset), p];
}

/** NBD_REPLY_TYPE_ERROR_OFFSET: error u32 · message length u16 · message · offset u64. */
export function encodeChunkErrorOffset(cookie: bigint, error: number, offset: number, text?: string, o: ChunkOptions = {}): Frame {
  const m = message(text) ?? Buffer.alloc(0);
  const p = Buffer.allocUnsafe(14 + m.length);
  p.writeUInt32BE(error >>> 0, 0);
  p.writeUInt16BE(m.length, 4);
  m.copy(p, 6);
  writeU64(p, offset, 6 + m.length);
  return [chunkHeader(!!o.extended, cookie, doneFlag(o), REPLY_TYPE.NBD_REPLY_TYPE_ERROR_OFFSET, p.length, o.requestOffset), p];
}

/** Transmission flags always carry HAS_FLAGS (transmission.flags-advertised). */
export function withHasFlags(flags: number): number {
  return (flags | FLAG.NBD_FLAG_HAS_FLAGS) & 0xffff;
}
