/**
 * FrameDecoder, transmission phase: compact (28-byte) and extended (32-byte)
 * requests, WRITE payloads, payload limits, 64-bit fields, zero-copy views.
 */
import { describe, expect, it } from 'vitest';
import { decoderAt, decodeStream } from '../../helpers/decode.js';
import { FrameDecoder } from '../../../src/protocol/decoder.js';
import { chunksOf, encodeExtendedRequest, encodeRequest, hex } from '../../helpers/wire.js';

const C = '0102030405060708';
const COOKIE = 0x0102030405060708n;

const req = (o: Partial<{ extended: boolean; flags: number; type: number; cookie: bigint; offset: number; length: number; huge: boolean; payload: Buffer; payloadDiscarded: boolean }>) => ({
  kind: 'request',
  extended: false,
  flags: 0,
  type: 0,
  cookie: COOKIE,
  offset: 0,
  length: 0,
  huge: false,
  payload: undefined,
  payloadDiscarded: false,
  ...o,
});

function decodeOne(bytes: Buffer, extended = false, limits = {}) {
  const d = decoderAt(extended ? 'extendedRequests' : 'requests', limits);
  d.push(bytes);
  const f = d.next();
  expect(d.next()).toBeNull();
  expect(d.bufferedBytes).toBe(0);
  return f;
}

describe('compact requests', () => {
  it('generate: the test codec writes the 28-byte header as the spec says', () => {
    expect(encodeRequest({ flags: 1, type: 1, cookie: COOKIE, offset: 0x1000, length: 4 }, Buffer.from('abcd'))).toEqual(
      hex(`25609513 0001 0001 ${C} 0000000000001000 00000004 | 61626364`),
    );
  });

  const cases: Array<[string, string, object]> = [
    ['READ', `25609513 0000 0000 ${C} 0000000000001000 00000200`, req({ type: 0, offset: 0x1000, length: 0x200 })],
    ['READ with DF', `25609513 0004 0000 ${C} 0000000000000000 00010000`, req({ flags: 4, length: 0x10000 })],
    ['WRITE with FUA and payload', `25609513 0001 0001 ${C} 0000000000000200 00000004 | 61626364`, req({ flags: 1, type: 1, offset: 0x200, length: 4, payload: Buffer.from('abcd') })],
    ['WRITE of length 0 (an empty payload)', `25609513 0000 0001 ${C} 0000000000000000 00000000`, req({ type: 1, payload: Buffer.alloc(0) })],
    ['DISC', `25609513 0000 0002 ${C} 0000000000000000 00000000`, req({ type: 2 })],
    ['FLUSH', `25609513 0000 0003 ${C} 0000000000000000 00000000`, req({ type: 3 })],
    ['TRIM', `25609513 0000 0004 ${C} 0000000000010000 00100000`, req({ type: 4, offset: 0x10000, length: 0x100000 })],
    ['CACHE', `25609513 0000 0005 ${C} 0000000000000000 ffffffff`, req({ type: 5, length: 0xffffffff })],
    ['WRITE_ZEROES with NO_HOLE|FAST_ZERO (no payload)', `25609513 0012 0006 ${C} 0000000000000000 00001000`, req({ type: 6, flags: 0x12, length: 0x1000 })],
    ['BLOCK_STATUS with REQ_ONE', `25609513 0008 0007 ${C} 0000000000000000 00001000`, req({ type: 7, flags: 8, length: 0x1000 })],
    ['RESIZE', `25609513 0000 0008 ${C} 0000000000200000 00000000`, req({ type: 8, offset: 0x200000 })],
    ['unknown command type with unknown flags', `25609513 ffc0 00ff ffffffffffffffff 0000000000000000 00000010`, req({ type: 0xff, flags: 0xffc0, cookie: 0xffffffffffffffffn, length: 16 })],
    ['PAYLOAD_LEN on a compact request is not a payload', `25609513 0020 0000 ${C} 0000000000000000 00000010`, req({ flags: 0x20, length: 16 })],
  ];

  it.each(cases)('%s: parse and mirror', (_n, h, frame) => {
    expect(decodeOne(hex(h))).toEqual(frame);
    const f = frame as ReturnType<typeof req>;
    const again = encodeRequest({ flags: f.flags, type: f.type, cookie: f.cookie, offset: f.offset, length: f.length }, f.payload);
    expect(again).toEqual(hex(h));
  });

  it('bad request magic ⇒ fatal NBD_ERR_BAD_REQUEST_MAGIC (historic magic, reply magic, extended magic)', () => {
    for (const magic of ['12560953', '67446698', '21e41c71', '25609514']) {
      const d = decoderAt('requests');
      d.push(hex(`${magic} 0000 0000 ${C} 0000000000000000 00000200`));
      const f = d.next();
      expect(f).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BAD_REQUEST_MAGIC' });
      expect(d.next()).toBe(f);
      expect(d.push(Buffer.alloc(1))).toBe(false);
    }
  });

  it('incomplete (for the log of a client that goes): a cut header is "in the middle of a frame"; whole undecoded requests are not', () => {
    const d = decoderAt('requests');
    const read = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 512 });
    d.push(read.subarray(0, 10));
    expect(d.incomplete).toBe('in the middle of a frame (10 bytes of an incomplete request header)');
    // A throttled session stops pulling frames: the rest arrives, two whole requests wait undecoded.
    d.push(Buffer.concat([read.subarray(10), read]));
    expect(d.incomplete).toBe('with 56 bytes of requests not yet decoded');
    expect(d.next()).toMatchObject({ kind: 'request', type: 0 });
    expect(d.next()).toMatchObject({ kind: 'request', type: 0 });
    expect(d.incomplete).toBeNull();
  });
});

describe('extended requests', () => {
  it('generate: 32-byte header with a 64-bit length', () => {
    expect(encodeExtendedRequest({ flags: 0, type: 0, cookie: COOKIE, offset: 0x1000, length: 2 ** 33 })).toEqual(
      hex(`21e41c71 0000 0000 ${C} 0000000000001000 0000000200000000`),
    );
  });

  const cases: Array<[string, string, object]> = [
    ['READ with a 64-bit effect length', `21e41c71 0000 0000 ${C} 0000000000001000 0000000200000000`, req({ extended: true, offset: 0x1000, length: 2 ** 33 })],
    ['WRITE with PAYLOAD_LEN', `21e41c71 0020 0001 ${C} 0000000000000000 0000000000000003 | 78797a`, req({ extended: true, type: 1, flags: 0x20, length: 3, payload: Buffer.from('xyz') })],
    ['transmission.write-payload-len: WRITE without PAYLOAD_LEN still carries its payload', `21e41c71 0000 0001 ${C} 0000000000000000 0000000000000002 | 7879`, req({ extended: true, type: 1, length: 2, payload: Buffer.from('xy') })],
    ['BLOCK_STATUS with a filter payload (PAYLOAD_LEN)', `21e41c71 0020 0007 ${C} 0000000000000000 000000000000000c | 0000000000010000 00000001`, req({ extended: true, type: 7, flags: 0x20, length: 12, payload: hex('0000000000010000 00000001') })],
    ['TRIM of 2^40 bytes', `21e41c71 0000 0004 ${C} 0000000000000000 0000010000000000`, req({ extended: true, type: 4, length: 2 ** 40 })],
    ['DISC', `21e41c71 0000 0002 ${C} 0000000000000000 0000000000000000`, req({ extended: true, type: 2 })],
  ];

  it.each(cases)('%s: parse and mirror', (_n, h, frame) => {
    expect(decodeOne(hex(h), true)).toEqual(frame);
    const f = frame as ReturnType<typeof req>;
    expect(encodeExtendedRequest({ flags: f.flags, type: f.type, cookie: f.cookie, offset: f.offset, length: f.length }, f.payload)).toEqual(hex(h));
  });

  it('a compact request while extended headers are on ⇒ fatal bad magic', () => {
    const d = decoderAt('extendedRequests');
    d.push(Buffer.concat([encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 1 }), Buffer.alloc(4)]));
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BAD_REQUEST_MAGIC' });
  });

  it('payload length over maxPayloadSkip ⇒ fatal NBD_ERR_PAYLOAD_TOO_LONG', () => {
    const d = decoderAt('extendedRequests');
    d.push(encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 1n, offset: 0, length: 2 ** 40 }));
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_PAYLOAD_TOO_LONG' });
    // A length past 2^53 − 1 is named as sent, not as the clamped number.
    const big = decoderAt('extendedRequests');
    const h = encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 1n, offset: 0, length: 1 });
    h.writeBigUInt64BE(2n ** 62n, 24);
    big.push(h);
    expect(big.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_PAYLOAD_TOO_LONG', message: `payload of ${2n ** 62n} bytes exceeds 4294967295` });
    const e = decoderAt('requests', { maxPayloadSkip: 1000, maxPayload: 100 });
    e.push(encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 1001 }));
    expect(e.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_PAYLOAD_TOO_LONG' });
  });

  it('transmission.payload-too-large: with extended headers, a payload over the export\'s maximum ⇒ fatal NBD_ERR_PAYLOAD_TOO_LONG, not read; compact headers read and skip it', () => {
    const limits = { maxPayload: 8192, maxPayloadSkip: 2 ** 32 - 1 };
    const ext = (length: number, flags = 0x20, type = 1) => {
      const d = new FrameDecoder(limits);
      d.startTransmission(true, 4096);
      d.push(encodeExtendedRequest({ flags, type, cookie: 1n, offset: 0, length }, flags & 0x20 || type === 1 ? Buffer.alloc(length) : undefined));
      return d.next();
    };
    // Up to the maximum: a WRITE, and a payload on a command without one (consumed, refused by the machine).
    expect(ext(4096)).toMatchObject({ kind: 'request', length: 4096, payloadDiscarded: false });
    expect(ext(4096, 0x20, 0)).toMatchObject({ kind: 'request', type: 0, payloadDiscarded: false });
    // Over it, under maxPayload: the SHOULD of the extended-headers spec is a hard disconnect (also without PAYLOAD_LEN).
    for (const [flags, type] of [[0x20, 1], [0, 1], [0x20, 0]] as const) {
      expect(ext(4097, flags, type)).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_PAYLOAD_TOO_LONG', message: 'payload of 4097 bytes exceeds 4096' });
    }
    // Without a payload, the length is an effect length: no limit here.
    expect(ext(1 << 20, 0, 0)).toMatchObject({ kind: 'request', length: 1 << 20 });
    // Compact headers: the maximum does not apply; over maxPayload the payload is skipped and refused.
    const compact = new FrameDecoder(limits);
    compact.startTransmission(false, 4096);
    compact.push(encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 8192 }, Buffer.alloc(8192)));
    expect(compact.next()).toMatchObject({ kind: 'request', length: 8192, payloadDiscarded: false });
    compact.push(encodeRequest({ flags: 0, type: 1, cookie: 2n, offset: 0, length: 8193 }, Buffer.alloc(8193)));
    expect(compact.next()).toMatchObject({ kind: 'request', length: 8193, payloadDiscarded: true });
  });
});

describe('64-bit fields', () => {
  it('offset 2^53 − 1 is exact; 2^53 and above are huge (clamped, flagged)', () => {
    expect(decodeOne(encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 2n ** 53n - 1n, length: 1 }))).toMatchObject({
      offset: Number.MAX_SAFE_INTEGER,
      huge: false,
    });
    for (const offset of [2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]) {
      expect(decodeOne(encodeRequest({ flags: 0, type: 0, cookie: 1n, offset, length: 1 }))).toMatchObject({
        offset: Number.MAX_SAFE_INTEGER,
        huge: true,
      });
      expect(decodeOne(encodeExtendedRequest({ flags: 0, type: 0, cookie: 1n, offset, length: 1 }), true)).toMatchObject({ huge: true });
    }
  });

  it('an extended length of 2^53 or more is huge; just under is exact', () => {
    expect(decodeOne(encodeExtendedRequest({ flags: 0, type: 4, cookie: 1n, offset: 0, length: 2n ** 53n - 1n }), true)).toMatchObject({
      length: Number.MAX_SAFE_INTEGER,
      huge: false,
    });
    expect(decodeOne(encodeExtendedRequest({ flags: 0, type: 4, cookie: 1n, offset: 0, length: 2n ** 64n - 1n }), true)).toMatchObject({
      length: Number.MAX_SAFE_INTEGER,
      huge: true,
    });
  });

  it('cookies are opaque 64-bit values, echoed exactly', () => {
    for (const cookie of [0n, 1n, 2n ** 63n, 2n ** 64n - 1n, 0xdeadbeefcafebaben]) {
      expect(decodeOne(encodeRequest({ flags: 0, type: 3, cookie, offset: 0, length: 0 }))).toMatchObject({ cookie });
    }
  });
});

describe('payload limits (transmission.payload-consumed, transmission.payload-too-large; checked before buffering)', () => {
  it('payload over maxPayload ⇒ payloadDiscarded, consumed without buffering, next request parses', () => {
    const length = 200_000;
    const d = decoderAt('requests', { maxPayload: 4096 });
    d.push(encodeRequest({ flags: 1, type: 1, cookie: 5n, offset: 512, length }));
    expect(d.next()).toEqual(req({ type: 1, flags: 1, cookie: 5n, offset: 512, length, payloadDiscarded: true }));
    let maxBuffered = 0;
    let sent = 0;
    const piece = Buffer.alloc(3001, 0xee);
    while (sent + piece.length < length) {
      d.push(piece);
      sent += piece.length;
      maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
      expect(d.next()).toBeNull();
    }
    d.push(Buffer.concat([Buffer.alloc(length - sent, 0xee), encodeRequest({ flags: 0, type: 0, cookie: 6n, offset: 0, length: 512 })]));
    maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
    expect(maxBuffered).toBeLessThanOrEqual(28);
    expect(d.next()).toEqual(req({ cookie: 6n, length: 512 }));
    expect(d.next()).toBeNull();
  });

  it('an extended PAYLOAD_LEN request over maxPayload is discarded the same way', () => {
    const bytes = Buffer.concat([
      encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 1n, offset: 0, length: 10_000 }, Buffer.alloc(10_000)),
      encodeExtendedRequest({ flags: 0, type: 3, cookie: 2n, offset: 0, length: 0 }),
    ]);
    const { frames } = decodeStream(chunksOf(bytes, 777), { start: 'extendedRequests', limits: { maxPayload: 1000 } });
    expect(frames).toEqual([
      req({ extended: true, flags: 0x20, type: 1, cookie: 1n, length: 10_000, payloadDiscarded: true }),
      req({ extended: true, type: 3, cookie: 2n }),
    ]);
  });

  it('a payload exactly at maxPayload is delivered', () => {
    const payload = Buffer.alloc(1000, 7);
    const f = decodeOne(encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 1000 }, payload), false, { maxPayload: 1000 });
    expect(f).toMatchObject({ payloadDiscarded: false, payload });
  });

  it('a payload larger than maxBufferedBytes (but ≤ maxPayload) fails the decoder rather than growing', () => {
    const bytes = encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 5000 }, Buffer.alloc(5000));
    const seen: number[] = [];
    const { frames } = decodeStream(chunksOf(bytes, 512), {
      start: 'requests',
      limits: { maxBufferedBytes: 2048, maxPayload: 1 << 20 },
      afterChunk: (d) => seen.push(d.bufferedBytes),
    });
    expect(frames).toEqual([expect.objectContaining({ kind: 'fatal', code: 'NBD_ERR_BUFFER_LIMIT' })]);
    expect(Math.max(...seen)).toBeLessThanOrEqual(2048);
  });
});

describe('zero copy (practice 3)', () => {
  const payload = Buffer.from('the quick brown fox jumps over the lazy dog');
  const frame = () => encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: payload.length }, payload);

  it('a frame inside one chunk yields a view of that chunk', () => {
    // Buffer.alloc is never pooled: distinct ArrayBuffers make the `.buffer` check meaningful.
    const chunk = Buffer.alloc(10 + frame().length + 10);
    frame().copy(chunk, 10);
    const d = decoderAt('requests');
    d.push(chunk.subarray(10, 10 + frame().length));
    d.push(chunk.subarray(10 + frame().length)); // trailing bytes of an unrelated next frame
    const f = d.next();
    if (!f || f.kind !== 'request' || !f.payload) throw new Error('expected a WRITE');
    expect(f.payload.buffer).toBe(chunk.buffer);
    expect(f.payload.byteOffset).toBe(chunk.byteOffset + 10 + 28);
    expect(f.payload).toEqual(payload);
    chunk[10 + 28] = 0x54; // 't' → 'T' shows through the view
    expect(f.payload.toString()).toBe('The quick brown fox jumps over the lazy dog');
  });

  it('a payload that starts in a later chunk is still a view of that chunk', () => {
    const head = Buffer.alloc(28);
    frame().copy(head, 0, 0, 28);
    const body = Buffer.alloc(payload.length);
    payload.copy(body);
    const d = decoderAt('requests');
    d.push(head);
    expect(d.next()).toBeNull();
    d.push(body);
    const f = d.next();
    if (!f || f.kind !== 'request' || !f.payload) throw new Error('expected a WRITE');
    expect(f.payload.buffer).toBe(body.buffer);
    expect(f.payload.byteOffset).toBe(body.byteOffset);
  });

  it('a frame spanning chunks yields one private copy', () => {
    const bytes = frame();
    const a = Buffer.alloc(40);
    bytes.copy(a, 0, 0, 40);
    const b = Buffer.alloc(bytes.length - 40);
    bytes.copy(b, 0, 40);
    const d = decoderAt('requests');
    d.push(a);
    d.push(b);
    const f = d.next();
    if (!f || f.kind !== 'request' || !f.payload) throw new Error('expected a WRITE');
    expect(f.payload).toEqual(payload);
    expect(f.payload.buffer).not.toBe(a.buffer);
    expect(f.payload.buffer).not.toBe(b.buffer);
    a.fill(0);
    b.fill(0);
    expect(f.payload).toEqual(payload);
  });
});
