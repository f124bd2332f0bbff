/**
 * Server → client handshake frames: greeting, every option reply, the
 * EXPORT_NAME reply. Each fixture is a generate / parse / mirror triple:
 *   generate — the src encoder produces exactly the hex written from the spec tables;
 *   parse    — the test-side parser reads that hex back into the fields;
 *   mirror   — parse(generate(fields)) gives the fields (and re-encoding is stable).
 */
import { describe, expect, it } from 'vitest';
import { REP, type RepErrName } from '../../../src/protocol/constants.js';
import {
  encodeAck,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
} from '../../../src/protocol/encoder.js';
import {
  flat,
  hex,
  parseExportNameReply,
  parseGreeting,
  parseOptionReplies,
  parseRepInfo,
  parseRepMetaContext,
  parseRepServer,
  WireError,
} from '../../helpers/wire.js';

const REP_MAGIC = '0003e889045565a9';

describe('greeting', () => {
  it('generate: NBDMAGIC · IHAVEOPT · FIXED_NEWSTYLE|NO_ZEROES by default', () => {
    expect(encodeGreeting().toString('hex')).toBe(hex('4e42444d41474943 49484156454f5054 0003').toString('hex'));
  });

  it('handshake.greeting-flags: generate: explicit flags, and never a bit beyond 0–1', () => {
    expect(encodeGreeting(1)).toEqual(hex('4e42444d41474943 49484156454f5054 0001'));
    expect(encodeGreeting(0)).toEqual(hex('4e42444d41474943 49484156454f5054 0000'));
    expect(encodeGreeting(0xffff)).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
  });

  it('parse and mirror', () => {
    expect(parseGreeting(hex('4e42444d41474943 49484156454f5054 0001'))).toEqual({ handshakeFlags: 1 });
    for (const f of [0, 1, 2, 3]) expect(parseGreeting(encodeGreeting(f)).handshakeFlags).toBe(f);
  });

  it('the parser rejects a wrong magic or length', () => {
    expect(() => parseGreeting(hex('4e42444d41474944 49484156454f5054 0001'))).toThrow(WireError);
    expect(() => parseGreeting(hex('4e42444d41474943 0000420281861253 0001'))).toThrow(WireError);
    expect(() => parseGreeting(hex('4e42444d41474943 49484156454f5054 00'))).toThrow(WireError);
  });
});

interface ReplyFixture {
  name: string;
  frame: () => Buffer[];
  hex: string;
  option: number;
  type: number;
  /** Decoded data, via the matching test-side payload parser. */
  decoded?: unknown;
  decode?: (data: Buffer) => unknown;
}

const replyFixtures: ReplyFixture[] = [
  {
    name: 'ACK to GO',
    frame: () => encodeAck(7),
    hex: `${REP_MAGIC} 00000007 00000001 00000000`,
    option: 7,
    type: 1,
  },
  {
    name: 'ACK to ABORT',
    frame: () => encodeAck(2),
    hex: `${REP_MAGIC} 00000002 00000001 00000000`,
    option: 2,
    type: 1,
  },
  {
    name: 'SERVER without description',
    frame: () => encodeRepServer(3, 'disk'),
    hex: `${REP_MAGIC} 00000003 00000002 00000008 | 00000004 6469736b`,
    option: 3,
    type: 2,
    decode: parseRepServer,
    decoded: { name: 'disk', description: '' },
  },
  {
    name: 'SERVER with description',
    frame: () => encodeRepServer(3, 'a', 'hi'),
    hex: `${REP_MAGIC} 00000003 00000002 00000007 | 00000001 61 6869`,
    option: 3,
    type: 2,
    decode: parseRepServer,
    decoded: { name: 'a', description: 'hi' },
  },
  {
    name: 'SERVER with the empty (default) name',
    frame: () => encodeRepServer(3, ''),
    hex: `${REP_MAGIC} 00000003 00000002 00000004 | 00000000`,
    option: 3,
    type: 2,
    decode: parseRepServer,
    decoded: { name: '', description: '' },
  },
  {
    name: 'INFO / NBD_INFO_EXPORT (exactly 12 bytes, no padding)',
    frame: () => encodeInfoExport(7, 0x100000, 0x0005),
    hex: `${REP_MAGIC} 00000007 00000003 0000000c | 0000 0000000000100000 0005`,
    option: 7,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'export', size: 0x100000n, flags: 5 },
  },
  {
    name: 'INFO / NBD_INFO_EXPORT with a size above 2^32',
    frame: () => encodeInfoExport(6, 0x1_2345_6789, 0x0001),
    hex: `${REP_MAGIC} 00000006 00000003 0000000c | 0000 0000000123456789 0001`,
    option: 6,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'export', size: 0x123456789n, flags: 1 },
  },
  {
    name: 'INFO / NBD_INFO_NAME',
    frame: () => encodeInfoName(7, 'disk'),
    hex: `${REP_MAGIC} 00000007 00000003 00000006 | 0001 6469736b`,
    option: 7,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'name', name: 'disk' },
  },
  {
    name: 'INFO / NBD_INFO_DESCRIPTION',
    frame: () => encodeInfoDescription(6, 'My disk'),
    hex: `${REP_MAGIC} 00000006 00000003 00000009 | 0002 4d79206469736b`,
    option: 6,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'description', description: 'My disk' },
  },
  {
    name: 'INFO / NBD_INFO_BLOCK_SIZE (exactly 14 bytes)',
    frame: () => encodeInfoBlockSize(7, { minimum: 512, preferred: 4096, maximum: 32 * 1024 * 1024 }),
    hex: `${REP_MAGIC} 00000007 00000003 0000000e | 0003 00000200 00001000 02000000`,
    option: 7,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'blockSize', minimum: 512, preferred: 4096, maximum: 32 * 1024 * 1024 },
  },
  {
    name: 'INFO / NBD_INFO_BLOCK_SIZE with no fixed maximum',
    frame: () => encodeInfoBlockSize(7, { minimum: 1, preferred: 4096, maximum: 0xffffffff }),
    hex: `${REP_MAGIC} 00000007 00000003 0000000e | 0003 00000001 00001000 ffffffff`,
    option: 7,
    type: 3,
    decode: parseRepInfo,
    decoded: { info: 'blockSize', minimum: 1, preferred: 4096, maximum: 0xffffffff },
  },
  {
    name: 'META_CONTEXT base:allocation for SET',
    frame: () => encodeMetaContext(10, 1, 'base:allocation'),
    hex: `${REP_MAGIC} 0000000a 00000004 00000013 | 00000001 ${Buffer.from('base:allocation').toString('hex')}`,
    option: 10,
    type: 4,
    decode: parseRepMetaContext,
    decoded: { id: 1, name: 'base:allocation' },
  },
  {
    name: 'META_CONTEXT for LIST (id 0)',
    frame: () => encodeMetaContext(9, 0, 'qemu:dirty-bitmap:b'),
    hex: `${REP_MAGIC} 00000009 00000004 00000017 | 00000000 ${Buffer.from('qemu:dirty-bitmap:b').toString('hex')}`,
    option: 9,
    type: 4,
    decode: parseRepMetaContext,
    decoded: { id: 0, name: 'qemu:dirty-bitmap:b' },
  },
  {
    name: 'a raw reply to an unknown option code echoes the code',
    frame: () => encodeOptionReply(0xdeadbeef, 0x80000001),
    hex: `${REP_MAGIC} deadbeef 80000001 00000000`,
    option: 0xdeadbeef,
    type: 0x80000001,
  },
];

/** Option error reply values, written from the spec (not from src). */
const errorTypes: Array<[RepErrName, number]> = [
  ['NBD_REP_ERR_UNSUP', 0x80000001],
  ['NBD_REP_ERR_POLICY', 0x80000002],
  ['NBD_REP_ERR_INVALID', 0x80000003],
  ['NBD_REP_ERR_PLATFORM', 0x80000004],
  ['NBD_REP_ERR_TLS_REQD', 0x80000005],
  ['NBD_REP_ERR_UNKNOWN', 0x80000006],
  ['NBD_REP_ERR_SHUTDOWN', 0x80000007],
  ['NBD_REP_ERR_BLOCK_SIZE_REQD', 0x80000008],
  ['NBD_REP_ERR_TOO_BIG', 0x80000009],
  ['NBD_REP_ERR_EXT_HEADER_REQD', 0x8000000a],
];

for (const [name, value] of errorTypes) {
  const t = value.toString(16).padStart(8, '0');
  replyFixtures.push(
    {
      name: `${name} without message`,
      frame: () => encodeOptionError(7, name),
      hex: `${REP_MAGIC} 00000007 ${t} 00000000`,
      option: 7,
      type: value,
    },
    {
      name: `${name} with message`,
      frame: () => encodeOptionError(6, name, 'nope'),
      hex: `${REP_MAGIC} 00000006 ${t} 00000004 | 6e6f7065`,
      option: 6,
      type: value,
      decode: (d) => d.toString('utf8'),
      decoded: 'nope',
    },
  );
}

describe('option replies (option.reply-header)', () => {
  it('covers every NBD_REP_ERR_* in the src table', () => {
    const srcErrors = Object.keys(REP).filter((k) => k.startsWith('NBD_REP_ERR_'));
    expect(errorTypes.map(([n]) => n).sort()).toEqual(srcErrors.sort());
    for (const [n, v] of errorTypes) expect(REP[n]).toBe(v);
  });

  describe.each(replyFixtures)('$name', (f) => {
    it('generate: encoder output matches the spec hex', () => {
      expect(flat(f.frame()).toString('hex')).toBe(hex(f.hex).toString('hex'));
    });

    it('parse: the hex reads back as the fields', () => {
      const [r, ...rest] = parseOptionReplies(hex(f.hex));
      expect(rest).toEqual([]);
      expect(r!.option).toBe(f.option);
      expect(r!.type).toBe(f.type);
      if (f.decode) expect(f.decode(r!.data)).toEqual(f.decoded);
      else expect(r!.data.length).toBe(0);
    });

    it('mirror: header and data are separate buffers; parse(generate) is stable', () => {
      const frame = f.frame();
      expect(frame[0]!.length).toBe(20);
      const dataLen = frame.slice(1).reduce((n, b) => n + b.length, 0);
      expect(frame[0]!.readUInt32BE(16)).toBe(dataLen);
      // Data-less replies are a single 20-byte header.
      if (dataLen === 0) expect(frame).toHaveLength(1);
      const again = parseOptionReplies(flat(frame));
      expect(again).toHaveLength(1);
      expect(flat(frame)).toEqual(hex(f.hex));
    });
  });

  it('a multi-part reply sequence (LIST: SERVER, SERVER, ACK) parses in order', () => {
    const bytes = flat(encodeRepServer(3, 'a'), encodeRepServer(3, 'b', 'second'), encodeAck(3));
    const replies = parseOptionReplies(bytes);
    expect(replies.map((r) => r.type)).toEqual([2, 2, 1]);
    expect(replies.map((r) => r.option)).toEqual([3, 3, 3]);
    expect(parseRepServer(replies[1]!.data)).toEqual({ name: 'b', description: 'second' });
  });

  it('general.string-limits: error messages are clipped to 4096 bytes of valid UTF-8 without NUL', () => {
    const long = encodeOptionError(7, 'NBD_REP_ERR_INVALID', 'x'.repeat(5000));
    expect(parseOptionReplies(flat(long))[0]!.data.length).toBe(4096);
    const withNul = parseOptionReplies(flat(encodeOptionError(7, 'NBD_REP_ERR_INVALID', 'a\0b')))[0]!;
    expect(withNul.data.toString('utf8')).toBe('ab');
    // A 3-byte character straddling byte 4096 must not be cut in half.
    const euros = parseOptionReplies(flat(encodeOptionError(7, 'NBD_REP_ERR_INVALID', '€'.repeat(2000))))[0]!;
    expect(euros.data.length).toBeLessThanOrEqual(4096);
    expect(euros.data.length % 3).toBe(0);
    expect(() => new TextDecoder('utf-8', { fatal: true }).decode(euros.data)).not.toThrow();
  });

  it('an empty message sends no data at all', () => {
    const frame = encodeOptionError(7, 'NBD_REP_ERR_UNSUP', '');
    expect(frame).toHaveLength(1);
    expect(frame[0]!.readUInt32BE(16)).toBe(0);
  });

  it('the parser rejects truncation and a bad magic', () => {
    const ok = flat(encodeInfoName(7, 'disk'));
    expect(() => parseOptionReplies(ok.subarray(0, ok.length - 1))).toThrow(WireError);
    expect(() => parseOptionReplies(ok.subarray(0, 19))).toThrow(WireError);
    const bad = Buffer.from(ok);
    bad[0] = 0xff;
    expect(() => parseOptionReplies(bad)).toThrow(WireError);
    expect(() => parseRepInfo(hex('0000 00000000'))).toThrow(WireError);
    expect(() => parseRepInfo(hex('0003 00000200'))).toThrow(WireError);
  });
});

describe('EXPORT_NAME reply (handshake.no-zeroes)', () => {
  it('generate: 10 bytes with NO_ZEROES', () => {
    const b = encodeExportNameReply(0x100000, 0x0003, true);
    expect(b.toString('hex')).toBe(hex('0000000000100000 0003').toString('hex'));
  });

  it('generate: 134 bytes (124 zeroes) without NO_ZEROES', () => {
    const b = encodeExportNameReply(0x100000, 0x0003, false);
    expect(b.toString('hex')).toBe(hex(`0000000000100000 0003 ${'00'.repeat(124)}`).toString('hex'));
  });

  it('parse and mirror, including a size above 2^32', () => {
    expect(parseExportNameReply(hex('0000000000100000 0003'))).toEqual({ size: 0x100000n, flags: 3, zeroes: false });
    expect(parseExportNameReply(hex(`0000000000100000 0003 ${'00'.repeat(124)}`))).toEqual({ size: 0x100000n, flags: 3, zeroes: true });
    expect(parseExportNameReply(encodeExportNameReply(2 ** 40 + 7, 0x0d4d, false))).toEqual({ size: 2n ** 40n + 7n, flags: 0x0d4d, zeroes: true });
  });

  it('the parser rejects other lengths and non-zero padding', () => {
    expect(() => parseExportNameReply(Buffer.alloc(11))).toThrow(WireError);
    const padded = encodeExportNameReply(1, 1, false);
    padded[133] = 1;
    expect(() => parseExportNameReply(padded)).toThrow(WireError);
  });
});
