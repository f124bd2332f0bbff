/**
 * Server → client transmission frames: simple replies, structured chunks,
 * extended chunks. Generate / parse / mirror triples against hex written
 * from the spec (simple reply, structured and extended chunks, chunk types).
 */
import { describe, expect, it } from 'vitest';
import {
  chunkHeader,
  encodeChunkBlockStatus,
  encodeChunkError,
  encodeChunkErrorOffset,
  encodeChunkNone,
  encodeChunkOffsetData,
  encodeChunkOffsetHole,
  encodeSimpleReply,
  withHasFlags,
} from '../../../src/protocol/encoder.js';
import {
  decodeBlockStatus,
  decodeBlockStatusExt,
  decodeChunk,
  decodeError,
  decodeErrorOffset,
  decodeOffsetData,
  decodeOffsetHole,
  flat,
  hex,
  parseTransmissionReplies,
  WireError,
  type ReplyChunk,
} from '../../helpers/wire.js';

const COOKIE = 0x0102030405060708n;
const C = '0102030405060708';
const SIMPLE = '67446698';
const STRUCT = '668e33ef';
const EXT = '6e8a278c';

describe('simple reply', () => {
  it('generate: success without data is one 16-byte header', () => {
    const frame = encodeSimpleReply(COOKIE, 0);
    expect(frame).toHaveLength(1);
    expect(frame[0]!.toString('hex')).toBe(hex(`${SIMPLE} 00000000 ${C}`).toString('hex'));
  });

  it('generate: error reply', () => {
    expect(flat(encodeSimpleReply(COOKIE, 22))).toEqual(hex(`${SIMPLE} 00000016 ${C}`));
    expect(flat(encodeSimpleReply(0xffffffffffffffffn, 108))).toEqual(hex(`${SIMPLE} 0000006c ffffffffffffffff`));
  });

  it('READ data travels as the very same buffer object, not a copy (practice 8)', () => {
    const data = Buffer.from('hello world');
    const frame = encodeSimpleReply(COOKIE, 0, data);
    expect(frame).toHaveLength(2);
    expect(frame[1]).toBe(data);
    expect(flat(frame)).toEqual(hex(`${SIMPLE} 00000000 ${C} ${data.toString('hex')}`));
  });

  it('a list of data buffers is passed through element by element', () => {
    const a = Buffer.from('ab');
    const b = Buffer.from('cd');
    const frame = encodeSimpleReply(COOKIE, 0, [a, b]);
    expect(frame).toHaveLength(3);
    expect(frame[1]).toBe(a);
    expect(frame[2]).toBe(b);
  });

  it('reply.simple-read: no data follows a non-zero error, even if data is given', () => {
    const frame = encodeSimpleReply(COOKIE, 5, Buffer.from('junk'));
    expect(frame).toHaveLength(1);
    expect(flat(frame)).toEqual(hex(`${SIMPLE} 00000005 ${C}`));
  });

  it('parse: with and without READ framing', () => {
    const bytes = hex(`${SIMPLE} 00000000 ${C} 61626364 | ${SIMPLE} 00000005 0000000000000009 | ${SIMPLE} 00000000 000000000000000a`);
    const replies = parseTransmissionReplies(bytes, { readLengths: new Map([[COOKIE, 4], [9n, 100]]) });
    expect(replies).toEqual([
      { kind: 'simple', cookie: COOKIE, error: 0, data: Buffer.from('abcd') },
      // A READ error carries no data: the parser must not consume 100 bytes for it.
      { kind: 'simple', cookie: 9n, error: 5 },
      // Cookie 10 is not a READ: no data.
      { kind: 'simple', cookie: 10n, error: 0 },
    ]);
  });

  it('the parser refuses truncated READ data and simple replies under extended headers', () => {
    const bytes = flat(encodeSimpleReply(COOKIE, 0, Buffer.from('abc')));
    expect(() => parseTransmissionReplies(bytes, { readLengths: new Map([[COOKIE, 4]]) })).toThrow(WireError);
    expect(() => parseTransmissionReplies(flat(encodeSimpleReply(COOKIE, 0)), { extended: true })).toThrow(WireError);
    expect(() => parseTransmissionReplies(hex('12345678 00000000 0000000000000000'))).toThrow(WireError);
  });
});

interface ChunkFixture {
  name: string;
  frame: () => Buffer[];
  hex: string;
  extended: boolean;
  flags: number;
  type: number;
  offset?: bigint;
  decoded: unknown;
}

const BS_EXTENTS = [
  { length: 4096, flags: 0 },
  { length: 8192, flags: 3 },
];

const chunkFixtures: ChunkFixture[] = [
  {
    name: 'NONE (always DONE, length 0)',
    frame: () => encodeChunkNone(COOKIE),
    hex: `${STRUCT} 0001 0000 ${C} 00000000`,
    extended: false,
    flags: 1,
    type: 0,
    decoded: { type: 'none' },
  },
  {
    name: 'OFFSET_DATA with DONE',
    frame: () => encodeChunkOffsetData(COOKIE, 0x200, Buffer.from('abcd'), { done: true }),
    hex: `${STRUCT} 0001 0001 ${C} 0000000c | 0000000000000200 61626364`,
    extended: false,
    flags: 1,
    type: 1,
    decoded: { type: 'offsetData', offset: 0x200n, data: Buffer.from('abcd') },
  },
  {
    name: 'OFFSET_DATA without DONE, offset above 2^32',
    frame: () => encodeChunkOffsetData(COOKIE, 2 ** 33 + 512, [Buffer.from('ab'), Buffer.from('c')]),
    hex: `${STRUCT} 0000 0001 ${C} 0000000b | 0000000200000200 616263`,
    extended: false,
    flags: 0,
    type: 1,
    decoded: { type: 'offsetData', offset: 2n ** 33n + 512n, data: Buffer.from('abc') },
  },
  {
    name: 'OFFSET_HOLE',
    frame: () => encodeChunkOffsetHole(COOKIE, 0x1000, 0x200),
    hex: `${STRUCT} 0000 0002 ${C} 0000000c | 0000000000001000 00000200`,
    extended: false,
    flags: 0,
    type: 2,
    decoded: { type: 'offsetHole', offset: 0x1000n, size: 0x200 },
  },
  {
    name: 'BLOCK_STATUS, two extents',
    frame: () => encodeChunkBlockStatus(COOKIE, 1, BS_EXTENTS, { done: true }),
    hex: `${STRUCT} 0001 0005 ${C} 00000014 | 00000001 00001000 00000000 00002000 00000003`,
    extended: false,
    flags: 1,
    type: 5,
    decoded: { type: 'blockStatus', contextId: 1, extents: BS_EXTENTS },
  },
  {
    name: 'ERROR with message',
    frame: () => encodeChunkError(COOKIE, 5, 'io', { done: true }),
    hex: `${STRUCT} 0001 8001 ${C} 00000008 | 00000005 0002 696f`,
    extended: false,
    flags: 1,
    type: 0x8001,
    decoded: { type: 'error', error: 5, message: 'io' },
  },
  {
    name: 'ERROR without message',
    frame: () => encodeChunkError(COOKIE, 22),
    hex: `${STRUCT} 0000 8001 ${C} 00000006 | 00000016 0000`,
    extended: false,
    flags: 0,
    type: 0x8001,
    decoded: { type: 'error', error: 22, message: '' },
  },
  {
    name: 'ERROR_OFFSET with message',
    frame: () => encodeChunkErrorOffset(COOKIE, 5, 0x400, 'bad', { done: true }),
    hex: `${STRUCT} 0001 8002 ${C} 00000011 | 00000005 0003 626164 0000000000000400`,
    extended: false,
    flags: 1,
    type: 0x8002,
    decoded: { type: 'errorOffset', error: 5, message: 'bad', offset: 0x400n },
  },
  {
    name: 'ERROR_OFFSET without message',
    frame: () => encodeChunkErrorOffset(COOKIE, 28, 0x200),
    hex: `${STRUCT} 0000 8002 ${C} 0000000e | 0000001c 0000 0000000000000200`,
    extended: false,
    flags: 0,
    type: 0x8002,
    decoded: { type: 'errorOffset', error: 28, message: '', offset: 0x200n },
  },
  // ── extended headers: offset echoes the request (reply.extended-offset-echo), 64-bit length ──
  {
    name: 'extended NONE',
    frame: () => encodeChunkNone(COOKIE, { extended: true, requestOffset: 0x1000 }),
    hex: `${EXT} 0001 0000 ${C} 0000000000001000 0000000000000000`,
    extended: true,
    flags: 1,
    type: 0,
    offset: 0x1000n,
    decoded: { type: 'none' },
  },
  {
    name: 'extended OFFSET_DATA',
    frame: () => encodeChunkOffsetData(COOKIE, 0x1200, Buffer.from('xy'), { extended: true, requestOffset: 0x1000, done: true }),
    hex: `${EXT} 0001 0001 ${C} 0000000000001000 000000000000000a | 0000000000001200 7879`,
    extended: true,
    flags: 1,
    type: 1,
    offset: 0x1000n,
    decoded: { type: 'offsetData', offset: 0x1200n, data: Buffer.from('xy') },
  },
  {
    name: 'extended OFFSET_HOLE',
    frame: () => encodeChunkOffsetHole(COOKIE, 0x1000, 0x800, { extended: true, requestOffset: 0x1000 }),
    hex: `${EXT} 0000 0002 ${C} 0000000000001000 000000000000000c | 0000000000001000 00000800`,
    extended: true,
    flags: 0,
    type: 2,
    offset: 0x1000n,
    decoded: { type: 'offsetHole', offset: 0x1000n, size: 0x800 },
  },
  {
    name: 'BLOCK_STATUS_EXT',
    frame: () => encodeChunkBlockStatus(COOKIE, 1, BS_EXTENTS, { extended: true, requestOffset: 0, done: true }),
    hex:
      `${EXT} 0001 0006 ${C} 0000000000000000 0000000000000028 | 00000001 00000002 ` +
      '0000000000001000 0000000000000000 0000000000002000 0000000000000003',
    extended: true,
    flags: 1,
    type: 6,
    offset: 0n,
    decoded: { type: 'blockStatusExt', contextId: 1, extents: [{ length: 4096n, flags: 0n }, { length: 8192n, flags: 3n }] },
  },
  {
    name: 'BLOCK_STATUS_EXT with a 64-bit extent length',
    frame: () => encodeChunkBlockStatus(COOKIE, 7, [{ length: 2 ** 40, flags: 1 }], { extended: true, requestOffset: 2 ** 33 }),
    hex: `${EXT} 0000 0006 ${C} 0000000200000000 0000000000000018 | 00000007 00000001 0000010000000000 0000000000000001`,
    extended: true,
    flags: 0,
    type: 6,
    offset: 2n ** 33n,
    decoded: { type: 'blockStatusExt', contextId: 7, extents: [{ length: 2n ** 40n, flags: 1n }] },
  },
  {
    name: 'extended ERROR',
    frame: () => encodeChunkError(COOKIE, 1, 'ro', { extended: true, requestOffset: 0x200, done: true }),
    hex: `${EXT} 0001 8001 ${C} 0000000000000200 0000000000000008 | 00000001 0002 726f`,
    extended: true,
    flags: 1,
    type: 0x8001,
    offset: 0x200n,
    decoded: { type: 'error', error: 1, message: 'ro' },
  },
  {
    name: 'extended ERROR_OFFSET',
    frame: () => encodeChunkErrorOffset(COOKIE, 5, 0x600, 'x', { extended: true, requestOffset: 0x200 }),
    hex: `${EXT} 0000 8002 ${C} 0000000000000200 000000000000000f | 00000005 0001 78 0000000000000600`,
    extended: true,
    flags: 0,
    type: 0x8002,
    offset: 0x200n,
    decoded: { type: 'errorOffset', error: 5, message: 'x', offset: 0x600n },
  },
];

describe('structured and extended chunks', () => {
  describe.each(chunkFixtures)('$name', (f) => {
    const opts = { structured: true, extended: f.extended };

    it('generate: encoder output matches the spec hex', () => {
      expect(flat(f.frame()).toString('hex')).toBe(hex(f.hex).toString('hex'));
    });

    it('parse: header fields and decoded payload', () => {
      const [c, ...rest] = parseTransmissionReplies(hex(f.hex), opts);
      expect(rest).toEqual([]);
      const chunk = c as ReplyChunk;
      expect(chunk.kind).toBe('chunk');
      expect(chunk.cookie).toBe(COOKIE);
      expect(chunk.flags).toBe(f.flags);
      expect(chunk.type).toBe(f.type);
      expect(chunk.offset).toBe(f.offset);
      expect(decodeChunk(chunk)).toEqual(f.decoded);
    });

    it('mirror: the header is its own exact-size buffer; parse(generate) matches', () => {
      const frame = f.frame();
      expect(frame[0]!.length).toBe(f.extended ? 32 : 20);
      const parsed = parseTransmissionReplies(flat(frame), opts);
      expect(parsed).toHaveLength(1);
      expect(decodeChunk(parsed[0] as ReplyChunk)).toEqual(f.decoded);
    });
  });

  it('OFFSET_DATA data buffers are passed through uncopied', () => {
    const a = Buffer.from('data');
    const frame = encodeChunkOffsetData(COOKIE, 0, a);
    expect(frame.includes(a)).toBe(true);
    const b = Buffer.from('more');
    const two = encodeChunkOffsetData(COOKIE, 0, [a, b], { extended: true });
    expect(two.slice(-2)[0]).toBe(a);
    expect(two.slice(-1)[0]).toBe(b);
  });

  it('chunkHeader writes exactly the fields, in both sizes', () => {
    expect(chunkHeader(false, 1n, 1, 5, 0x14)).toEqual(hex(`${STRUCT} 0001 0005 0000000000000001 00000014`));
    expect(chunkHeader(true, 1n, 0, 1, 2 ** 32 + 8, 2 ** 40)).toEqual(hex(`${EXT} 0000 0001 0000000000000001 0000010000000000 0000000100000008`));
  });

  it('error messages are clipped to 4096 bytes and the length field follows', () => {
    const [c] = parseTransmissionReplies(flat(encodeChunkError(COOKIE, 5, 'é'.repeat(3000))), { structured: true });
    const e = decodeError((c as ReplyChunk).payload);
    expect(Buffer.byteLength(e.message)).toBeLessThanOrEqual(4096);
    expect(e.message).toBe('é'.repeat(2048));
  });

  it('a stream of interleaved chunks for two cookies parses in order', () => {
    const bytes = flat(
      encodeChunkOffsetData(1n, 0, Buffer.from('a')),
      encodeSimpleReply(2n, 0),
      encodeChunkOffsetHole(1n, 1, 511),
      encodeChunkNone(1n),
    );
    const r = parseTransmissionReplies(bytes, { structured: true });
    expect(r.map((x) => (x.kind === 'chunk' ? `${x.cookie}:${x.type}` : `${x.cookie}:simple`))).toEqual(['1:1', '2:simple', '1:2', '1:0']);
  });

  it('payload decoders reject malformed payloads', () => {
    expect(() => decodeOffsetData(hex('0000000000000000'))).toThrow(WireError);
    expect(() => decodeOffsetHole(hex('0000000000000000 00000000'))).toThrow(WireError);
    expect(() => decodeOffsetHole(hex('0000000000000000 0000'))).toThrow(WireError);
    expect(() => decodeBlockStatus(hex('00000001'))).toThrow(WireError);
    expect(() => decodeBlockStatus(hex('00000001 00001000'))).toThrow(WireError);
    expect(() => decodeBlockStatusExt(hex('00000001 00000000'))).toThrow(WireError);
    expect(() => decodeBlockStatusExt(hex('00000001 00000002 0000000000001000 0000000000000000'))).toThrow(WireError);
    expect(() => decodeError(hex('00000005 0005 6162'))).toThrow(WireError);
    expect(() => decodeError(hex('00000000 0000'))).toThrow(WireError);
    expect(() => decodeErrorOffset(hex('00000005 0000 00000000'))).toThrow(WireError);
    expect(() => decodeChunk({ type: 3, flags: 1, payload: Buffer.alloc(0) })).toThrow(WireError);
    expect(() => decodeChunk({ type: 0, flags: 0, payload: Buffer.alloc(0) })).toThrow(WireError);
  });

  it('the parser enforces the negotiated header form', () => {
    expect(() => parseTransmissionReplies(flat(encodeChunkNone(1n)), { structured: false })).toThrow(WireError);
    expect(() => parseTransmissionReplies(flat(encodeChunkNone(1n)), { structured: true, extended: true })).toThrow(WireError);
    expect(() => parseTransmissionReplies(flat(encodeChunkNone(1n, { extended: true })), { structured: true })).toThrow(WireError);
    const ok = flat(encodeChunkError(1n, 5, 'msg', { extended: true }));
    expect(() => parseTransmissionReplies(ok.subarray(0, ok.length - 1), { extended: true })).toThrow(WireError);
  });
});

describe('withHasFlags (transmission.flags-advertised)', () => {
  it('always sets HAS_FLAGS and keeps 16 bits', () => {
    expect(withHasFlags(0)).toBe(1);
    expect(withHasFlags(0x0004)).toBe(0x0005);
    expect(withHasFlags(0x1_0002)).toBe(0x0003);
  });
});
