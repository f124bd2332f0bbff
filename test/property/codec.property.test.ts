/**
 * Property tests for the codec:
 *  1. arbitrary valid client sessions, encoded with the test-side codec and cut
 *     at arbitrary points, decode to exactly the expected frames;
 *  2. arbitrary server frames from the src encoders parse back, with the
 *     test-side parser, to the same fields;
 *  3. arbitrary garbage never makes the decoder throw or hold more than its
 *     buffer cap.
 * Every property is time-boxed; the number of runs executed is printed.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import {
  encodeAck,
  encodeChunkBlockStatus,
  encodeChunkError,
  encodeChunkErrorOffset,
  encodeChunkNone,
  encodeChunkOffsetData,
  encodeChunkOffsetHole,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionReply,
  encodeRepServer,
  encodeSimpleReply,
} from '../../src/protocol/encoder.js';
import { decodeStream, goStartsTransmission } from '../helpers/decode.js';
import {
  chunksOf,
  decodeChunk,
  encodeClientFlags,
  encodeExtendedRequest,
  encodeInfoGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  flat,
  parseExportNameReply,
  parseOptionReplies,
  parseRepInfo,
  parseRepMetaContext,
  parseRepServer,
  parseTransmissionReplies,
  splitAt,
  type OptionReply,
  type ReplyChunk,
} from '../helpers/wire.js';

/** Run a time-boxed property, report its run count, fail with fast-check's report. */
function check<T>(name: string, prop: fc.IProperty<T>, numRuns = 2000): void {
  const details = fc.check(prop, { numRuns, interruptAfterTimeLimit: 4000, markInterruptAsFailure: false });
  console.log(`[codec property] ${name}: ${details.numRuns} runs${details.interrupted ? ' (time-boxed)' : ''}, seed ${details.seed}`);
  if (details.failed) throw new Error(fc.defaultReportMessage(details) ?? 'property failed');
  expect(details.numRuns).toBeGreaterThan(0);
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const TWO_53 = 2n ** 53n;
const LIMITS = { maxPayload: 48, maxOptionLength: 512, maxBufferedBytes: 1 << 20 };

// ── arbitraries: client frames ───────────────────────────────────────────

/** A protocol string: any well-formed Unicode without NUL, ≤ 4096 bytes. */
const protoString = fc
  .string({ unit: 'binary', maxLength: 12 })
  .map((s) => s.replace(/\0/g, ''))
  .filter((s) => Buffer.from(s, 'utf8').toString('utf8') === s);

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
/** Offsets biased towards the 2^53 boundary. */
const offset64 = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 40n }), fc.bigInt({ min: TWO_53 - 2n, max: TWO_53 + 2n }), u64);

interface ClientCase {
  bytes: Buffer;
  frame: object;
}

const dataLessOption = fc
  .record({ code: fc.constantFrom(2, 3, 5, 8, 11), data: fc.uint8Array({ maxLength: 8 }) })
  .map(({ code, data }): ClientCase => {
    const opt = ({ 2: 'abort', 3: 'list', 5: 'starttls', 8: 'structuredReply', 11: 'extendedHeaders' } as const)[code as 2 | 3 | 5 | 8 | 11];
    return { bytes: encodeOption(code, Buffer.from(data)), frame: { kind: 'option', code, length: data.length, opt, hasData: data.length > 0 } };
  });

const infoOption = fc
  .record({ code: fc.constantFrom(6, 7), name: protoString, infos: fc.array(u16, { maxLength: 6 }) })
  .map(({ code, name, infos }): ClientCase => {
    const data = encodeInfoGoData(name, infos);
    return { bytes: encodeOption(code, data), frame: { kind: 'option', code, length: data.length, opt: code === 6 ? 'info' : 'go', name, requests: infos } };
  });

const metaOption = fc
  .record({ code: fc.constantFrom(9, 10), name: protoString, queries: fc.array(protoString, { maxLength: 5 }) })
  .map(({ code, name, queries }): ClientCase => {
    const data = encodeMetaContextData(name, queries);
    return {
      bytes: encodeOption(code, data),
      frame: { kind: 'option', code, length: data.length, opt: code === 9 ? 'listMetaContext' : 'setMetaContext', name, queries },
    };
  });

const unknownOption = fc
  .record({ code: fc.oneof(fc.constant(4), fc.integer({ min: 12, max: 0xffffffff })), data: fc.uint8Array({ maxLength: 40 }) })
  .map(({ code, data }): ClientCase => ({ bytes: encodeOption(code, Buffer.from(data)), frame: { kind: 'option', code, length: data.length, opt: 'unknown' } }));

/** A parsed option whose declared data exceeds maxOptionLength ⇒ TOO_BIG, skipped. */
const tooBigOption = fc
  .record({ code: fc.constantFrom(1, 6, 7, 9, 10), extra: fc.integer({ min: 1, max: 200 }) })
  .map(({ code, extra }): ClientCase => {
    const length = LIMITS.maxOptionLength + extra;
    const opt = ({ 1: 'exportName', 6: 'info', 7: 'go', 9: 'listMetaContext', 10: 'setMetaContext' } as const)[code as 1 | 6 | 7 | 9 | 10];
    const empty = code === 1 ? {} : code === 6 || code === 7 ? { requests: [] } : { queries: [] };
    return {
      bytes: encodeOption(code, Buffer.alloc(length, 0x61)),
      frame: { kind: 'option', code, length, opt, name: '', ...empty, problem: expect.objectContaining({ reply: 'NBD_REP_ERR_TOO_BIG' }) },
    };
  });

/** Options that keep the decoder in the options phase. */
const midOption = fc.oneof(dataLessOption, infoOption.filter((c) => (c.frame as { code: number }).code === 6), metaOption, unknownOption, tooBigOption);

/** The option that ends negotiation: a valid GO or EXPORT_NAME. */
const finalOption = fc.oneof(
  infoOption.map((c) => ({ bytes: Buffer.concat([c.bytes.subarray(0, 8), Buffer.from([0, 0, 0, 7]), c.bytes.subarray(12)]), frame: { ...c.frame, code: 7, opt: 'go' } })),
  protoString.map((name): ClientCase => ({
    bytes: encodeOption(1, Buffer.from(name)),
    frame: { kind: 'option', code: 1, length: Buffer.byteLength(name), opt: 'exportName', name },
  })),
);

function requestArb(extended: boolean): fc.Arbitrary<ClientCase> {
  return fc
    .record({
      flags: u16,
      type: fc.oneof(fc.integer({ min: 0, max: 8 }), u16),
      cookie: u64,
      offset: offset64,
      length: extended ? fc.oneof(fc.bigInt({ min: 0n, max: 4096n }), offset64) : fc.bigInt({ min: 0n, max: 0xffffffffn }),
      payload: fc.uint8Array({ maxLength: 64 }),
    })
    .map(({ flags, type, cookie, offset, length, payload }): ClientCase => {
      const hasPayload = type === 1 || (extended && (flags & 0x20) !== 0);
      const len = hasPayload ? BigInt(payload.length) : length;
      const fields = { flags, type, cookie, offset, length: len };
      const p = hasPayload ? Buffer.from(payload) : undefined;
      const bytes = extended ? encodeExtendedRequest(fields, p) : encodeRequest(fields, p);
      const discarded = hasPayload && payload.length > LIMITS.maxPayload;
      return {
        bytes,
        frame: {
          kind: 'request',
          extended,
          flags,
          type,
          cookie,
          offset: offset >= TWO_53 ? MAX_SAFE : Number(offset),
          length: len >= TWO_53 ? MAX_SAFE : Number(len),
          huge: offset >= TWO_53 || len >= TWO_53,
          // A zero-length WRITE carries an empty payload; other commands with a zero PAYLOAD_LEN carry none.
          payload: !hasPayload || discarded ? undefined : payload.length > 0 ? Buffer.from(payload) : type === 1 ? Buffer.alloc(0) : undefined,
          payloadDiscarded: discarded,
          // An offset past 2^53 is kept exactly as sent (echoed in extended replies).
          ...(offset >= TWO_53 ? { wireOffset: offset } : {}),
        },
      };
    });
}

const session = fc.boolean().chain((extended) =>
  fc.record({
    extended: fc.constant(extended),
    flags: u32,
    options: fc.array(midOption, { maxLength: 6 }),
    final: finalOption,
    requests: fc.array(requestArb(extended), { maxLength: 6 }),
  }),
);

/** Sorted cut points inside a buffer of length n. */
const cutsFor = (n: number) => fc.uniqueArray(fc.integer({ min: 0, max: n }), { maxLength: 12 }).map((a) => a.sort((x, y) => x - y));

describe('decoder: arbitrary valid client sessions at arbitrary chunkings', () => {
  it('yields exactly the encoded frames, in order', () => {
    check(
      'client session round trip',
      fc.property(
        session.chain((s) => {
          const parts = [...s.options, s.final, ...s.requests];
          const bytes = Buffer.concat([encodeClientFlags(s.flags), ...parts.map((p) => p.bytes)]);
          return fc.record({ s: fc.constant(s), bytes: fc.constant(bytes), cuts: cutsFor(bytes.length) });
        }),
        ({ s, bytes, cuts }) => {
          const expected = [{ kind: 'clientFlags', flags: s.flags }, ...s.options.map((o) => o.frame), s.final.frame, ...s.requests.map((r) => r.frame)];
          const { frames, decoder } = decodeStream(splitAt(bytes, cuts), { limits: LIMITS, onFrame: goStartsTransmission(s.extended) });
          expect(frames).toEqual(expected);
          expect(decoder.bufferedBytes).toBe(0);
        },
      ),
      1500,
    );
  });

  it('pipelined requests alone, in fixed 1- to 40-byte chunks', () => {
    check(
      'request stream chunk sizes',
      fc.property(
        fc.boolean().chain((extended) =>
          fc.record({
            extended: fc.constant(extended),
            reqs: fc.array(requestArb(extended), { minLength: 1, maxLength: 8 }),
            size: fc.integer({ min: 1, max: 40 }),
          }),
        ),
        ({ extended, reqs, size }) => {
          const bytes = Buffer.concat(reqs.map((r) => r.bytes));
          const { frames } = decodeStream(chunksOf(bytes, size), { start: extended ? 'extendedRequests' : 'requests', limits: LIMITS });
          expect(frames).toEqual(reqs.map((r) => r.frame));
        },
      ),
      1000,
    );
  });
});

// ── server frames: src encoders → test parser ────────────────────────────

interface ServerOptionCase {
  frame: Buffer[];
  check: (r: OptionReply) => void;
}

const option = u32;

const serverOptionReply: fc.Arbitrary<ServerOptionCase> = fc.oneof(
  option.map((o) => ({ frame: encodeAck(o), check: (r: OptionReply) => expect(r).toEqual({ option: o, type: 1, data: Buffer.alloc(0) }) })),
  fc.tuple(option, protoString, fc.option(protoString, { nil: undefined })).map(([o, name, desc]) => ({
    frame: encodeRepServer(o, name, desc),
    check: (r: OptionReply) => {
      expect([r.option, r.type]).toEqual([o, 2]);
      expect(parseRepServer(r.data)).toEqual({ name, description: desc ?? '' });
    },
  })),
  fc.tuple(option, fc.integer({ min: 0, max: MAX_SAFE }), u16).map(([o, size, flags]) => ({
    frame: encodeInfoExport(o, size, flags),
    check: (r: OptionReply) => expect(parseRepInfo(r.data)).toEqual({ info: 'export', size: BigInt(size), flags }),
  })),
  fc.tuple(option, protoString).map(([o, name]) => ({
    frame: encodeInfoName(o, name),
    check: (r: OptionReply) => expect(parseRepInfo(r.data)).toEqual({ info: 'name', name }),
  })),
  fc.tuple(option, protoString).map(([o, d]) => ({
    frame: encodeInfoDescription(o, d),
    check: (r: OptionReply) => expect(parseRepInfo(r.data)).toEqual({ info: 'description', description: d }),
  })),
  fc.tuple(option, u32, u32, u32).map(([o, minimum, preferred, maximum]) => ({
    frame: encodeInfoBlockSize(o, { minimum, preferred, maximum }),
    check: (r: OptionReply) => expect(parseRepInfo(r.data)).toEqual({ info: 'blockSize', minimum, preferred, maximum }),
  })),
  fc.tuple(option, u32, protoString).map(([o, id, name]) => ({
    frame: encodeMetaContext(o, id, name),
    check: (r: OptionReply) => expect([r.type, parseRepMetaContext(r.data)]).toEqual([4, { id, name }]),
  })),
  fc.tuple(option, fc.integer({ min: 0x80000001, max: 0x8000000a }), fc.uint8Array({ maxLength: 30 })).map(([o, type, msg]) => ({
    frame: encodeOptionReply(o, type, Buffer.from(msg)),
    check: (r: OptionReply) => expect(r).toEqual({ option: o, type, data: Buffer.from(msg) }),
  })),
);

interface ChunkCase {
  frame: Buffer[];
  simple?: { cookie: bigint; error: number; data?: Buffer };
  chunk?: { cookie: bigint; flags: number; type: number; offset?: bigint; decoded: unknown };
  read?: [bigint, number];
}

const cookie = u64;
const safe = fc.integer({ min: 0, max: MAX_SAFE });

function chunkArb(extended: boolean): fc.Arbitrary<ChunkCase> {
  const base = fc.record({ cookie, done: fc.boolean(), requestOffset: safe });
  const hdr = (c: { cookie: bigint; done: boolean; requestOffset: number }, type: number, decoded: unknown, forceDone = false) => ({
    cookie: c.cookie,
    flags: c.done || forceDone ? 1 : 0,
    type,
    ...(extended ? { offset: BigInt(c.requestOffset) } : {}),
    decoded,
  });
  const o = (c: { done: boolean; requestOffset: number }) => ({ extended, done: c.done, requestOffset: c.requestOffset });
  const arbs: Array<fc.Arbitrary<ChunkCase>> = [
    base.map((c) => ({ frame: encodeChunkNone(c.cookie, o(c)), chunk: hdr(c, 0, { type: 'none' }, true) })),
    fc.tuple(base, safe, fc.array(fc.uint8Array({ minLength: 1, maxLength: 20 }), { minLength: 1, maxLength: 3 })).map(([c, off, parts]) => ({
      frame: encodeChunkOffsetData(c.cookie, off, parts.map((p) => Buffer.from(p)), o(c)),
      chunk: hdr(c, 1, { type: 'offsetData', offset: BigInt(off), data: Buffer.concat(parts.map((p) => Buffer.from(p))) }),
    })),
    fc.tuple(base, safe, fc.integer({ min: 1, max: 0xffffffff })).map(([c, off, size]) => ({
      frame: encodeChunkOffsetHole(c.cookie, off, size, o(c)),
      chunk: hdr(c, 2, { type: 'offsetHole', offset: BigInt(off), size }),
    })),
    fc
      .tuple(base, u32, fc.array(fc.record({ length: fc.integer({ min: 1, max: 0xffffffff }), flags: u32 }), { minLength: 1, maxLength: 6 }))
      .map(([c, id, extents]) => ({
        frame: encodeChunkBlockStatus(c.cookie, id, extents, o(c)),
        chunk: extended
          ? hdr(c, 6, { type: 'blockStatusExt', contextId: id, extents: extents.map((e) => ({ length: BigInt(e.length), flags: BigInt(e.flags) })) })
          : hdr(c, 5, { type: 'blockStatus', contextId: id, extents }),
      })),
    fc.tuple(base, fc.integer({ min: 1, max: 0xffffffff }), protoString).map(([c, err, msg]) => ({
      frame: encodeChunkError(c.cookie, err, msg, o(c)),
      chunk: hdr(c, 0x8001, { type: 'error', error: err, message: msg }),
    })),
    fc.tuple(base, fc.integer({ min: 1, max: 0xffffffff }), safe, protoString).map(([c, err, off, msg]) => ({
      frame: encodeChunkErrorOffset(c.cookie, err, off, msg, o(c)),
      chunk: hdr(c, 0x8002, { type: 'errorOffset', error: err, message: msg, offset: BigInt(off) }),
    })),
  ];
  if (!extended) {
    // Simple replies: errors, data-less success, and READ data (framed by the cookie's length).
    arbs.push(
      fc.tuple(cookie, u32).map(([c, error]) => ({ frame: encodeSimpleReply(c, error), simple: { cookie: c, error } })),
      fc.tuple(cookie, fc.uint8Array({ minLength: 1, maxLength: 40 })).map(([c, d]) => ({
        frame: encodeSimpleReply(c, 0, Buffer.from(d)),
        simple: { cookie: c, error: 0, data: Buffer.from(d) },
        read: [c, d.length] as [bigint, number],
      })),
    );
  }
  return fc.oneof(...arbs);
}

describe('server frames: src encoders parsed back by the test parser', () => {
  it('option reply sequences round-trip', () => {
    check(
      'option replies',
      fc.property(fc.array(serverOptionReply, { minLength: 1, maxLength: 8 }), (cases) => {
        const replies = parseOptionReplies(flat(...cases.map((c) => c.frame)));
        expect(replies).toHaveLength(cases.length);
        cases.forEach((c, i) => c.check(replies[i]!));
      }),
    );
  });

  it('EXPORT_NAME replies round-trip', () => {
    check(
      'export name reply',
      fc.property(safe, u16, fc.boolean(), (size, flags, noZeroes) => {
        expect(parseExportNameReply(encodeExportNameReply(size, flags, noZeroes))).toEqual({ size: BigInt(size), flags, zeroes: !noZeroes });
      }),
    );
  });

  it.each([false, true])('transmission reply streams round-trip (extended %s)', (extended) => {
    check(
      `transmission replies (extended ${extended})`,
      fc.property(
        // Unique cookies: a READ's framing depends on its cookie.
        fc.uniqueArray(chunkArb(extended), { minLength: 1, maxLength: 8, selector: (c) => (c.simple ?? c.chunk)!.cookie }),
        (cases) => {
          const reads = new Map(cases.filter((c) => c.read).map((c) => c.read!));
          const rs = parseTransmissionReplies(flat(...cases.map((c) => c.frame)), { structured: true, extended, readLengths: reads });
          expect(rs).toHaveLength(cases.length);
          cases.forEach((c, i) => {
            const r = rs[i]!;
            if (c.simple) {
              expect(r).toEqual({ kind: 'simple', ...c.simple });
            } else {
              const { decoded, ...fields } = c.chunk!;
              const { payload, ...got } = r as ReplyChunk;
              expect(got).toEqual({ kind: 'chunk', ...fields });
              expect(decodeChunk({ type: got.type, flags: got.flags, payload })).toEqual(decoded);
            }
          });
        },
      ),
    );
  });
});

// ── hostile input ────────────────────────────────────────────────────────

describe('decoder: arbitrary garbage', () => {
  const limits = { maxBufferedBytes: 300, maxOptionLength: 64, maxPayload: 64, maxOptionSkip: 4096, maxPayloadSkip: 4096 };
  const start = fc.constantFrom('clientFlags', 'options', 'requests', 'extendedRequests') as fc.Arbitrary<'clientFlags' | 'options' | 'requests' | 'extendedRequests'>;

  /** Garbage, sometimes behind a valid prefix so the decoder gets past the magic checks. */
  const prefix = fc.constantFrom(
    Buffer.alloc(0),
    encodeOption(7, encodeInfoGoData('d', [0])).subarray(0, 16),
    encodeOption(0x77, Buffer.alloc(0), 100),
    encodeRequest({ flags: 0, type: 1, cookie: 1n, offset: 0, length: 200 }),
    encodeExtendedRequest({ flags: 0x20, type: 7, cookie: 1n, offset: 0, length: 250 }),
  );

  it('never throws and never holds more than maxBufferedBytes', () => {
    check(
      'garbage',
      fc.property(start, prefix, fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 12 }), fc.array(fc.boolean(), { maxLength: 12 }), (s, pre, chunks, switches) => {
        const d = new FrameDecoder(limits);
        if (s === 'requests' || s === 'extendedRequests') d.startTransmission(s === 'extendedRequests');
        const all = [pre, ...chunks.map((c) => Buffer.from(c))];
        all.forEach((c, i) => {
          d.push(c);
          expect(d.bufferedBytes).toBeLessThanOrEqual(limits.maxBufferedBytes);
          for (let n = 0; n < 1000; n++) {
            const f = d.next();
            expect(d.bufferedBytes).toBeLessThanOrEqual(limits.maxBufferedBytes);
            if (f === null || f.kind === 'fatal') break;
            // Arbitrary phase switches at frame boundaries, as a machine might do.
            if (switches[i] && f.kind === 'option') d.startTransmission(i % 2 === 0);
          }
        });
      }),
    );
  });
});
