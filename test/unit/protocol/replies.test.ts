/**
 * Whole replies per negotiated mode (reply.negotiated-mode, reply.simple-read,
 * reply.structured-chunks, reply.df-one-chunk, reply.block-status-chunks),
 * parsed back with the test-side client parser.
 */
import { describe, expect, it } from 'vitest';
import { needsStructured, ReplyEncoder, replyBlockStatus, replyError, replyModeOf, replyOk, replyRead, replyReadBuffer, type ReplyMode } from '../../../src/protocol/replies.js';
import { decodeChunk, DONE, flat, parseTransmissionReplies, type ReplyChunk, type TransmissionReply } from '../../helpers/wire.js';

const parse = (mode: ReplyMode, frame: Buffer[], reads = new Map<bigint, number>()) =>
  parseTransmissionReplies(flat(frame), { structured: mode !== 'simple', extended: mode === 'extended', readLengths: reads });

const chunks = (rs: TransmissionReply[]) => rs.filter((r): r is ReplyChunk => r.kind === 'chunk');

/** Rule 23: exactly one DONE chunk, and it is the last one. */
function expectOneDoneLast(rs: TransmissionReply[]) {
  const cs = chunks(rs);
  expect(cs.length).toBe(rs.length);
  expect(cs.filter((c) => c.flags & DONE)).toHaveLength(1);
  expect(cs.at(-1)!.flags & DONE).toBe(DONE);
}

describe('replyModeOf', () => {
  it('extended wins, then structured, else simple', () => {
    expect(replyModeOf(false, false)).toBe('simple');
    expect(replyModeOf(true, false)).toBe('structured');
    expect(replyModeOf(true, true)).toBe('extended');
    expect(replyModeOf(false, true)).toBe('extended');
  });

  it('needsStructured: READ and BLOCK_STATUS once SR/EH are on', () => {
    expect(needsStructured('simple', 0)).toBe(false);
    expect(needsStructured('structured', 0)).toBe(true);
    expect(needsStructured('structured', 7)).toBe(true);
    expect(needsStructured('structured', 1)).toBe(false);
    expect(needsStructured('extended', 0)).toBe(true);
  });
});

describe('replyOk / replyError', () => {
  it('simple and structured success are a bare simple reply; extended is NONE+DONE echoing the offset', () => {
    expect(parse('simple', replyOk('simple', 3n, 0))).toEqual([{ kind: 'simple', cookie: 3n, error: 0 }]);
    expect(parse('structured', replyOk('structured', 3n, 0))).toEqual([{ kind: 'simple', cookie: 3n, error: 0 }]);
    const [c] = parse('extended', replyOk('extended', 3n, 4096));
    expect(c).toMatchObject({ kind: 'chunk', type: 0, flags: DONE, cookie: 3n, offset: 4096n });
  });

  it('errors: simple errno, or an ERROR chunk with DONE and the message', () => {
    expect(parse('simple', replyError('simple', 4n, 1, 1, 'read-only', 0))).toEqual([{ kind: 'simple', cookie: 4n, error: 1 }]);
    for (const mode of ['structured', 'extended'] as const) {
      const rs = parse(mode, replyError(mode, 4n, 0, 5, 'disk on fire', 512));
      expectOneDoneLast(rs);
      expect(decodeChunk(rs[0] as ReplyChunk)).toEqual({ type: 'error', error: 5, message: 'disk on fire' });
      if (mode === 'extended') expect((rs[0] as ReplyChunk).offset).toBe(512n);
    }
  });
});

describe('replyRead', () => {
  const data = Buffer.from('abcdefgh');
  const segments = [{ data }, { hole: 8 }, { data: Buffer.from('XY') }];

  it('simple: header then the data, holes as zero bytes; data buffers are not copied', () => {
    const frame = replyRead('simple', 9n, 0, segments);
    expect(frame[1]).toBe(data);
    const [r] = parse('simple', frame, new Map([[9n, 18]]));
    expect(r).toEqual({ kind: 'simple', cookie: 9n, error: 0, data: Buffer.concat([data, Buffer.alloc(8), Buffer.from('XY')]) });
  });

  it.each(['structured', 'extended'] as const)('%s: one chunk per segment, contiguous offsets, DONE last', (mode) => {
    const frame = replyRead(mode, 9n, 1024, segments);
    expect(frame.includes(data)).toBe(true);
    const rs = parse(mode, frame);
    expectOneDoneLast(rs);
    expect(rs.map((r) => decodeChunk(r as ReplyChunk))).toEqual([
      { type: 'offsetData', offset: 1024n, data },
      { type: 'offsetHole', offset: 1032n, size: 8 },
      { type: 'offsetData', offset: 1040n, data: Buffer.from('XY') },
    ]);
    if (mode === 'extended') for (const r of rs) expect((r as ReplyChunk).offset).toBe(1024n);
  });

  it.each(['structured', 'extended'] as const)('reply.df-one-chunk: %s with DF: a single OFFSET_DATA chunk with explicit zeroes', (mode) => {
    const rs = parse(mode, replyRead(mode, 9n, 0, segments, true));
    expect(rs).toHaveLength(1);
    expectOneDoneLast(rs);
    expect(decodeChunk(rs[0] as ReplyChunk)).toEqual({ type: 'offsetData', offset: 0n, data: Buffer.concat([data, Buffer.alloc(8), Buffer.from('XY')]) });
  });

  it.each(['structured', 'extended'] as const)('%s: adjacent data segments share one OFFSET_DATA chunk (no copy); holes split runs', (mode) => {
    const a = Buffer.from('abc');
    const b = Buffer.from('defg');
    const c = Buffer.from('h');
    const frame = replyRead(mode, 9n, 4096, [{ data: a }, { data: Buffer.alloc(0) }, { data: b }, { hole: 5 }, { data: c }, { hole: 0 }]);
    expect(frame.includes(a) && frame.includes(b) && frame.includes(c)).toBe(true);
    const rs = parse(mode, frame);
    expectOneDoneLast(rs);
    expect(rs.map((r) => decodeChunk(r as ReplyChunk))).toEqual([
      { type: 'offsetData', offset: 4096n, data: Buffer.from('abcdefg') },
      { type: 'offsetHole', offset: 4103n, size: 5 },
      { type: 'offsetData', offset: 4108n, data: c },
    ]);
    const pages = [Buffer.alloc(65536, 1), Buffer.alloc(65536, 2), Buffer.alloc(65536, 3)];
    const one = parse(mode, replyRead(mode, 9n, 0, pages.map((data) => ({ data }))));
    expect(one).toHaveLength(1);
    expect(decodeChunk(one[0] as ReplyChunk)).toEqual({ type: 'offsetData', offset: 0n, data: Buffer.concat(pages) });
  });

  it('empty segments are dropped; nothing left ⇒ NONE+DONE', () => {
    const rs = parse('structured', replyRead('structured', 9n, 0, [{ data: Buffer.alloc(0) }, { hole: 0 }]));
    expect(rs).toHaveLength(1);
    expect(decodeChunk(rs[0] as ReplyChunk)).toEqual({ type: 'none' });
    const rs2 = parse('structured', replyRead('structured', 9n, 0, [{ hole: 0 }, { data }]));
    expect(rs2.map((r) => decodeChunk(r as ReplyChunk).type)).toEqual(['offsetData']);
  });
});

describe('reply.structured-chunks: no OFFSET_DATA chunk carries more than the maximum payload (maxChunk)', () => {
  const bytes = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff));

  it.each(['structured', 'extended'] as const)('%s: data runs are cut at maxChunk by views of the buffers; holes are never cut; DONE on the last', (mode) => {
    const a = bytes(10, 1);
    const b = bytes(7, 2);
    const c = bytes(9, 3);
    const frame = replyRead(mode, 9n, 100, [{ data: a }, { data: b }, { hole: 20 }, { data: c }], false, 8);
    // No copy: the data buffers on the wire are views of the segments' memory.
    for (const d of [a, b, c]) expect(frame.some((f) => f.buffer === d.buffer && f.length > 0 && f.length <= 8)).toBe(true);
    const rs = parse(mode, frame);
    expectOneDoneLast(rs);
    expect(rs.map((r) => decodeChunk(r as ReplyChunk))).toEqual([
      { type: 'offsetData', offset: 100n, data: a.subarray(0, 8) },
      { type: 'offsetData', offset: 108n, data: Buffer.concat([a.subarray(8), b.subarray(0, 6)]) },
      { type: 'offsetData', offset: 116n, data: b.subarray(6) },
      { type: 'offsetHole', offset: 117n, size: 20 },
      { type: 'offsetData', offset: 137n, data: c.subarray(0, 8) },
      { type: 'offsetData', offset: 145n, data: c.subarray(8) },
    ]);
  });

  it.each(['structured', 'extended'] as const)('%s: one buffer over maxChunk is split (replyReadBuffer); within it, or with DF, it is one chunk', (mode) => {
    const d = bytes(20, 5);
    const split = parse(mode, replyReadBuffer(mode, 3n, 4096, d, false, 8)).map((r) => decodeChunk(r as ReplyChunk));
    expect(split).toEqual([
      { type: 'offsetData', offset: 4096n, data: d.subarray(0, 8) },
      { type: 'offsetData', offset: 4104n, data: d.subarray(8, 16) },
      { type: 'offsetData', offset: 4112n, data: d.subarray(16) },
    ]);
    expect(parse(mode, replyReadBuffer(mode, 3n, 4096, d, false, 20))).toHaveLength(1);
    // DF: the request rules refuse what would need more than one chunk; what they let through is never split.
    expect(parse(mode, replyReadBuffer(mode, 3n, 4096, d, true, 8))).toHaveLength(1);
    expect(parse(mode, replyRead(mode, 3n, 4096, [{ data: d }], true, 8))).toHaveLength(1);
  });

  it('simple replies cannot be split: maxChunk does not apply', () => {
    const d = bytes(20, 6);
    expect(parse('simple', replyReadBuffer('simple', 3n, 0, d, false, 8), new Map([[3n, 20]]))).toHaveLength(1);
  });

  it('ReplyEncoder: a READ within maxChunk goes to writeRead (in place); a longer one is written as split chunks', () => {
    const written: Buffer[][] = [];
    const inPlace: number[] = [];
    const enc = new ReplyEncoder({ write: (f) => void written.push([...f]), writeSimple: () => {}, writeRead: (_m, _c, _o, data) => void inPlace.push(data.length) });
    enc.mode = 'extended';
    enc.maxChunk = 8;
    enc.read(1n, 0, bytes(8, 1), false);
    expect(inPlace).toEqual([8]);
    enc.read(2n, 0, bytes(17, 1), false);
    expect(inPlace).toEqual([8]);
    expect(parse('extended', written[0]!).map((r) => (decodeChunk(r as ReplyChunk) as { data: Buffer }).data.length)).toEqual([8, 8, 1]);
    enc.read(3n, 0, [{ data: bytes(17, 1) }], false);
    expect(parse('extended', written[1]!)).toHaveLength(3);
  });
});

describe('replyBlockStatus', () => {
  const contexts = [
    { id: 1, extents: [{ length: 4096, flags: 3 }] },
    { id: 2, extents: [{ length: 512, flags: 0 }, { length: 512, flags: 1 }] },
  ];

  it('structured: one BLOCK_STATUS chunk per context, DONE on the last', () => {
    const rs = parse('structured', replyBlockStatus('structured', 1n, 0, contexts));
    expectOneDoneLast(rs);
    expect(rs.map((r) => decodeChunk(r as ReplyChunk))).toEqual([
      { type: 'blockStatus', contextId: 1, extents: [{ length: 4096, flags: 3 }] },
      { type: 'blockStatus', contextId: 2, extents: [{ length: 512, flags: 0 }, { length: 512, flags: 1 }] },
    ]);
  });

  it('extended: BLOCK_STATUS_EXT only', () => {
    const rs = parse('extended', replyBlockStatus('extended', 1n, 8192, contexts));
    expectOneDoneLast(rs);
    expect(rs.map((r) => (r as ReplyChunk).type)).toEqual([6, 6]);
    expect(decodeChunk(rs[1] as ReplyChunk)).toEqual({ type: 'blockStatusExt', contextId: 2, extents: [{ length: 512n, flags: 0n }, { length: 512n, flags: 1n }] });
  });

  it('no contexts ⇒ a lone NONE+DONE', () => {
    const rs = parse('structured', replyBlockStatus('structured', 1n, 0, []));
    expect(rs.map((r) => decodeChunk(r as ReplyChunk))).toEqual([{ type: 'none' }]);
  });
});
