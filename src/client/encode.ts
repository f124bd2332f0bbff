/**
 * Client → server bytes: client flags, options and their data, requests.
 * Every field is taken as given, so a caller can build malformed frames on
 * purpose (a wrong length, an unknown code, a bit nobody advertised).
 */
import { MAGIC, SIZE } from '../protocol/constants.js';

const utf8 = (s: string | Buffer): Buffer => (typeof s === 'string' ? Buffer.from(s, 'utf8') : s);

/** The 4-byte client flags (any bits). */
export function clientFlagsBytes(flags: number): Buffer {
  const b = Buffer.alloc(SIZE.CLIENT_FLAGS);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** An option: IHAVEOPT, code, data length, data. `length` overrides the length field (a lie on purpose). */
export function optionBytes(code: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  const h = Buffer.alloc(SIZE.OPTION_HEADER);
  h.writeBigUInt64BE(MAGIC.IHAVEOPT, 0);
  h.writeUInt32BE(code >>> 0, 8);
  h.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([h, data]);
}

/** INFO / GO data: name length, name, number of info requests, the info types (u16 each). */
export function infoGoData(name: string | Buffer, infos: readonly number[] = []): Buffer {
  const n = utf8(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** LIST_META_CONTEXT / SET_META_CONTEXT data: export name, query count, then each query with its length. */
export function metaContextData(name: string | Buffer, queries: ReadonlyArray<string | Buffer>): Buffer {
  const n = utf8(name);
  const head = Buffer.alloc(8 + n.length);
  head.writeUInt32BE(n.length, 0);
  n.copy(head, 4);
  head.writeUInt32BE(queries.length, 4 + n.length);
  const parts: Buffer[] = [head];
  for (const q of queries) {
    const qb = utf8(q);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(qb.length, 0);
    parts.push(len, qb);
  }
  return Buffer.concat(parts);
}

/** The header fields of a transmission request; any values, valid or not. */
export interface RequestHeader {
  readonly type: number;
  readonly flags: number;
  readonly cookie: bigint;
  readonly offset: bigint;
  /** u32 in a compact header, u64 in an extended one. */
  readonly length: bigint;
  /** Extended (32-byte) header instead of the compact 28-byte one. */
  readonly extended: boolean;
  /** Overrides the magic (to send a wrong one on purpose). */
  readonly magic?: number;
}

/** A request header (compact or extended); the payload, if any, is written after it by the caller. */
export function requestHeaderBytes(r: RequestHeader): Buffer {
  const h = Buffer.alloc(r.extended ? SIZE.EXTENDED_REQUEST : SIZE.REQUEST);
  h.writeUInt32BE((r.magic ?? (r.extended ? MAGIC.NBD_EXTENDED_REQUEST_MAGIC : MAGIC.NBD_REQUEST_MAGIC)) >>> 0, 0);
  h.writeUInt16BE(r.flags & 0xffff, 4);
  h.writeUInt16BE(r.type & 0xffff, 6);
  h.writeBigUInt64BE(BigInt.asUintN(64, r.cookie), 8);
  h.writeBigUInt64BE(BigInt.asUintN(64, r.offset), 16);
  if (r.extended) h.writeBigUInt64BE(BigInt.asUintN(64, r.length), 24);
  else h.writeUInt32BE(Number(BigInt.asUintN(32, r.length)), 24);
  return h;
}
