/**
 * Hostile client byte streams and the check of what the server answered.
 *
 * `generate(rng, kind)` builds one client → server byte stream: random
 * bytes; option phases (valid and mutated: lying lengths, names up to
 * 1 MiB, 100k options, thousands of INFO); or a clean handshake followed by
 * a request stream in simple, structured or extended mode, mutated (bit
 * flips, truncation, bad magic, lengths of 2^32-1 / 2^64-1, unknown types
 * and flags).
 *
 * `checkReplies(clientBytes, serverBytes)` is the desync detector. It walks
 * the client's bytes the way the spec frames them (a shadow parser written
 * here, independent of src/), and checks that every byte the server sent
 * is a well-formed answer to a frame the client really sent, in order: the
 * greeting; option replies that echo the option being answered and end in
 * one final reply; after GO's ACK (or EXPORT_NAME's reply) transmission
 * replies whose cookies belong to requests sent before any DISC, READ data
 * of exactly the requested length, structured / extended chunks that
 * decode, at most one final chunk per request, the reply form the
 * negotiated mode requires (docs/rules.md: reply.*, transmission.disc-drains). It returns
 * null, or what went out of sync.
 */
import {
  CLIENT_FLAG,
  CMD,
  CMD_FLAG,
  DONE,
  OPT,
  REP,
  SIZE,
  W,
  WireError,
  decodeChunk,
  encodeClientFlags,
  encodeExtendedRequest,
  encodeInfoGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  isFinalRep,
  isRepError,
  parseRepInfo,
  parseRepServer,
} from '../helpers/wire.js';
import type { Rng } from './support.js';

const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;

/** The exports the fuzz server offers (hostile streams name these, or garbage). */
export const FUZZ_EXPORTS = { writable: 'fuzz', readOnly: 'ro', aligned: 'aligned', async: 'async' } as const;
export const FUZZ_EXPORT_SIZE = 1024 * 1024;

export type StreamKind = 'random' | 'options' | 'simple' | 'structured' | 'extended';
export const STREAM_KINDS: readonly StreamKind[] = ['random', 'options', 'simple', 'structured', 'extended'];

export interface FuzzStream {
  readonly kind: StreamKind;
  /** What was done to it, for the failure report. */
  readonly notes: string[];
  readonly bytes: Buffer;
}

/** Specials that must show up in every run, not only by luck: one of them every `SPECIAL_EVERY` streams. */
export const SPECIAL_EVERY = 2000;
export const SPECIALS = ['name-1MiB', 'options-100k', 'info-thousands', 'length-u32-max', 'length-u64-max', 'option-length-u32-max'] as const;
export type Special = (typeof SPECIALS)[number];

// ── building blocks ──────────────────────────────────────────────────────

function exportName(rng: Rng): string | Buffer {
  switch (rng.int(10)) {
    case 0:
      return '';
    case 1:
      return FUZZ_EXPORTS.readOnly;
    case 2:
      return FUZZ_EXPORTS.aligned;
    case 3:
      return FUZZ_EXPORTS.async;
    case 4:
      return rng.bytes(rng.int(40)); // garbage: NUL, invalid UTF-8
    case 5:
      return 'x'.repeat(rng.pick([4096, 4097, 5000]));
    default:
      return FUZZ_EXPORTS.writable;
  }
}

function infoRequests(rng: Rng): number[] {
  const n = rng.chance(0.7) ? rng.int(4) : rng.int(40);
  return Array.from({ length: n }, () => (rng.chance(0.8) ? rng.int(4) : rng.int(0x10000)));
}

function metaQueries(rng: Rng): Array<string | Buffer> {
  const n = rng.chance(0.8) ? rng.int(3) : rng.int(30);
  return Array.from({ length: n }, () =>
    rng.pick<string | Buffer>(['base:allocation', 'base:', 'base:allocation', 'qemu:dirty-bitmap:x', '', rng.bytes(rng.int(20)), 'x'.repeat(4097)]),
  );
}

/** One option frame, valid or not. */
function randomOption(rng: Rng): Buffer {
  const r = rng.int(100);
  if (r < 12) return encodeOption(OPT.LIST, rng.chance(0.9) ? undefined : rng.bytes(rng.int(20)));
  if (r < 30) return encodeOption(OPT.INFO, encodeInfoGoData(exportName(rng), infoRequests(rng)));
  if (r < 38) return encodeOption(OPT.GO, encodeInfoGoData(exportName(rng), infoRequests(rng)));
  if (r < 41) return encodeOption(OPT.EXPORT_NAME, Buffer.from(exportName(rng)));
  if (r < 50) return encodeOption(OPT.STRUCTURED_REPLY, rng.chance(0.9) ? undefined : rng.bytes(rng.int(8)));
  if (r < 57) return encodeOption(OPT.EXTENDED_HEADERS, rng.chance(0.9) ? undefined : rng.bytes(rng.int(8)));
  if (r < 65) return encodeOption(OPT.LIST_META_CONTEXT, encodeMetaContextData(exportName(rng), metaQueries(rng)));
  if (r < 73) return encodeOption(OPT.SET_META_CONTEXT, encodeMetaContextData(exportName(rng), metaQueries(rng)));
  if (r < 76) return encodeOption(OPT.STARTTLS);
  if (r < 78) return encodeOption(OPT.ABORT, rng.chance(0.8) ? undefined : rng.bytes(4));
  if (r < 80) return encodeOption(OPT.PEEK_EXPORT, rng.bytes(rng.int(16)));
  if (r < 90) return encodeOption(rng.range(12, 64), rng.bytes(rng.int(64)));
  return encodeOption(rng.u32(), rng.bytes(rng.skewed(2048)));
}

/** Frames with their positions, so mutations can aim at fields. */
interface Framed {
  parts: Buffer[];
  /** Offsets (in the joined stream) where a header starts, and its size. */
  headers: Array<{ at: number; size: number }>;
}

function join(f: Framed): Buffer {
  return Buffer.concat(f.parts);
}

function push(f: Framed, b: Buffer, headerSize = 0): void {
  const at = f.parts.reduce((n, p) => n + p.length, 0);
  if (headerSize > 0) f.headers.push({ at, size: headerSize });
  f.parts.push(b);
}

/** Randomly damage `buf` at or after `from`; notes what was done. */
function mutate(rng: Rng, buf: Buffer, from: number, f: Framed, notes: string[], mode: 'options' | 'compact' | 'extended'): Buffer {
  if (buf.length <= from) return buf;
  let out = Buffer.from(buf);
  const rounds = rng.chance(0.7) ? 1 : rng.range(2, 4);
  for (let i = 0; i < rounds; i++) {
    const hs = f.headers.filter((h) => h.at >= from && h.at + h.size <= out.length);
    const h = hs.length > 0 ? rng.pick(hs) : undefined;
    switch (rng.int(h ? 8 : 2)) {
      case 0: {
        const n = rng.range(1, 8);
        for (let k = 0; k < n; k++) {
          const at = from + rng.int(out.length - from);
          out[at]! ^= 1 << rng.int(8);
        }
        notes.push(`${n} bit flips`);
        break;
      }
      case 1: {
        const cut = from + rng.int(out.length - from);
        out = out.subarray(0, cut);
        notes.push(`truncated at ${cut}`);
        break;
      }
      case 2:
        out.writeUInt32BE(rng.u32(), h!.at);
        notes.push(`bad magic at ${h!.at}`);
        break;
      case 3:
        if (mode === 'options') {
          // A lying option length: too long, too short, or absurd.
          const real = out.readUInt32BE(h!.at + 12);
          const lie = rng.pick([U32_MAX, real + rng.range(1, 64), Math.max(0, real - rng.range(1, 8)), rng.u32(), 64 * 1024 + 1, 64 * 1024 * 1024 + 1]);
          out.writeUInt32BE(lie >>> 0, h!.at + 12);
          notes.push(`option length ${real} → ${lie >>> 0} at ${h!.at}`);
        } else if (mode === 'compact') {
          const v = rng.pick([U32_MAX, 0x80000000, 64 * 1024 * 1024 + 1, rng.u32()]);
          out.writeUInt32BE(v >>> 0, h!.at + 24);
          notes.push(`length ${v >>> 0} at ${h!.at}`);
        } else {
          const v = rng.pick([U64_MAX, 1n << 63n, BigInt(U32_MAX), BigInt(U32_MAX) + 1n, rng.u64()]);
          out.writeBigUInt64BE(v, h!.at + 24);
          notes.push(`length ${v} at ${h!.at}`);
        }
        break;
      case 4:
        if (mode === 'options') {
          out.writeUInt32BE(rng.pick([0, rng.u32(), rng.range(12, 100), OPT.STARTTLS, OPT.ABORT]), h!.at + 8);
          notes.push(`option code changed at ${h!.at}`);
        } else {
          out.writeUInt16BE(rng.pick([rng.range(8, 20), rng.int(0x10000), CMD.DISC, CMD.WRITE, CMD.READ]), h!.at + 6);
          notes.push(`type changed at ${h!.at}`);
        }
        break;
      case 5:
        if (mode === 'options') {
          out.writeUInt32BE(rng.pick([0, U32_MAX, rng.u32()]), Math.min(h!.at + 16, out.length - 4));
          notes.push(`first data word changed at ${h!.at}`);
        } else {
          out.writeUInt16BE(rng.chance(0.5) ? rng.int(0x10000) : 1 << rng.int(16), h!.at + 4);
          notes.push(`flags changed at ${h!.at}`);
        }
        break;
      case 6:
        if (mode !== 'options') {
          const off = rng.pick([U64_MAX, 1n << 63n, (1n << 53n) + 1n, BigInt(FUZZ_EXPORT_SIZE), BigInt(FUZZ_EXPORT_SIZE - 1), rng.u64()]);
          out.writeBigUInt64BE(off, h!.at + 16);
          notes.push(`offset ${off} at ${h!.at}`);
        } else {
          out = Buffer.concat([out.subarray(0, h!.at), out.subarray(h!.at + rng.range(1, h!.size))]);
          notes.push(`header bytes dropped at ${h!.at}`);
        }
        break;
      default: {
        // Splice random bytes in.
        const at = from + rng.int(out.length - from);
        const junk = rng.bytes(rng.range(1, 64));
        out = Buffer.concat([out.subarray(0, at), junk, out.subarray(at)]);
        notes.push(`${junk.length} junk bytes spliced at ${at}`);
        break;
      }
    }
  }
  return out;
}

// ── stream generators ────────────────────────────────────────────────────

function randomStream(rng: Rng, notes: string[]): Buffer {
  const parts: Buffer[] = [];
  // Some random streams start right so they get further in.
  if (rng.chance(0.5)) parts.push(encodeClientFlags(rng.pick([3, 1, 0, 2, rng.u32()])));
  if (rng.chance(0.3)) {
    const h = Buffer.alloc(8);
    h.writeBigUInt64BE(W.IHAVEOPT);
    parts.push(h);
  }
  parts.push(rng.bytes(rng.skewed(8192)));
  notes.push(`random ${parts.map((p) => p.length).join('+')} bytes`);
  return Buffer.concat(parts);
}

function optionStream(rng: Rng, notes: string[]): Buffer {
  const f: Framed = { parts: [], headers: [] };
  push(f, encodeClientFlags(rng.chance(0.85) ? 3 : rng.pick([1, 0, 2, 7, rng.u32()])));
  const n = rng.chance(0.8) ? rng.range(1, 12) : rng.range(1, 200);
  for (let i = 0; i < n; i++) push(f, randomOption(rng), 16);
  if (rng.chance(0.3)) push(f, rng.bytes(rng.skewed(4096))); // whatever a client sends after
  notes.push(`${n} options`);
  const clean = join(f);
  return rng.chance(0.75) ? mutate(rng, clean, 4, f, notes, 'options') : clean;
}

function specialStream(rng: Rng, special: Special, notes: string[]): Buffer {
  notes.push(`special ${special}`);
  const flags = encodeClientFlags(3);
  switch (special) {
    case 'name-1MiB': {
      const size = rng.pick([1024 * 1024, 1024 * 1024 - 1, 65 * 1024, 4097]);
      const name = Buffer.alloc(size, 0x61);
      const which = rng.pick([OPT.INFO, OPT.GO, OPT.EXPORT_NAME, OPT.SET_META_CONTEXT]);
      const data =
        which === OPT.EXPORT_NAME ? name : which === OPT.SET_META_CONTEXT ? encodeMetaContextData(name, ['base:allocation']) : encodeInfoGoData(name, [0, 1, 2, 3]);
      notes.push(`option ${which} with a ${size}-byte name`);
      return Buffer.concat([flags, encodeOption(which, data), encodeOption(OPT.GO, encodeInfoGoData(FUZZ_EXPORTS.writable, []))]);
    }
    case 'options-100k': {
      const one = rng.chance(0.5) ? encodeOption(OPT.LIST) : encodeOption(rng.range(12, 1000));
      return Buffer.concat([flags, Buffer.concat(Array.from({ length: 100_000 }, () => one))]);
    }
    case 'info-thousands': {
      const info = encodeOption(OPT.INFO, encodeInfoGoData(FUZZ_EXPORTS.writable, [0, 1, 2, 3]));
      const n = rng.range(1000, 5000);
      notes.push(`${n} INFO`);
      return Buffer.concat([flags, Buffer.concat(Array.from({ length: n }, () => info))]);
    }
    case 'option-length-u32-max':
      return Buffer.concat([flags, encodeOption(rng.pick([OPT.INFO, OPT.LIST, 77]), rng.bytes(100), U32_MAX)]);
    case 'length-u32-max':
    case 'length-u64-max': {
      const ext = special === 'length-u64-max';
      const hs = handshake(rng, ext ? 'extended' : rng.pick(['simple', 'structured'] as const), notes);
      const type = rng.pick([CMD.WRITE, CMD.READ, CMD.BLOCK_STATUS, CMD.TRIM, CMD.WRITE_ZEROES]);
      const fields = { flags: ext && type === CMD.WRITE ? CMD_FLAG.PAYLOAD_LEN : 0, type, cookie: 7n, offset: 0 };
      const req = ext ? encodeExtendedRequest({ ...fields, length: U64_MAX }) : encodeRequest({ ...fields, length: U32_MAX });
      notes.push(`type ${type} with length ${ext ? U64_MAX : U32_MAX}`);
      return Buffer.concat([hs.bytes, req, rng.bytes(rng.skewed(64 * 1024))]);
    }
  }
}

type Mode = 'simple' | 'structured' | 'extended';

/** A clean handshake that ends in transmission with the given mode. */
function handshake(rng: Rng, mode: Mode, notes: string[]): { bytes: Buffer } {
  const parts: Buffer[] = [encodeClientFlags(3)];
  const name = rng.pick([FUZZ_EXPORTS.writable, FUZZ_EXPORTS.writable, FUZZ_EXPORTS.readOnly, FUZZ_EXPORTS.aligned, FUZZ_EXPORTS.async, '']);
  if (mode === 'structured') parts.push(encodeOption(OPT.STRUCTURED_REPLY));
  if (mode === 'extended') parts.push(encodeOption(OPT.EXTENDED_HEADERS));
  if (mode !== 'simple' && rng.chance(0.6)) parts.push(encodeOption(OPT.SET_META_CONTEXT, encodeMetaContextData(name, ['base:allocation'])));
  if (mode === 'simple' && rng.chance(0.3)) {
    parts.push(encodeOption(OPT.EXPORT_NAME, Buffer.from(name)));
    notes.push(`EXPORT_NAME "${name}"`);
  } else {
    parts.push(encodeOption(OPT.GO, encodeInfoGoData(name, rng.chance(0.5) ? [] : [3])));
    notes.push(`${mode} GO "${name}"`);
  }
  return { bytes: Buffer.concat(parts) };
}

function randomRequest(rng: Rng, mode: Mode, cookie: bigint): { header: Buffer; payload?: Buffer } {
  const r = rng.int(100);
  const type =
    r < 30 ? CMD.READ : r < 55 ? CMD.WRITE : r < 62 ? CMD.FLUSH : r < 68 ? CMD.TRIM : r < 74 ? CMD.WRITE_ZEROES : r < 80 ? CMD.CACHE : r < 90 ? CMD.BLOCK_STATUS : r < 92 ? CMD.DISC : rng.chance(0.5) ? rng.range(8, 20) : rng.int(0x10000);
  const size = FUZZ_EXPORT_SIZE;
  let offset: bigint;
  switch (rng.int(10)) {
    case 0:
      offset = rng.pick([0n, BigInt(size), BigInt(size - 1), BigInt(size - 512), U64_MAX, 1n << 63n, 1n << 53n]);
      break;
    case 1:
      offset = rng.u64();
      break;
    default:
      offset = BigInt(rng.chance(0.6) ? rng.int(size / 512) * 512 : rng.int(size));
  }
  let length: number;
  switch (rng.int(10)) {
    case 0:
      length = rng.pick([0, 1, 511, 512, 65536, 65537, 32 * 1024 * 1024 + 1]);
      break;
    default:
      length = rng.chance(0.6) ? rng.range(1, 8) * 512 : rng.range(1, 9000);
  }
  if (type === CMD.FLUSH && rng.chance(0.8)) {
    offset = 0n;
    length = 0;
  }
  let flags = 0;
  if (rng.chance(0.2)) flags = rng.chance(0.5) ? rng.int(0x40) : rng.int(0x10000);
  else if (rng.chance(0.3)) {
    if (type === CMD.WRITE || type === CMD.WRITE_ZEROES || type === CMD.TRIM) flags |= CMD_FLAG.FUA;
    if (type === CMD.WRITE_ZEROES) flags |= rng.pick([0, CMD_FLAG.NO_HOLE, CMD_FLAG.FAST_ZERO]);
    if (type === CMD.READ) flags |= CMD_FLAG.DF;
    if (type === CMD.BLOCK_STATUS) flags |= CMD_FLAG.REQ_ONE;
  }
  if (mode === 'extended' && type === CMD.WRITE) flags |= rng.chance(0.95) ? CMD_FLAG.PAYLOAD_LEN : 0;
  const withPayload = type === CMD.WRITE && length <= 256 * 1024;
  const payload = withPayload ? rng.bytes(length) : undefined;
  const header =
    mode === 'extended'
      ? encodeExtendedRequest({ flags, type, cookie, offset, length })
      : encodeRequest({ flags, type, cookie, offset: offset & U64_MAX, length });
  return { header, payload };
}

function requestStream(rng: Rng, mode: Mode, notes: string[]): Buffer {
  const hs = handshake(rng, mode, notes);
  const f: Framed = { parts: [], headers: [] };
  push(f, hs.bytes);
  const from = hs.bytes.length;
  const n = rng.chance(0.85) ? rng.range(1, 24) : rng.range(25, 300);
  // Cookies are distinct, with random high bits: a reply to a cookie never sent is caught.
  const base = (rng.u64() & ~0xffffn) | 0x1000n;
  for (let i = 0; i < n; i++) {
    const { header, payload } = randomRequest(rng, mode, base + BigInt(i));
    push(f, header, header.length);
    if (payload) push(f, payload);
  }
  notes.push(`${n} requests`);
  const clean = join(f);
  return rng.chance(0.6) ? mutate(rng, clean, from, f, notes, mode === 'extended' ? 'extended' : 'compact') : clean;
}

/** The stream of a given index: its kind rotates, specials come at fixed indexes. */
export function generate(rng: Rng, index: number): FuzzStream {
  const notes: string[] = [];
  if (index % SPECIAL_EVERY === SPECIAL_EVERY - 1) {
    const special = SPECIALS[Math.floor(index / SPECIAL_EVERY) % SPECIALS.length]!;
    return { kind: 'options', notes, bytes: specialStream(rng, special, notes) };
  }
  const r = rng.int(100);
  const kind: StreamKind = r < 15 ? 'random' : r < 40 ? 'options' : r < 60 ? 'simple' : r < 80 ? 'structured' : 'extended';
  switch (kind) {
    case 'random':
      return { kind, notes, bytes: randomStream(rng, notes) };
    case 'options':
      return { kind, notes, bytes: optionStream(rng, notes) };
    default:
      return { kind, notes, bytes: requestStream(rng, kind, notes) };
  }
}

/** Where to cut a stream into socket-sized pieces (split points, including mid-header). */
export function cutPoints(rng: Rng, length: number): number[] {
  if (length === 0) return [];
  const pieces = rng.chance(0.4) ? 1 : rng.chance(0.7) ? rng.range(2, 6) : rng.range(7, 40);
  const cuts = new Set<number>();
  for (let i = 1; i < pieces; i++) cuts.add(1 + rng.int(Math.max(1, length - 1)));
  return [...cuts].filter((c) => c > 0 && c < length).sort((a, b) => a - b);
}

// ── the checker ──────────────────────────────────────────────────────────

interface ShadowRequest {
  type: number;
  flags: number;
  cookie: bigint;
  offset: bigint;
  length: bigint;
  /** The header arrived, the payload never completed: only an error may answer it (a server may refuse early). */
  partial: boolean;
}

/**
 * The client's requests as the spec frames them, up to the first bad magic,
 * incomplete frame or DISC (a last request whose payload never completed is
 * kept, marked partial).
 */
function shadowRequests(b: Buffer, extended: boolean): ShadowRequest[] {
  const out: ShadowRequest[] = [];
  const size = extended ? SIZE.EXTENDED_REQUEST : SIZE.REQUEST;
  let at = 0;
  while (b.length - at >= size) {
    const magic = b.readUInt32BE(at);
    if (magic !== (extended ? W.EXTENDED_REQUEST_MAGIC : W.REQUEST_MAGIC)) break;
    const flags = b.readUInt16BE(at + 4);
    const type = b.readUInt16BE(at + 6);
    const cookie = b.readBigUInt64BE(at + 8);
    const offset = b.readBigUInt64BE(at + 16);
    const length = extended ? b.readBigUInt64BE(at + 24) : BigInt(b.readUInt32BE(at + 24));
    // A compact WRITE carries `length` bytes of payload; an extended request does with PAYLOAD_LEN (and WRITE).
    const payload = type === CMD.WRITE || (extended && (flags & CMD_FLAG.PAYLOAD_LEN) !== 0) ? length : 0n;
    if (BigInt(b.length - at - size) < payload) {
      out.push({ type, flags, cookie, offset, length, partial: true });
      break;
    }
    out.push({ type, flags, cookie, offset, length, partial: false });
    at += size + Number(payload);
    if (type === CMD.DISC) break; // nothing after DISC is read (transmission.disc-drains)
  }
  return out;
}

class Out {
  at = 0;
  constructor(readonly b: Buffer) {}
  get left(): number {
    return this.b.length - this.at;
  }
}

/** Desync found: what, and where in the server's bytes. */
export class Desync extends Error {
  override readonly name = 'Desync';
}

/**
 * Check the server's bytes against the client's. `truncatedTailOk`: the
 * last server frame may be cut short (a real socket reset by a hard
 * disconnect can lose unsent bytes); in-process pairs lose nothing.
 */
export function checkReplies(client: Buffer, server: Buffer, truncatedTailOk: boolean): string | null {
  try {
    check(client, server, truncatedTailOk);
    return null;
  } catch (e) {
    if (e instanceof Desync || e instanceof WireError) return e.message;
    throw e;
  }
}

function check(client: Buffer, server: Buffer, truncatedTailOk: boolean): void {
  const out = new Out(server);
  const need = (n: number, what: string): boolean => {
    if (out.left >= n) return true;
    if (out.left === 0 || truncatedTailOk) return false;
    throw new Desync(`server sent ${out.left} bytes of ${what} (${n} expected) at ${out.at}, then closed`);
  };
  if (!need(18, 'greeting')) throw new Desync('no greeting');
  if (server.readBigUInt64BE(0) !== W.NBDMAGIC || server.readBigUInt64BE(8) !== W.IHAVEOPT) throw new Desync('bad greeting');
  out.at = 18;
  if (client.length < 4) {
    if (out.left > 0) throw new Desync(`server sent ${out.left} bytes before the client flags`);
    return;
  }
  const clientFlags = client.readUInt32BE(0);
  let at = 4;
  let sr = false;
  let eh = false;
  for (;;) {
    // One option frame, as the spec frames it.
    if (client.length - at < SIZE.OPTION_HEADER || client.readBigUInt64BE(at) !== W.IHAVEOPT) break;
    const code = client.readUInt32BE(at + 8);
    const len = client.readUInt32BE(at + 12);
    // Data that never completed: a server may still refuse the option from its header alone (data it
    // would skip anyway), but it cannot accept it.
    const partial = client.length - at - SIZE.OPTION_HEADER < len;
    at = partial ? client.length : at + SIZE.OPTION_HEADER + len;
    if (out.left === 0) return; // the server stopped answering (disconnect): fine
    if (code === OPT.EXPORT_NAME && !partial) {
      // Success is the headerless export reply: 10 bytes, or 134 without NO_ZEROES; failure is a disconnect.
      const n = clientFlags & CLIENT_FLAG.NO_ZEROES ? 10 : 134;
      if (!need(n, 'EXPORT_NAME reply')) return;
      if (n === 134 && server.subarray(out.at + 10, out.at + 134).some((x) => x !== 0)) throw new Desync('EXPORT_NAME padding not zero');
      out.at += n;
      return transmission(client.subarray(at), out, sr, eh, truncatedTailOk);
    }
    let final = -1;
    while (final < 0) {
      if (!need(SIZE.OPTION_REPLY_HEADER, `reply to option ${code}`)) return;
      const h = server.subarray(out.at, out.at + SIZE.OPTION_REPLY_HEADER);
      if (h.readBigUInt64BE(0) !== W.REP_MAGIC) throw new Desync(`bad option reply magic at ${out.at} (answering option ${code})`);
      const echo = h.readUInt32BE(8);
      if (echo !== code) throw new Desync(`option reply at ${out.at} echoes option ${echo}, the option being answered is ${code}`);
      const type = h.readUInt32BE(12);
      const dlen = h.readUInt32BE(16);
      if (dlen > 1024 * 1024) throw new Desync(`option reply of ${dlen} bytes`);
      if (!need(SIZE.OPTION_REPLY_HEADER + dlen, 'option reply data')) return;
      const data = server.subarray(out.at + SIZE.OPTION_REPLY_HEADER, out.at + SIZE.OPTION_REPLY_HEADER + dlen);
      out.at += SIZE.OPTION_REPLY_HEADER + dlen;
      if (type === REP.INFO) parseRepInfo(data);
      else if (type === REP.SERVER) parseRepServer(data);
      else if (type === REP.META_CONTEXT && dlen < 4) throw new Desync('short NBD_REP_META_CONTEXT');
      else if (type === REP.ACK && dlen !== 0) throw new Desync('ACK with data');
      else if (!isFinalRep(type) && type !== REP.META_CONTEXT) throw new Desync(`unknown option reply type 0x${type.toString(16)}`);
      // (ABORT is the exception: its ACK ends the session whatever the client still meant to send.)
      if (partial && !isRepError(type) && code !== OPT.ABORT) throw new Desync(`option ${code} whose data never completed answered with 0x${type.toString(16)}`);
      if (isFinalRep(type)) final = type;
    }
    if (partial) break;
    if (final === REP.ACK) {
      if (code === OPT.STRUCTURED_REPLY) sr = true;
      if (code === OPT.EXTENDED_HEADERS) eh = true;
      if (code === OPT.GO) return transmission(client.subarray(at), out, sr || eh, eh, truncatedTailOk);
      if (code === OPT.ABORT || code === OPT.STARTTLS) break;
    }
  }
  if (out.left > 0) throw new Desync(`server sent ${out.left} bytes (at ${out.at}) that answer no option the client sent`);
}

function transmission(client: Buffer, out: Out, sr: boolean, eh: boolean, truncatedTailOk: boolean): void {
  const reqs = shadowRequests(client, eh);
  const open = new Map<bigint, ShadowRequest[]>();
  for (const r of reqs) {
    const l = open.get(r.cookie);
    if (l) l.push(r);
    else open.set(r.cookie, [r]);
  }
  const b = out.b;
  const need = (n: number, what: string): boolean => {
    if (out.left >= n) return true;
    if (truncatedTailOk) return false;
    throw new Desync(`server sent ${out.left} bytes of ${what} (${n} expected) at ${out.at}, then closed`);
  };
  const outstanding = (cookie: bigint, where: number): ShadowRequest[] => {
    const l = open.get(cookie);
    if (!l) {
      const end = Math.min(b.length, where + (b.readUInt32BE(where) === W.SIMPLE_REPLY_MAGIC ? 16 : 48));
      throw new Desync(`reply at ${where} for cookie 0x${cookie.toString(16)}, which no outstanding request carries (${b.toString('hex', where, end)})`);
    }
    return l;
  };
  /**
   * The outstanding request a reply answers. Cookies are unique in what the
   * generator writes, but a mutation can make two requests share one; the
   * server may answer them in any order, so the reply belongs to the first
   * of them it fits. With one candidate, why it does not fit is the desync.
   */
  const pick = (l: readonly ShadowRequest[], misfit: (r: ShadowRequest) => string | null): ShadowRequest => {
    let why: string | null = null;
    for (const r of l) {
      const w = r.type === CMD.DISC ? 'a reply to NBD_CMD_DISC (transmission.disc-drains: none)' : misfit(r);
      if (w === null) return r;
      why ??= w;
    }
    throw new Desync(why!);
  };
  const done = (r: ShadowRequest) => {
    const l = open.get(r.cookie)!;
    l.splice(l.indexOf(r), 1);
    if (l.length === 0) open.delete(r.cookie);
  };
  while (out.left > 0) {
    if (!need(4, 'reply magic')) return;
    const where = out.at;
    const magic = b.readUInt32BE(where);
    if (magic === W.SIMPLE_REPLY_MAGIC) {
      if (eh) throw new Desync(`simple reply at ${where} with extended headers on (reply.negotiated-mode)`);
      if (!need(SIZE.SIMPLE_REPLY, 'simple reply')) return;
      const error = b.readUInt32BE(where + 4);
      const l = outstanding(b.readBigUInt64BE(where + 8), where);
      const misfit = (r: ShadowRequest): string | null => {
        if (r.type === CMD.DISC) return 'a reply to NBD_CMD_DISC (transmission.disc-drains: none)';
        if (r.partial && error === 0) return `success reply at ${where} to a request whose payload never completed`;
        if (sr && r.type === CMD.READ) return `simple reply at ${where} to a READ with structured replies on (reply.negotiated-mode)`;
        if (sr && r.type === CMD.BLOCK_STATUS && error === 0) return `simple success reply at ${where} to BLOCK_STATUS (reply.block-status-chunks)`;
        return null;
      };
      const r = pick(l, misfit);
      out.at += SIZE.SIMPLE_REPLY;
      // Requests sharing this cookie that would be followed by different amounts of data (a READ and
      // anything else, or READs of other lengths): no client could frame what follows. Stop here.
      // That holds for an error reply too: which of them it answers decides how the next reply to
      // that cookie is framed (the other one may still succeed with data).
      const dataAfter = (o: ShadowRequest) => (error === 0 && o.type === CMD.READ ? o.length : 0n);
      const dataOnSuccess = (o: ShadowRequest) => (o.type === CMD.READ ? o.length : 0n);
      if (l.some((o) => o !== r && misfit(o) === null && (dataAfter(o) !== dataAfter(r) || dataOnSuccess(o) !== dataOnSuccess(r)))) return;
      if (error === 0 && r.type === CMD.READ) {
        if (!need(Number(r.length), 'READ data')) return;
        out.at += Number(r.length);
      }
      done(r);
    } else if (magic === W.STRUCTURED_REPLY_MAGIC || magic === W.EXTENDED_REPLY_MAGIC) {
      const ext = magic === W.EXTENDED_REPLY_MAGIC;
      if (ext !== eh) throw new Desync(`${ext ? 'extended' : 'structured'} chunk at ${where} in ${eh ? 'extended' : sr ? 'structured' : 'simple'} mode`);
      if (!sr) throw new Desync(`structured chunk at ${where} without structured replies negotiated`);
      const hsize = ext ? SIZE.EXTENDED_REPLY : SIZE.STRUCTURED_REPLY;
      if (!need(hsize, 'chunk header')) return;
      const flags = b.readUInt16BE(where + 4);
      const type = b.readUInt16BE(where + 6);
      const l = outstanding(b.readBigUInt64BE(where + 8), where);
      const plen = ext ? b.readBigUInt64BE(where + 24) : BigInt(b.readUInt32BE(where + 16));
      if (plen > 64n * 1024n * 1024n) throw new Desync(`chunk payload of ${plen} bytes at ${where}`);
      if (!need(hsize + Number(plen), 'chunk payload')) return;
      const payload = b.subarray(where + hsize, where + hsize + Number(plen));
      out.at += hsize + Number(plen);
      let c: ReturnType<typeof decodeChunk>;
      try {
        c = decodeChunk({ type, flags, payload });
      } catch (e) {
        const req = l.map((r) => `request type ${r.type} flags ${r.flags} offset ${r.offset} length ${r.length}`).join(' or ');
        throw new Desync(`${(e as Error).message} in the chunk at ${where} (${b.toString('hex', where, where + hsize + Math.min(Number(plen), 16))}) for ${req}`);
      }
      if (c.type === 'blockStatus' && ext) throw new Desync(`compact BLOCK_STATUS chunk at ${where} with extended headers`);
      if (c.type === 'blockStatusExt' && !ext) throw new Desync(`BLOCK_STATUS_EXT chunk at ${where} without extended headers`);
      const misfit = (r: ShadowRequest): string | null => {
        if (ext && b.readBigUInt64BE(where + 16) !== r.offset) return `extended chunk at ${where} carries offset ${b.readBigUInt64BE(where + 16)}, request had ${r.offset} (reply.extended-offset-echo)`;
        if (r.partial && c.type !== 'error' && c.type !== 'errorOffset') return `${c.type} chunk at ${where} for a request whose payload never completed`;
        if ((c.type === 'offsetData' || c.type === 'offsetHole') && r.type !== CMD.READ) return `data chunk at ${where} for command ${r.type}`;
        if ((c.type === 'blockStatus' || c.type === 'blockStatusExt') && r.type !== CMD.BLOCK_STATUS) return `status chunk at ${where} for command ${r.type}`;
        if (c.type === 'offsetData' || c.type === 'offsetHole') {
          const len = c.type === 'offsetData' ? BigInt(c.data.length) : BigInt(c.size);
          if (c.offset < r.offset || c.offset + len > r.offset + r.length) {
            return `READ chunk at ${where} covers [${c.offset}, +${len}) outside the request [${r.offset}, +${r.length}) (reply.structured-chunks)`;
          }
        }
        return null;
      };
      const r = pick(l, misfit);
      // Requests sharing this cookie (a mutation's doing) that this final chunk fits as well: which one it
      // ends decides how the next chunks for that cookie are read (an ERROR for one, data for a READ), and
      // no client could tell. Stop checking this stream here, as for simple replies.
      if ((flags & DONE) !== 0 && l.some((o) => o !== r && o.type !== CMD.DISC && misfit(o) === null)) return;
      if (flags & DONE) done(r);
    } else {
      throw new Desync(`bad reply magic 0x${magic.toString(16)} at ${where}`);
    }
  }
}
