/**
 * Test support for the machine tests (unit, graph and model-based): drive the
 * handshake machine with real option frames and read back what it emitted.
 *
 * Option frames are produced by the real decoder (client bytes → FrameDecoder),
 * so these tests exercise decoder + machine together. Option replies are parsed
 * by a deliberately tiny local parser (fixed-newstyle option replies), independent of
 * src/protocol.
 */
import { createActor, type Actor } from 'xstate';
import { FrameDecoder, type DecoderLimits } from '../../../src/protocol/decoder.js';
import type { OptionFrame, RequestFrame } from '../../../src/protocol/frames.js';
import { handshakeMachine, type HandshakeInput } from '../../../src/machines/handshake.js';
import { transmissionMachine, type TransmissionInput } from '../../../src/machines/transmission.js';
import type { ExportDescriptor, HandshakeEmitted, HandshakeEvent, TransmissionEmitted } from '../../../src/machines/types.js';

// ── numbers, written out here on purpose (not imported from src) ─────────

export const REP_MAGIC = 0x0003e889045565a9n;
export const IHAVEOPT = 0x49484156454f5054n;
// Option codes and option reply types: the test wire codec's tables (written from the spec, not src).
export { OPT as O, REP as R, isRepError as isErr, isFinalRep as isFinal } from '../../helpers/wire.js';

// ── client-side encoders (test-local) ────────────────────────────────────

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

/** Option request bytes: IHAVEOPT · code · length · data. */
export function optionBytes(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(code >>> 0, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** INFO / GO data. */
export function infoGoData(name: string, requests: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u16(requests.length), ...requests.map(u16)]);
}

/** LIST/SET_META_CONTEXT data. */
export function metaData(name: string, queries: readonly string[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const qs = queries.map((q) => {
    const b = Buffer.from(q, 'utf8');
    return Buffer.concat([u32(b.length), b]);
  });
  return Buffer.concat([u32(n.length), n, u32(queries.length), ...qs]);
}

/** Compact request bytes. */
export function requestBytes(type: number, cookie: bigint, offset: number, length: number, flags = 0, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length >>> 0, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

/** Run one option through the real decoder and return the typed frame. */
export function decodeOption(code: number, data: Buffer = Buffer.alloc(0), limits: Partial<DecoderLimits> = {}): OptionFrame {
  const d = new FrameDecoder(limits);
  d.push(u32(3));
  const flags = d.next();
  if (!flags || flags.kind !== 'clientFlags') throw new Error('decoder did not yield client flags');
  d.push(optionBytes(code, data));
  const f = d.next();
  if (!f || f.kind !== 'option') throw new Error(`decoder did not yield an option: ${JSON.stringify(f)}`);
  return f;
}

/** The machine event for an option frame. */
export function optEvent(frame: OptionFrame): HandshakeEvent {
  return { type: `opt.${frame.opt}`, frame } as HandshakeEvent;
}

/** Shorthand: bytes → decoder → machine event. */
export function opt(code: number, data?: Buffer, limits?: Partial<DecoderLimits>): HandshakeEvent {
  return optEvent(decodeOption(code, data, limits));
}

// ── option reply parser, test-local ──────────────────────────────────────

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

/** Parse exactly one option reply from one emitted frame. Throws on any framing error. */
export function parseOptionReply(frame: readonly Buffer[]): OptionReply {
  const b = Buffer.concat(frame);
  if (b.length < 20) throw new Error(`option reply of ${b.length} bytes is shorter than its header`);
  const magic = b.readBigUInt64BE(0);
  if (magic !== REP_MAGIC) throw new Error(`bad option reply magic 0x${magic.toString(16)}`);
  const len = b.readUInt32BE(16);
  if (b.length !== 20 + len) throw new Error(`option reply declares ${len} data bytes but frame has ${b.length - 20}`);
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
}

/** NBD_REP_INFO payload: info type and its bytes. */
export function infoOf(r: OptionReply): { info: number; payload: Buffer } {
  return { info: r.data.readUInt16BE(0), payload: r.data.subarray(2) };
}

// ── actor drivers ────────────────────────────────────────────────────────

export const KiB = 1024;

export const EXPORTS: readonly ExportDescriptor[] = [
  {
    name: 'disk',
    description: 'the main disk',
    size: 1024 * KiB,
    flags: 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0400 | 0x0800, // FLUSH FUA TRIM WRITE_ZEROES CACHE FAST_ZERO
    blockSizes: { minimum: 1, preferred: 4096, maximum: 32 * 1024 * KiB },
  },
  {
    name: 'ro',
    size: 64 * KiB,
    flags: 0x0002, // READ_ONLY
    blockSizes: { minimum: 512, preferred: 4096, maximum: 1024 * KiB },
  },
  {
    name: 'secret',
    description: 'TLS only',
    size: 4 * KiB,
    flags: 0,
    blockSizes: { minimum: 1, preferred: 4096, maximum: 1024 * KiB },
    tlsOnly: true,
  },
];

export const DEFAULT_INPUT: HandshakeInput = { exports: EXPORTS, defaultExport: 'disk' };

export interface HandshakeDriver {
  readonly actor: Actor<typeof handshakeMachine>;
  /** Everything emitted, in order. */
  readonly emitted: HandshakeEmitted[];
  /** Send an event and return what it emitted. */
  send(event: HandshakeEvent): HandshakeEmitted[];
  /** Send an option event and return the parsed option replies it produced. */
  option(event: HandshakeEvent): OptionReply[];
  /** Actor errors (must stay empty: the machine never throws). */
  readonly errors: unknown[];
  /** The top-level state (`options` whatever its mode: `options.open`, `options.awaitingTls`, …). */
  value(): string;
}

/** The top-level state name of a snapshot value (`{ options: 'open' }` ⇒ `options`). */
export function topState(value: unknown): string {
  return typeof value === 'string' ? value : Object.keys(value as object)[0]!;
}

export function startHandshake(input: Partial<HandshakeInput> = {}, clientFlags: number | null = 3): HandshakeDriver {
  const emitted: HandshakeEmitted[] = [];
  const errors: unknown[] = [];
  const actor = createActor(handshakeMachine, { input: { ...DEFAULT_INPUT, ...input } });
  actor.on('*', (e) => emitted.push(e as HandshakeEmitted));
  actor.subscribe({ error: (e) => errors.push(e) });
  actor.start();
  const send = (event: HandshakeEvent) => {
    const at = emitted.length;
    actor.send(event);
    return emitted.slice(at);
  };
  if (clientFlags !== null) send({ type: 'wire.clientFlags', flags: clientFlags });
  return {
    actor,
    emitted,
    errors,
    send,
    option: (event) => send(event).filter((e) => e.type === 'send').map((e) => parseOptionReply((e as { frame: Buffer[] }).frame)),
    value: () => topState(actor.getSnapshot().value),
  };
}

export function negotiatedFor(exp: ExportDescriptor, over: Partial<TransmissionInput['negotiated']> = {}): TransmissionInput['negotiated'] {
  return {
    export: exp,
    flags: exp.flags | 1,
    structuredReplies: false,
    extendedHeaders: false,
    metaContexts: [],
    tls: false,
    viaExportName: false,
    ...over,
  };
}

export interface TransmissionDriver {
  readonly actor: Actor<typeof transmissionMachine>;
  readonly emitted: TransmissionEmitted[];
  send(event: Parameters<Actor<typeof transmissionMachine>['send']>[0]): TransmissionEmitted[];
  request(r: Partial<RequestFrame>): TransmissionEmitted[];
  readonly errors: unknown[];
}

export function request(r: Partial<RequestFrame>): RequestFrame {
  return { kind: 'request', extended: false, flags: 0, type: 0, cookie: 1n, offset: 0, length: 0, huge: false, payloadDiscarded: false, ...r };
}

export function startTransmission(input: TransmissionInput): TransmissionDriver {
  const emitted: TransmissionEmitted[] = [];
  const errors: unknown[] = [];
  const actor = createActor(transmissionMachine, { input });
  actor.on('*', (e) => emitted.push(e as TransmissionEmitted));
  actor.subscribe({ error: (e) => errors.push(e) });
  actor.start();
  const send: TransmissionDriver['send'] = (event) => {
    const at = emitted.length;
    actor.send(event);
    return emitted.slice(at);
  };
  return { actor, emitted, errors, send, request: (r) => send({ type: 'request', frame: request(r) }) };
}

// ── transmission reply parser (simple, structured, extended), test-local ─

export const SIMPLE_MAGIC = 0x67446698;
export const STRUCTURED_MAGIC = 0x668e33ef;
export const EXTENDED_MAGIC = 0x6e8a278c;

export interface Chunk {
  readonly magic: number;
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  /** Extended headers only: the echoed request offset. */
  readonly requestOffset?: bigint;
  readonly payload: Buffer;
}

/** Split a reply's bytes into structured / extended chunks. Throws on a framing error. */
export function parseChunks(frame: readonly Buffer[]): Chunk[] {
  const b = Buffer.concat(frame);
  const out: Chunk[] = [];
  let at = 0;
  while (at < b.length) {
    const magic = b.readUInt32BE(at);
    if (magic === STRUCTURED_MAGIC) {
      const len = b.readUInt32BE(at + 16);
      if (at + 20 + len > b.length) throw new Error('structured chunk runs past the frame');
      out.push({ magic, flags: b.readUInt16BE(at + 4), type: b.readUInt16BE(at + 6), cookie: b.readBigUInt64BE(at + 8), payload: b.subarray(at + 20, at + 20 + len) });
      at += 20 + len;
    } else if (magic === EXTENDED_MAGIC) {
      const len = Number(b.readBigUInt64BE(at + 24));
      if (at + 32 + len > b.length) throw new Error('extended chunk runs past the frame');
      out.push({
        magic,
        flags: b.readUInt16BE(at + 4),
        type: b.readUInt16BE(at + 6),
        cookie: b.readBigUInt64BE(at + 8),
        requestOffset: b.readBigUInt64BE(at + 16),
        payload: b.subarray(at + 32, at + 32 + len),
      });
      at += 32 + len;
    } else {
      throw new Error(`not a chunk magic: 0x${magic.toString(16)} at ${at}`);
    }
  }
  return out;
}

/** A simple reply: header fields and the bytes after it. */
export function parseSimple(frame: readonly Buffer[]): { magic: number; error: number; cookie: bigint; data: Buffer } {
  const b = Buffer.concat(frame);
  return { magic: b.readUInt32BE(0), error: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8), data: b.subarray(16) };
}
