/**
 * FrameDecoder, handshake phase: client flags and every option, malformed
 * option data (option.length-mismatch, general.string-limits), and the
 * limits (checked before buffering). Client bytes come from the test-side codec
 * in test/helpers/wire.ts, never from src.
 */
import { describe, expect, it } from 'vitest';
import { FrameDecoder } from '../../../src/protocol/decoder.js';
import { decoderAt, decodeStream, drain } from '../../helpers/decode.js';
import {
  chunksOf,
  encodeClientFlags,
  encodeExtendedRequest,
  encodeInfoGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  hex,
} from '../../helpers/wire.js';

const IHAVEOPT = '49484156454f5054';

/** Decode exactly one option from bytes pushed in one chunk; nothing may be left over. */
function decodeOne(bytes: Buffer, limits = {}) {
  const d = decoderAt('options', limits);
  d.push(bytes);
  const f = d.next();
  expect(d.next()).toBeNull();
  expect(d.bufferedBytes).toBe(0);
  return f;
}

describe('client flags', () => {
  it('parse: 4 bytes, then the options phase', () => {
    const d = new FrameDecoder();
    expect(d.phase).toBe('clientFlags');
    d.push(hex('000000'));
    expect(d.next()).toBeNull();
    d.push(hex('03'));
    expect(d.next()).toEqual({ kind: 'clientFlags', flags: 3 });
    expect(d.phase).toBe('options');
    expect(d.next()).toBeNull();
  });

  it('generate and mirror: every flag value is passed through verbatim (validation is the machine’s job)', () => {
    expect(encodeClientFlags(1)).toEqual(hex('00000001'));
    for (const flags of [0, 1, 2, 3, 0x80000000, 0xffffffff]) {
      const d = new FrameDecoder();
      d.push(encodeClientFlags(flags));
      expect(d.next()).toEqual({ kind: 'clientFlags', flags });
    }
  });
});

describe('options', () => {
  it('generate: the test codec lays out an option as the spec table says', () => {
    expect(encodeOption(7, encodeInfoGoData('disk', [0, 3]))).toEqual(
      hex(`${IHAVEOPT} 00000007 0000000e | 00000004 6469736b 0002 0000 0003`),
    );
    expect(encodeOption(10, encodeMetaContextData('d', ['base:allocation']))).toEqual(
      hex(`${IHAVEOPT} 0000000a 0000001c | 00000001 64 00000001 0000000f ${Buffer.from('base:allocation').toString('hex')}`),
    );
  });

  const cases: Array<{ name: string; hex: string; frame: object }> = [
    {
      name: 'EXPORT_NAME',
      hex: `${IHAVEOPT} 00000001 00000004 6469736b`,
      frame: { kind: 'option', code: 1, length: 4, opt: 'exportName', name: 'disk' },
    },
    {
      name: 'EXPORT_NAME of the default export (empty)',
      hex: `${IHAVEOPT} 00000001 00000000`,
      frame: { kind: 'option', code: 1, length: 0, opt: 'exportName', name: '' },
    },
    { name: 'ABORT', hex: `${IHAVEOPT} 00000002 00000000`, frame: { kind: 'option', code: 2, length: 0, opt: 'abort', hasData: false } },
    {
      name: 'ABORT with data (ignored, flagged)',
      hex: `${IHAVEOPT} 00000002 00000002 abcd`,
      frame: { kind: 'option', code: 2, length: 2, opt: 'abort', hasData: true },
    },
    { name: 'LIST', hex: `${IHAVEOPT} 00000003 00000000`, frame: { kind: 'option', code: 3, length: 0, opt: 'list', hasData: false } },
    {
      name: 'LIST with data',
      hex: `${IHAVEOPT} 00000003 00000001 00`,
      frame: { kind: 'option', code: 3, length: 1, opt: 'list', hasData: true },
    },
    { name: 'STARTTLS', hex: `${IHAVEOPT} 00000005 00000000`, frame: { kind: 'option', code: 5, length: 0, opt: 'starttls', hasData: false } },
    {
      name: 'STARTTLS with data',
      hex: `${IHAVEOPT} 00000005 00000003 010203`,
      frame: { kind: 'option', code: 5, length: 3, opt: 'starttls', hasData: true },
    },
    {
      name: 'INFO with two info requests',
      hex: `${IHAVEOPT} 00000006 0000000e | 00000004 6469736b 0002 0000 0003`,
      frame: { kind: 'option', code: 6, length: 14, opt: 'info', name: 'disk', requests: [0, 3] },
    },
    {
      name: 'GO, default export, no info requests',
      hex: `${IHAVEOPT} 00000007 00000006 | 00000000 0000`,
      frame: { kind: 'option', code: 7, length: 6, opt: 'go', name: '', requests: [] },
    },
    {
      name: 'GO with an unknown info code (passed through; the server ignores it)',
      hex: `${IHAVEOPT} 00000007 0000000b | 00000001 78 0002 0001 ffff`,
      frame: { kind: 'option', code: 7, length: 11, opt: 'go', name: 'x', requests: [1, 0xffff] },
    },
    {
      name: 'STRUCTURED_REPLY',
      hex: `${IHAVEOPT} 00000008 00000000`,
      frame: { kind: 'option', code: 8, length: 0, opt: 'structuredReply', hasData: false },
    },
    {
      name: 'LIST_META_CONTEXT with no queries',
      hex: `${IHAVEOPT} 00000009 0000000c | 00000004 6469736b 00000000`,
      frame: { kind: 'option', code: 9, length: 12, opt: 'listMetaContext', name: 'disk', queries: [] },
    },
    {
      name: 'LIST_META_CONTEXT with the base: wildcard',
      hex: `${IHAVEOPT} 00000009 00000011 | 00000000 00000001 00000005 626173653a`,
      frame: { kind: 'option', code: 9, length: 17, opt: 'listMetaContext', name: '', queries: ['base:'] },
    },
    {
      name: 'SET_META_CONTEXT with two queries',
      hex: `${IHAVEOPT} 0000000a 00000021 | 00000001 64 00000002 0000000f ${Buffer.from('base:allocation').toString('hex')} 00000001 78`,
      frame: { kind: 'option', code: 10, length: 33, opt: 'setMetaContext', name: 'd', queries: ['base:allocation', 'x'] },
    },
    {
      name: 'EXTENDED_HEADERS',
      hex: `${IHAVEOPT} 0000000b 00000000`,
      frame: { kind: 'option', code: 11, length: 0, opt: 'extendedHeaders', hasData: false },
    },
    {
      name: 'PEEK_EXPORT (withdrawn ⇒ unknown)',
      hex: `${IHAVEOPT} 00000004 00000000`,
      frame: { kind: 'option', code: 4, length: 0, opt: 'unknown' },
    },
    {
      name: 'unknown option code with data',
      hex: `${IHAVEOPT} 00000042 00000003 78797a`,
      frame: { kind: 'option', code: 0x42, length: 3, opt: 'unknown' },
    },
    {
      name: 'unknown option code 0xffffffff',
      hex: `${IHAVEOPT} ffffffff 00000001 00`,
      frame: { kind: 'option', code: 0xffffffff, length: 1, opt: 'unknown' },
    },
  ];

  describe.each(cases)('$name', (c) => {
    it('parse: one chunk', () => {
      expect(decodeOne(hex(c.hex))).toEqual(c.frame);
    });

    it('parse: byte by byte, then the next option still parses', () => {
      const bytes = Buffer.concat([hex(c.hex), encodeOption(3)]);
      const { frames, decoder } = decodeStream(chunksOf(bytes, 1), { start: 'options' });
      expect(frames).toEqual([c.frame, { kind: 'option', code: 3, length: 0, opt: 'list', hasData: false }]);
      expect(decoder.bufferedBytes).toBe(0);
    });
  });

  it('a zero-length parsed option at the very end of the buffer decodes (EXPORT_NAME "", GO/INFO with no data)', () => {
    // Regression: take(0) on an empty queue threw a TypeError.
    const d = decoderAt('options');
    d.push(encodeOption(1));
    expect(d.next()).toEqual({ kind: 'option', code: 1, length: 0, opt: 'exportName', name: '' });
    d.push(encodeOption(7));
    const go = d.next();
    expect(go).toMatchObject({ opt: 'go', problem: { reply: 'NBD_REP_ERR_INVALID' } });
    d.push(encodeOption(9));
    expect(d.next()).toMatchObject({ opt: 'listMetaContext', problem: { reply: 'NBD_REP_ERR_INVALID' } });
  });

  it('mirror: names and queries with multi-byte UTF-8 and a leading BOM are preserved exactly', () => {
    for (const name of ['диск', '磁盘💾', '\ufeffdisk', 'a b', '\ufeff']) {
      expect(decodeOne(encodeOption(1, Buffer.from(name)))).toMatchObject({ opt: 'exportName', name });
      expect(decodeOne(encodeOption(7, encodeInfoGoData(name, [2])))).toMatchObject({ opt: 'go', name, requests: [2] });
      expect(decodeOne(encodeOption(10, encodeMetaContextData(name, [name, 'base:allocation'])))).toMatchObject({
        opt: 'setMetaContext',
        name,
        queries: [name, 'base:allocation'],
      });
    }
  });
});

describe('malformed option data ⇒ problem NBD_REP_ERR_INVALID (option.length-mismatch, general.string-limits)', () => {
  const invalid = (f: unknown) => expect(f).toMatchObject({ problem: { reply: 'NBD_REP_ERR_INVALID' } });

  it.each([6, 7])('INFO/GO (%i) shorter than 6 bytes', (code) => {
    invalid(decodeOne(encodeOption(code, hex('0000000000'))));
    invalid(decodeOne(encodeOption(code, Buffer.alloc(0))));
  });

  it.each([6, 7])('INFO/GO (%i) with namelen > optlen − 6', (code) => {
    // optlen 10, namelen 5: 5 > 10 − 6.
    const f = decodeOne(encodeOption(code, hex('00000005 6162636465 00')));
    invalid(f);
    expect(f).toMatchObject({ kind: 'option', code, length: 10, name: '', requests: [] });
    // A namelen near 2^32 must not be trusted either.
    invalid(decodeOne(encodeOption(code, hex('ffffffff 0000'))));
  });

  it.each([6, 7])('INFO/GO (%i) with the wrong total length', (code) => {
    // One trailing byte.
    invalid(decodeOne(encodeOption(code, Buffer.concat([encodeInfoGoData('disk', [0]), hex('00')]))));
    // K = 2 announced, only one code present.
    invalid(decodeOne(encodeOption(code, hex('00000001 61 0002 0000'))));
    // K = 1 announced, none present.
    invalid(decodeOne(encodeOption(code, hex('00000000 0001'))));
  });

  it.each([9, 10])('META_CONTEXT (%i) with lengths running past the option', (code) => {
    invalid(decodeOne(encodeOption(code, hex('00000000 0000')))); // < 8 bytes
    invalid(decodeOne(encodeOption(code, hex('00000009 6464 00000000')))); // name runs past
    invalid(decodeOne(encodeOption(code, hex('ffffffff 00000000')))); // name length ~2^32
    invalid(decodeOne(encodeOption(code, hex('00000000 00000002 00000001 61')))); // second query missing
    invalid(decodeOne(encodeOption(code, hex('00000000 00000001 00000005 6162')))); // query runs past
    invalid(decodeOne(encodeOption(code, hex('00000000 00000001 00000001')))); // query length, no bytes
    invalid(decodeOne(encodeOption(code, hex('00000000 ffffffff 00000000')))); // absurd count
    invalid(decodeOne(encodeOption(code, hex('00000000 00000001 00000000 00')))); // trailing byte
    invalid(decodeOne(encodeOption(code, hex('00000000 00000000 00')))); // trailing after zero queries
  });

  const badStrings: Array<[string, Buffer]> = [
    ['a NUL byte', Buffer.from('ab\0cd')],
    ['invalid UTF-8 (lone continuation byte)', hex('61 80 62')],
    ['invalid UTF-8 (truncated sequence)', hex('e282')],
    ['invalid UTF-8 (overlong encoding)', hex('c0af')],
    ['invalid UTF-8 (surrogate)', hex('eda080')],
    ['more than 4096 bytes', Buffer.alloc(4097, 0x61)],
  ];

  describe.each(badStrings)('string with %s', (_name, bytes) => {
    it('as EXPORT_NAME', () => {
      const f = decodeOne(encodeOption(1, bytes));
      invalid(f);
      expect(f).toMatchObject({ opt: 'exportName', name: '', length: bytes.length });
    });
    it('as INFO and GO name', () => {
      invalid(decodeOne(encodeOption(6, encodeInfoGoData(bytes, [0]))));
      invalid(decodeOne(encodeOption(7, encodeInfoGoData(bytes, []))));
    });
    it('as META_CONTEXT name and query', () => {
      invalid(decodeOne(encodeOption(9, encodeMetaContextData(bytes, []))));
      invalid(decodeOne(encodeOption(10, encodeMetaContextData('disk', ['base:allocation', bytes]))));
    });
  });

  it('exactly 4096 bytes is still fine', () => {
    const name = 'n'.repeat(4096);
    expect(decodeOne(encodeOption(1, Buffer.from(name)))).toMatchObject({ name });
    expect(decodeOne(encodeOption(9, encodeMetaContextData('', [name])))).toMatchObject({ queries: [name] });
  });

  it('maxStringLength is configurable', () => {
    expect(decodeOne(encodeOption(1, Buffer.from('abcd')), { maxStringLength: 3 })).toMatchObject({
      problem: { reply: 'NBD_REP_ERR_INVALID' },
    });
  });

  it('a malformed option does not desynchronise the stream', () => {
    const bytes = Buffer.concat([encodeOption(7, hex('00000005 6162636465 00')), encodeOption(7, encodeInfoGoData('ok', []))]);
    const { frames } = decodeStream([bytes], { start: 'options' });
    expect(frames).toHaveLength(2);
    expect(frames[1]).toEqual({ kind: 'option', code: 7, length: 8, opt: 'go', name: 'ok', requests: [] });
  });
});

describe('fatal option framing', () => {
  it('bad option magic ⇒ fatal NBD_ERR_BAD_OPTION_MAGIC, sticky, drops the buffer', () => {
    const d = decoderAt('options');
    d.push(hex('49484156454f5055 00000001 00000000 deadbeef'));
    const f = d.next();
    expect(f).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BAD_OPTION_MAGIC' });
    expect(d.next()).toBe(f);
    expect(d.bufferedBytes).toBe(0);
    expect(d.push(encodeOption(3))).toBe(false);
    expect(d.next()).toBe(f);
  });

  it('a transmission request in the options phase is a bad option magic', () => {
    const d = decoderAt('options');
    d.push(encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 512 }));
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BAD_OPTION_MAGIC' });
  });

  it('option data over maxOptionSkip ⇒ fatal NBD_ERR_OPTION_TOO_LONG (DoS)', () => {
    const d = decoderAt('options', { maxOptionSkip: 1000 });
    d.push(encodeOption(0x42, Buffer.alloc(0), 1001));
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_OPTION_TOO_LONG' });
  });
});

describe('option size limits (practice 5)', () => {
  it.each([
    [1, 'exportName'],
    [6, 'info'],
    [7, 'go'],
    [9, 'listMetaContext'],
    [10, 'setMetaContext'],
  ])('option %i over maxOptionLength ⇒ TOO_BIG, data skipped without buffering, next option parses', (code, opt) => {
    const length = 100_000;
    const d = decoderAt('options', { maxOptionLength: 1024 });
    d.push(encodeOption(code, Buffer.alloc(0), length));
    const f = d.next();
    // The frame is known from the header alone; the data is then thrown away as it arrives.
    expect(f).toMatchObject({ kind: 'option', code, length, opt, name: '', problem: { reply: 'NBD_REP_ERR_TOO_BIG' } });
    let maxBuffered = 0;
    const piece = Buffer.alloc(997, 0xaa);
    let sent = 0;
    while (sent + piece.length < length) {
      d.push(piece);
      sent += piece.length;
      maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
      expect(d.next()).toBeNull();
    }
    // The last piece carries the rest of the data and the next option.
    d.push(Buffer.concat([Buffer.alloc(length - sent, 0xaa), encodeOption(7, encodeInfoGoData('disk', [0]))]));
    maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
    expect(maxBuffered).toBeLessThanOrEqual(30);
    expect(d.next()).toEqual({ kind: 'option', code: 7, length: 12, opt: 'go', name: 'disk', requests: [0] });
    expect(d.next()).toBeNull();
  });

  it('unknown options and data-less options with data are skipped the same way, whatever their size', () => {
    const length = 50_000;
    const bytes = Buffer.concat([
      encodeOption(0x99, Buffer.alloc(length, 1)),
      encodeOption(5, Buffer.alloc(length, 2)),
      encodeOption(3),
    ]);
    const seen: number[] = [];
    const { frames } = decodeStream(chunksOf(bytes, 1000), {
      start: 'options',
      limits: { maxOptionLength: 16, maxBufferedBytes: 2048 },
      afterChunk: (d) => seen.push(d.bufferedBytes),
    });
    expect(frames).toEqual([
      { kind: 'option', code: 0x99, length, opt: 'unknown' },
      { kind: 'option', code: 5, length, opt: 'starttls', hasData: true },
      { kind: 'option', code: 3, length: 0, opt: 'list', hasData: false },
    ]);
    expect(Math.max(...seen)).toBeLessThan(16);
  });

  it('maxBufferedBytes ⇒ fatal NBD_ERR_BUFFER_LIMIT', () => {
    const d = decoderAt('options', { maxBufferedBytes: 100 });
    expect(d.push(Buffer.alloc(60))).toBe(true);
    expect(d.push(Buffer.alloc(41))).toBe(false);
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BUFFER_LIMIT' });
    expect(d.bufferedBytes).toBe(0);
  });

  it('a parsed option bigger than the buffer cap (but under maxOptionLength) fails instead of growing', () => {
    const bytes = encodeOption(1, Buffer.alloc(5000, 0x61));
    const { frames, decoder } = decodeStream(chunksOf(bytes, 100), { start: 'options', limits: { maxBufferedBytes: 1000, maxOptionLength: 64 * 1024 } });
    expect(frames).toEqual([expect.objectContaining({ kind: 'fatal', code: 'NBD_ERR_BUFFER_LIMIT' })]);
    expect(decoder.bufferedBytes).toBe(0);
  });
});

describe('phase control', () => {
  it('STARTTLS then discardBuffered() drops pipelined plaintext; the fresh stream parses options', () => {
    const d = decoderAt('options');
    const pipelined = Buffer.concat([encodeOption(7, encodeInfoGoData('', [])), hex('0102')]);
    d.push(Buffer.concat([encodeOption(5), pipelined]));
    expect(d.next()).toEqual({ kind: 'option', code: 5, length: 0, opt: 'starttls', hasData: false });
    expect(d.discardBuffered()).toBe(pipelined.length);
    expect(d.bufferedBytes).toBe(0);
    expect(d.next()).toBeNull();
    d.restartOptions();
    expect(d.phase).toBe('options');
    d.push(encodeOption(8));
    expect(d.next()).toEqual({ kind: 'option', code: 8, length: 0, opt: 'structuredReply', hasData: false });
  });

  it('discardBuffered() also forgets a half-received option', () => {
    const d = decoderAt('options');
    const go = encodeOption(7, encodeInfoGoData('disk', []));
    d.push(go.subarray(0, 20));
    expect(d.next()).toBeNull();
    d.discardBuffered();
    d.push(encodeOption(3));
    expect(d.next()).toMatchObject({ opt: 'list' });
  });

  it('stop(): nothing more is decoded or buffered', () => {
    const d = decoderAt('requests');
    d.push(Buffer.concat([encodeRequest({ flags: 0, type: 2, cookie: 1n, offset: 0, length: 0 }), hex('25609513 0000')]));
    expect(d.next()).toMatchObject({ kind: 'request', type: 2 });
    d.stop();
    expect(d.phase).toBe('stopped');
    expect(d.bufferedBytes).toBe(0);
    expect(d.next()).toBeNull();
    // Ignored, not refused: a stopped decoder is not a failed one (bytes after DISC never kill the connection).
    expect(d.push(encodeRequest({ flags: 0, type: 0, cookie: 2n, offset: 0, length: 1 }))).toBe(true);
    expect(d.next()).toBeNull();
    expect(d.bufferedBytes).toBe(0);
  });

  it('GO and the first request in ONE chunk: the request decodes after startTransmission(false)', () => {
    const read = encodeRequest({ flags: 0, type: 0, cookie: 7n, offset: 4096, length: 512 });
    const d = decoderAt('options');
    d.push(Buffer.concat([encodeOption(7, encodeInfoGoData('disk', [0])), read]));
    expect(d.next()).toMatchObject({ opt: 'go', name: 'disk' });
    expect(d.bufferedBytes).toBe(28);
    d.startTransmission(false);
    expect(d.phase).toBe('requests');
    expect(d.next()).toEqual({
      kind: 'request',
      extended: false,
      flags: 0,
      type: 0,
      cookie: 7n,
      offset: 4096,
      length: 512,
      huge: false,
      payload: undefined,
      payloadDiscarded: false,
    });
    expect(d.next()).toBeNull();
  });

  it('without the switch, the same leftover would be (wrongly) read as an option: the switch is what matters', () => {
    const read = encodeRequest({ flags: 0, type: 0, cookie: 7n, offset: 4096, length: 512 });
    const d = decoderAt('options');
    d.push(Buffer.concat([encodeOption(7, encodeInfoGoData('disk', [0])), read]));
    d.next();
    expect(d.next()).toMatchObject({ kind: 'fatal', code: 'NBD_ERR_BAD_OPTION_MAGIC' });
  });

  it('EXTENDED_HEADERS, GO and an extended WRITE in one chunk: startTransmission(true)', () => {
    const payload = Buffer.from('0123456789');
    const write = encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 9n, offset: 0, length: payload.length }, payload);
    const d = new FrameDecoder();
    d.push(Buffer.concat([encodeClientFlags(1), encodeOption(11), encodeOption(7, encodeInfoGoData('', [])), write]));
    const frames = drain(d, (f, dec) => {
      if (f.kind === 'option' && f.opt === 'go') dec.startTransmission(true);
    });
    expect(frames.map((f) => (f.kind === 'option' ? f.opt : f.kind))).toEqual(['clientFlags', 'extendedHeaders', 'go', 'request']);
    expect(frames[3]).toMatchObject({ extended: true, type: 1, cookie: 9n, length: 10, payload });
  });

  it('EXPORT_NAME and the first request in one chunk', () => {
    const d = decoderAt('options');
    d.push(Buffer.concat([encodeOption(1, Buffer.from('disk')), encodeRequest({ flags: 1, type: 3, cookie: 3n, offset: 0, length: 0 })]));
    expect(d.next()).toMatchObject({ opt: 'exportName', name: 'disk' });
    d.startTransmission(false);
    expect(d.next()).toMatchObject({ kind: 'request', type: 3, flags: 1, cookie: 3n });
  });
});
