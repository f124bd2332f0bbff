/**
 * Structured and extended reply chunks: the header fields and the payload
 * decoded by chunk type, strictly. A payload that does not have the layout
 * its type demands is a `peer.chunk-payload` deviation; what can still be
 * read from it is returned.
 */
import { REPLY_TYPE, SPEC_ERRNOS, replyTypeName } from '../protocol/constants.js';
import { deviation, type Deviation } from './deviations.js';

/** One block status descriptor (flags: the low 32 bits; base:allocation uses bits 0–1). */
export interface Extent {
  readonly length: bigint;
  readonly flags: number;
}

/** A chunk's payload, decoded by its type. */
export type ChunkContent =
  | { readonly kind: 'none' }
  | { readonly kind: 'offsetData'; readonly offset: bigint; readonly data: Buffer }
  | { readonly kind: 'offsetHole'; readonly offset: bigint; readonly size: number }
  | { readonly kind: 'blockStatus'; readonly contextId: number; readonly extents: readonly Extent[]; readonly wide: boolean }
  | { readonly kind: 'error'; readonly error: number; readonly message: string; readonly offset?: bigint }
  | { readonly kind: 'unknown' }
  | { readonly kind: 'malformed' };

/** One chunk as received. */
export interface Chunk {
  /** `structured`: the 20-byte header; `extended`: the 32-byte one. */
  readonly form: 'structured' | 'extended';
  readonly flags: number;
  readonly type: number;
  /** `NBD_REPLY_TYPE_OFFSET_DATA`, … or `UNKNOWN(0x…)`. */
  readonly typeName: string;
  readonly cookie: bigint;
  /** The offset field of an extended header. */
  readonly offset?: bigint;
  readonly header: Buffer;
  readonly payload: Buffer;
  readonly content: ChunkContent;
}

const bad = (devs: Deviation[], what: string, p: Buffer): ChunkContent => {
  devs.push(deviation('peer.chunk-payload', what, p));
  return { kind: 'malformed' };
};

/** ERROR / ERROR_OFFSET (and unknown error types): error, message length, message, [offset]. */
function errorContent(p: Buffer, withOffset: boolean, name: string, devs: Deviation[]): ChunkContent {
  const tail = withOffset ? 8 : 0;
  if (p.length < 6 + tail) return bad(devs, `${name} payload of ${p.length} bytes, expected at least ${6 + tail}`, p);
  const error = p.readUInt32BE(0);
  const n = p.readUInt16BE(4);
  if (error === 0) devs.push(deviation('peer.chunk-payload', `${name} with error value 0`, p));
  else if (!SPEC_ERRNOS.has(error)) devs.push(deviation('peer.error-value', `${name} with error value ${error}, not one the spec defines`, p));
  if (n !== p.length - 6 - tail) {
    devs.push(deviation('peer.chunk-payload', `${name} message length ${n} does not match the payload (${p.length - 6 - tail} bytes)`, p));
    const m = Math.min(n, p.length - 6 - tail);
    return { kind: 'error', error, message: p.toString('utf8', 6, 6 + m) };
  }
  const message = p.toString('utf8', 6, 6 + n);
  return withOffset ? { kind: 'error', error, message, offset: p.readBigUInt64BE(6 + n) } : { kind: 'error', error, message };
}

function blockStatus(p: Buffer, wide: boolean, devs: Deviation[]): ChunkContent {
  if (!wide) {
    if (p.length < 12 || (p.length - 4) % 8 !== 0) return bad(devs, `BLOCK_STATUS payload of ${p.length} bytes is not 4 + 8n (n ≥ 1)`, p);
    const extents: Extent[] = [];
    for (let at = 4; at < p.length; at += 8) extents.push({ length: BigInt(p.readUInt32BE(at)), flags: p.readUInt32BE(at + 4) });
    return { kind: 'blockStatus', contextId: p.readUInt32BE(0), extents, wide };
  }
  if (p.length < 8) return bad(devs, `BLOCK_STATUS_EXT payload of ${p.length} bytes, expected at least 8`, p);
  const count = p.readUInt32BE(4);
  if (count === 0 || p.length !== 8 + 16 * count) return bad(devs, `BLOCK_STATUS_EXT of ${p.length} bytes does not hold its ${count} descriptors (count ≥ 1, 16 bytes each)`, p);
  const extents: Extent[] = [];
  for (let at = 8; at < p.length; at += 16) extents.push({ length: p.readBigUInt64BE(at), flags: Number(p.readBigUInt64BE(at + 8) & 0xffffffffn) });
  return { kind: 'blockStatus', contextId: p.readUInt32BE(0), extents, wide };
}

/** Decode a chunk payload by type. */
export function chunkContent(type: number, flags: number, p: Buffer, devs: Deviation[]): ChunkContent {
  switch (type) {
    case REPLY_TYPE.NBD_REPLY_TYPE_NONE:
      if (p.length !== 0) devs.push(deviation('reply.structured-chunks', `NONE chunk with ${p.length} bytes of payload`, p));
      if ((flags & 1) === 0) devs.push(deviation('reply.structured-chunks', 'NONE chunk without the DONE flag', p));
      return { kind: 'none' };
    case REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA:
      if (p.length < 9) return bad(devs, `OFFSET_DATA payload of ${p.length} bytes, expected at least 9 (offset and one byte)`, p);
      return { kind: 'offsetData', offset: p.readBigUInt64BE(0), data: p.subarray(8) };
    case REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE:
      if (p.length !== 12) return bad(devs, `OFFSET_HOLE payload of ${p.length} bytes, expected 12`, p);
      if (p.readUInt32BE(8) === 0) return bad(devs, 'OFFSET_HOLE of size 0', p);
      return { kind: 'offsetHole', offset: p.readBigUInt64BE(0), size: p.readUInt32BE(8) };
    case REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS:
      return blockStatus(p, false, devs);
    case REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
      return blockStatus(p, true, devs);
    case REPLY_TYPE.NBD_REPLY_TYPE_ERROR:
      return errorContent(p, false, 'ERROR chunk', devs);
    case REPLY_TYPE.NBD_REPLY_TYPE_ERROR_OFFSET:
      return errorContent(p, true, 'ERROR_OFFSET chunk', devs);
    default:
      // Unknown types with the error bit are errors a client must accept; others it cannot interpret.
      if (type & 0x8000) return errorContent(p, false, `error chunk type 0x${type.toString(16)}`, devs);
      devs.push(deviation('peer.unknown-chunk-type', `chunk type 0x${type.toString(16)} is unknown and lacks the error bit`, p));
      return { kind: 'unknown' };
  }
}

/** The chunk type's name for messages. */
export const chunkTypeName = replyTypeName;
