/**
 * Frames as the trace records them: client frames from their decoded form,
 * server frames read back from the bytes the encoders produced (the same
 * bytes that go to the socket), and any other value made JSON-safe. Names
 * come from the protocol's constant tables; payload bytes are never copied
 * into a record, only their length and, if asked, a short hex prefix.
 */
import {
  CLIENT_FLAGS,
  CMD_FLAG,
  FLAG,
  HANDSHAKE_FLAGS,
  INFO,
  MAGIC,
  REP,
  REPLY_FLAG,
  REPLY_TYPE,
  cmdName,
  errnoName,
  flagNames,
  infoName,
  optName,
  repName,
  replyTypeName,
} from '../protocol/constants.js';
import type { ClientFrame } from '../protocol/frames.js';
import type { Json } from './trace-format.js';

/** A frame's name, fields and elided payload: a FrameRecord without its envelope. */
export interface FrameSummary {
  readonly name: string;
  readonly fields: { [key: string]: Json };
  readonly payload?: { readonly length: number; readonly prefix?: string };
}

function payloadOf(bufs: readonly Buffer[], length: number, prefixBytes: number): FrameSummary['payload'] {
  if (prefixBytes <= 0 || length === 0) return { length };
  const parts: Buffer[] = [];
  let need = Math.min(prefixBytes, length);
  for (const b of bufs) {
    if (need <= 0) break;
    const piece = b.subarray(0, need);
    parts.push(piece);
    need -= piece.length;
  }
  return { length, prefix: Buffer.concat(parts).toString('hex') };
}

/** A client frame as decoded (options by name with their fields, requests with command and flag names). */
export function clientFrame(f: ClientFrame, prefixBytes = 0): FrameSummary {
  switch (f.kind) {
    case 'clientFlags':
      return { name: 'clientFlags', fields: { flags: flagNames(CLIENT_FLAGS, f.flags) } };
    case 'option': {
      const fields: { [key: string]: Json } = {};
      if ('name' in f) fields.name = f.name;
      if ('requests' in f) fields.info = f.requests.map((r) => infoName(r));
      if ('queries' in f) fields.queries = [...f.queries];
      if ('hasData' in f && f.hasData) fields.hasData = true;
      if (f.problem) fields.problem = `${f.problem.reply}: ${f.problem.message}`;
      fields.length = f.length;
      return { name: optName(f.code), fields };
    }
    case 'request': {
      const fields: { [key: string]: Json } = {
        cookie: f.cookie.toString(),
        offset: f.wireOffset !== undefined ? f.wireOffset.toString() : f.offset,
        length: f.length,
        flags: flagNames(CMD_FLAG, f.flags),
      };
      if (f.extended) fields.extended = true;
      if (f.huge) fields.huge = true;
      if (f.payloadDiscarded) fields.payloadDiscarded = true;
      if (f.placed) fields.placed = true;
      if (f.payload) return { name: cmdName(f.type), fields, payload: payloadOf([f.payload], f.payload.length, prefixBytes) };
      if (f.placed) return { name: cmdName(f.type), fields, payload: { length: f.length } };
      return { name: cmdName(f.type), fields };
    }
  }
}

/** Reads numbers across a frame's buffers without joining them (a READ's data is skipped, never copied). */
class Cursor {
  private i = 0;
  private at = 0;
  consumed = 0;
  constructor(private readonly bufs: readonly Buffer[]) {}

  get remaining(): number {
    let n = -this.at;
    for (let k = this.i; k < this.bufs.length; k++) n += this.bufs[k]!.length;
    return n;
  }

  take(n: number): Buffer {
    while (this.i < this.bufs.length && this.at >= this.bufs[this.i]!.length) {
      this.i++;
      this.at = 0;
    }
    const cur = this.bufs[this.i];
    if (cur && this.at + n <= cur.length) {
      const out = cur.subarray(this.at, this.at + n);
      this.at += n;
      this.consumed += n;
      return out;
    }
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n && this.i < this.bufs.length) {
      const b = this.bufs[this.i]!;
      const k = Math.min(n - got, b.length - this.at);
      b.copy(out, got, this.at, this.at + k);
      got += k;
      this.at += k;
      if (this.at >= b.length) {
        this.i++;
        this.at = 0;
      }
    }
    if (got < n) throw new RangeError('frame shorter than its header says');
    this.consumed += n;
    return out;
  }

  /** The next `n` bytes as views (for a payload's prefix), without copying. */
  views(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0 && this.i < this.bufs.length) {
      const b = this.bufs[this.i]!;
      const k = Math.min(left, b.length - this.at);
      if (k > 0) out.push(b.subarray(this.at, this.at + k));
      left -= k;
      this.at += k;
      this.consumed += k;
      if (this.at >= b.length) {
        this.i++;
        this.at = 0;
      }
    }
    return out;
  }

  u16 = () => this.take(2).readUInt16BE(0);
  u32 = () => this.take(4).readUInt32BE(0);
  u64 = (): number | string => {
    const v = this.take(8).readBigUInt64BE(0);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  };
}

/** One handshake frame the server sent (`label` is the machine's label for it). */
export function handshakeFrame(frame: readonly Buffer[], label: string): FrameSummary {
  const c = new Cursor(frame);
  if (label === 'greeting') {
    c.take(16);
    return { name: 'greeting', fields: { flags: flagNames(HANDSHAKE_FLAGS, c.u16()) } };
  }
  if (label.startsWith('export reply')) {
    const size = c.u64();
    return { name: 'exportNameReply', fields: { size, flags: flagNames(FLAG, c.u16()), zeroes: c.remaining > 0 } };
  }
  const magic = c.take(8).readBigUInt64BE(0);
  if (magic !== MAGIC.NBD_REP_MAGIC) return { name: 'unknown', fields: { label }, payload: { length: c.remaining + 8 } };
  const option = c.u32();
  const type = c.u32();
  const length = c.u32();
  const fields: { [key: string]: Json } = { option: optName(option) };
  switch (type) {
    case REP.NBD_REP_INFO: {
      const info = c.u16();
      fields.info = infoName(info);
      if (info === INFO.NBD_INFO_EXPORT) {
        fields.size = c.u64();
        fields.flags = flagNames(FLAG, c.u16());
      } else if (info === INFO.NBD_INFO_BLOCK_SIZE) {
        fields.minimum = c.u32();
        fields.preferred = c.u32();
        fields.maximum = c.u32();
      } else {
        fields[info === INFO.NBD_INFO_NAME ? 'name' : 'description'] = c.take(length - 2).toString('utf8');
      }
      break;
    }
    case REP.NBD_REP_SERVER: {
      const n = c.u32();
      fields.name = c.take(n).toString('utf8');
      if (length - 4 - n > 0) fields.description = c.take(length - 4 - n).toString('utf8');
      break;
    }
    case REP.NBD_REP_META_CONTEXT:
      fields.id = c.u32();
      fields.name = c.take(length - 4).toString('utf8');
      break;
    default:
      if (length > 0) fields.message = c.take(length).toString('utf8');
  }
  return { name: repName(type), fields };
}

/** The frames of one transmission reply: a simple reply, or each structured / extended chunk. */
export function replyFrames(frame: readonly Buffer[], prefixBytes = 0): FrameSummary[] {
  const c = new Cursor(frame);
  const out: FrameSummary[] = [];
  while (c.remaining > 0) {
    const magic = c.u32();
    if (magic === MAGIC.NBD_SIMPLE_REPLY_MAGIC) {
      const error = c.u32();
      const fields: { [key: string]: Json } = { cookie: c.take(8).readBigUInt64BE(0).toString() };
      if (error !== 0) fields.error = errnoName(error);
      const length = c.remaining;
      out.push(length > 0 ? { name: 'simpleReply', fields, payload: payloadOf(c.views(length), length, prefixBytes) } : { name: 'simpleReply', fields });
      break;
    }
    const extended = magic === MAGIC.NBD_EXTENDED_REPLY_MAGIC;
    if (!extended && magic !== MAGIC.NBD_STRUCTURED_REPLY_MAGIC) {
      out.push({ name: 'unknown', fields: { magic: magic.toString(16) } });
      break;
    }
    const flags = c.u16();
    const type = c.u16();
    const fields: { [key: string]: Json } = { cookie: c.take(8).readBigUInt64BE(0).toString(), flags: flagNames(REPLY_FLAG, flags) };
    if (extended) fields.requestOffset = c.u64();
    const lengthField = extended ? c.u64() : c.u32();
    const length = typeof lengthField === 'number' ? lengthField : Number(lengthField);
    const end = c.consumed + length;
    let payload: FrameSummary['payload'];
    switch (type) {
      case REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_DATA:
        fields.offset = c.u64();
        fields.dataLength = length - 8;
        payload = payloadOf(c.views(length - 8), length - 8, prefixBytes);
        break;
      case REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE:
        fields.offset = c.u64();
        fields.holeSize = c.u32();
        break;
      case REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS:
      case REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS_EXT: {
        const ext = type === REPLY_TYPE.NBD_REPLY_TYPE_BLOCK_STATUS_EXT;
        fields.contextId = c.u32();
        const count = ext ? c.u32() : (length - 4) / 8;
        const extents: Json[] = [];
        for (let k = 0; k < count; k++) {
          const len = ext ? c.u64() : c.u32();
          const fl = ext ? Number(c.u64()) : c.u32();
          // Only the first extents: a long list would make one huge line.
          if (k < 16) extents.push({ length: len, flags: fl });
        }
        fields.extents = extents;
        fields.extentCount = count;
        break;
      }
      case REPLY_TYPE.NBD_REPLY_TYPE_ERROR:
      case REPLY_TYPE.NBD_REPLY_TYPE_ERROR_OFFSET: {
        fields.error = errnoName(c.u32());
        const n = c.u16();
        if (n > 0) fields.message = c.take(n).toString('utf8');
        if (type === REPLY_TYPE.NBD_REPLY_TYPE_ERROR_OFFSET) fields.offset = c.u64();
        break;
      }
    }
    if (c.consumed < end) c.views(end - c.consumed);
    out.push(payload ? { name: replyTypeName(type), fields, payload } : { name: replyTypeName(type), fields });
  }
  return out;
}

/** Whether a value is an xstate actor (a child in a context): never written out. */
function isActorRef(v: object): boolean {
  return typeof (v as { send?: unknown }).send === 'function' && 'sessionId' in v;
}

/**
 * Any value as JSON: bigints as decimal strings, Buffers as their length,
 * frames summarised, functions and actors left out, depth and list lengths
 * capped so one record stays one readable line.
 */
export function jsonSafe(v: unknown, depth = 4): Json | undefined {
  switch (typeof v) {
    case 'string':
      return v.length > 256 ? `${v.slice(0, 256)}…` : v;
    case 'number':
      return Number.isFinite(v) ? v : String(v);
    case 'boolean':
      return v;
    case 'bigint':
      return v.toString();
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (v === null) return null;
  const o = v as object;
  if (Buffer.isBuffer(o) || o instanceof Uint8Array) return { length: (o as Uint8Array).length };
  const kind = (o as { kind?: unknown }).kind;
  if (kind === 'request' || kind === 'option' || kind === 'clientFlags') {
    const s = clientFrame(o as ClientFrame);
    return { frame: s.name, ...s.fields };
  }
  if (isActorRef(o)) return undefined;
  if (depth <= 0) return '…';
  if (Array.isArray(o)) {
    const items = o.slice(0, 16).map((x) => jsonSafe(x, depth - 1) ?? null);
    if (o.length > 16) items.push(`… ${o.length} items`);
    return items;
  }
  if (o instanceof Map || o instanceof Set) return { size: o.size };
  const out: { [key: string]: Json } = {};
  for (const [k, x] of Object.entries(o)) {
    const j = jsonSafe(x, depth - 1);
    if (j !== undefined) out[k] = j;
  }
  return out;
}
