/**
 * Split-point tests: the same multi-frame byte
 * stream, cut at every offset (and at every pair of offsets for a shorter
 * stream, and into 1-byte chunks), decodes to identical frames.
 */
import { describe, expect, it } from 'vitest';
import { decodeStream, goStartsTransmission, type Decoded } from '../../helpers/decode.js';
import {
  chunksOf,
  encodeClientFlags,
  encodeExtendedRequest,
  encodeInfoGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  splitAt,
} from '../../helpers/wire.js';

const LIMITS = { maxOptionLength: 256, maxPayload: 64 };

/** A full compact session: flags, every option family, GO, then requests incl. WRITEs. */
const compactStream = Buffer.concat([
  encodeClientFlags(3),
  encodeOption(8),
  encodeOption(3, Buffer.from('x')), // LIST with data
  encodeOption(0x1234, Buffer.from('unknown option data')),
  encodeOption(10, encodeMetaContextData('disk', ['base:allocation', 'qemu:dirty-bitmap:b'])),
  encodeOption(9, encodeMetaContextData('disk', [])),
  encodeOption(7, encodeInfoGoData('bad\0name', [])), // INVALID, stays in options
  encodeOption(6, Buffer.alloc(300, 1)), // TOO_BIG, skipped
  encodeOption(6, encodeInfoGoData('disk', [0, 1, 2, 3])),
  encodeOption(7, encodeInfoGoData('disk', [3])),
  encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 4096 }),
  encodeRequest({ flags: 1, type: 1, cookie: 2n, offset: 512, length: 5 }, Buffer.from('hello')),
  encodeRequest({ flags: 0, type: 1, cookie: 3n, offset: 1024, length: 100 }, Buffer.alloc(100, 9)), // discarded
  encodeRequest({ flags: 0, type: 1, cookie: 4n, offset: 0, length: 0 }),
  encodeRequest({ flags: 0, type: 7, cookie: 5n, offset: 0, length: 65536 }),
  encodeRequest({ flags: 0, type: 1, cookie: 6n, offset: 2 ** 40, length: 64 }, Buffer.alloc(64, 0x5a)),
  encodeRequest({ flags: 0, type: 2, cookie: 7n, offset: 0, length: 0 }),
]);

/** An extended-header session entered through EXPORT_NAME of the default export ("", zero-length data). */
const extendedStream = Buffer.concat([encodeClientFlags(1), encodeOption(11), encodeOption(1)]);

const extendedRequests = Buffer.concat([
  encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 10n, offset: 0, length: 3 }, Buffer.from('abc')),
  encodeExtendedRequest({ flags: 0, type: 0, cookie: 11n, offset: 2 ** 33, length: 2 ** 33 }),
  encodeExtendedRequest({ flags: 0x20, type: 7, cookie: 12n, offset: 0, length: 12 }, Buffer.alloc(12, 3)),
  encodeExtendedRequest({ flags: 0x20, type: 1, cookie: 13n, offset: 0, length: 65 }, Buffer.alloc(65)), // discarded
  encodeExtendedRequest({ flags: 0, type: 2, cookie: 14n, offset: 0, length: 0 }),
]);
const extendedSession = Buffer.concat([extendedStream, extendedRequests]);

function decodeChunks(chunks: readonly Buffer[], extended: boolean): Decoded[] {
  return decodeStream(chunks, { limits: LIMITS, onFrame: goStartsTransmission(extended) }).frames;
}

/** Structural summary used in failure messages. */
const kinds = (fs: Decoded[]) => fs.map((f) => (f.kind === 'option' ? f.opt : f.kind === 'request' ? `req${f.type}` : f.kind));

describe.each([
  ['compact session', compactStream, false],
  ['extended session', extendedSession, true],
])('%s', (_name, stream, extended) => {
  const reference = decodeChunks([stream], extended);

  it('the reference decode is what the stream says', () => {
    expect(reference.every((f) => f.kind !== 'fatal')).toBe(true);
    if (!extended) {
      expect(kinds(reference)).toEqual([
        'clientFlags',
        'structuredReply',
        'list',
        'unknown',
        'setMetaContext',
        'listMetaContext',
        'go',
        'info',
        'info',
        'go',
        'req0',
        'req1',
        'req1',
        'req1',
        'req7',
        'req1',
        'req2',
      ]);
      expect(reference[6]).toMatchObject({ problem: { reply: 'NBD_REP_ERR_INVALID' } });
      expect(reference[7]).toMatchObject({ problem: { reply: 'NBD_REP_ERR_TOO_BIG' } });
      expect(reference[11]).toMatchObject({ payload: Buffer.from('hello') });
      expect(reference[12]).toMatchObject({ payloadDiscarded: true, payload: undefined });
      expect(reference[15]).toMatchObject({ offset: 2 ** 40, payload: Buffer.alloc(64, 0x5a) });
    } else {
      expect(kinds(reference)).toEqual(['clientFlags', 'extendedHeaders', 'exportName', 'req1', 'req0', 'req7', 'req1', 'req2']);
      expect(reference[4]).toMatchObject({ extended: true, offset: 2 ** 33, length: 2 ** 33 });
      expect(reference[6]).toMatchObject({ payloadDiscarded: true });
    }
  });

  it('identical frames when cut at every single offset', () => {
    for (let i = 0; i <= stream.length; i++) {
      const got = decodeChunks(splitAt(stream, [i]), extended);
      expect(got, `split at ${i}`).toEqual(reference);
    }
  });

  it('identical frames in 1-byte chunks', () => {
    expect(decodeChunks(chunksOf(stream, 1), extended)).toEqual(reference);
  });

  it.each([2, 3, 7, 16, 27, 28, 29, 31, 32, 33])('identical frames in %i-byte chunks', (size) => {
    expect(decodeChunks(chunksOf(stream, size), extended)).toEqual(reference);
  });
});

describe('every pair of cut points on a shorter stream', () => {
  // GO + WRITE + READ: covers option framing, the phase switch and a payload.
  const stream = Buffer.concat([
    encodeOption(7, encodeInfoGoData('d', [0])),
    encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 6 }, Buffer.from('abcdef')),
    encodeRequest({ flags: 0, type: 0, cookie: 2n, offset: 0, length: 6 }),
  ]);
  const run = (chunks: Buffer[]) => decodeStream(chunks, { start: 'options', onFrame: goStartsTransmission(false) }).frames;
  const reference = run([stream]);

  it('decodes GO, WRITE, READ for every (i, j) split', () => {
    expect(kinds(reference)).toEqual(['go', 'req1', 'req0']);
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        const got = run(splitAt(stream, [i, j]));
        expect(got, `split at ${i},${j}`).toEqual(reference);
      }
    }
  });
});
