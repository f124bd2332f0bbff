/**
 * Reply forms built by src/protocol/replies.ts for arbitrary inputs
 * (reply.negotiated-mode, reply.structured-chunks, reply.df-one-chunk,
 * reply.block-status-chunks): exactly one DONE chunk, and it is last; READ chunks
 * tile [offset, offset + Σ segments) in order without overlap; DF gives one
 * content chunk; BLOCK_STATUS gives one chunk per context; errors are one
 * ERROR chunk with DONE; extended chunks echo the request offset.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { replyBlockStatus, replyError, replyRead, type ReadSegment } from '../../../src/protocol/replies.js';
import { EXTENDED_MAGIC, STRUCTURED_MAGIC, parseChunks, parseSimple, type Chunk } from '../../unit/machines/support.js';

const DONE = 1;
const mode = fc.constantFrom('structured' as const, 'extended' as const);
const cookie = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });
const offset = fc.nat({ max: 2 ** 40 });
const segment: fc.Arbitrary<ReadSegment> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((a) => ({ data: Buffer.from(a) })),
  fc.nat({ max: 100_000 }).map((hole) => ({ hole })),
);
const segLength = (s: ReadSegment) => ('data' in s ? s.data.length : s.hole);
const opts = { numRuns: 500, interruptAfterTimeLimit: 3000 };

function run<Ts extends [unknown, ...unknown[]]>(name: string, property: fc.IProperty<Ts>) {
  const details = fc.check(property, opts);
  if (details.failed) throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${String(details.errorInstance)}`);
  console.log(`${name}: ${details.numRuns} runs`);
  expect(details.numRuns).toBeGreaterThanOrEqual(50);
}

function checkCommon(chunks: readonly Chunk[], m: 'structured' | 'extended', c: bigint, requestOffset: number) {
  expect(chunks.length).toBeGreaterThan(0);
  expect(chunks.map((x) => x.flags & DONE)).toEqual([...chunks.slice(1).map(() => 0), DONE]); // reply.structured-chunks
  for (const x of chunks) {
    expect(x.cookie).toBe(c); // reply.cookie-echo
    expect(x.magic).toBe(m === 'extended' ? EXTENDED_MAGIC : STRUCTURED_MAGIC); // reply.negotiated-mode
    if (m === 'extended') expect(x.requestOffset).toBe(BigInt(requestOffset));
    if (x.type === 0) expect(x.payload).toHaveLength(0); // NONE only with DONE and length 0
  }
}

describe('structured reply forms (properties)', () => {
  it('replyRead: one DONE chunk last; chunks tile the range in order without overlap', () => {
    run(
      'replyRead',
      fc.property(mode, cookie, offset, fc.array(segment, { maxLength: 8 }), (m, c, off, segs) => {
        const chunks = parseChunks(replyRead(m, c, off, segs));
        checkCommon(chunks, m, c, off);
        const total = segs.reduce((a, s) => a + segLength(s), 0);
        if (total === 0) {
          expect(chunks.map((x) => x.type)).toEqual([0]);
          return;
        }
        let at = off;
        const zeroes = segs.flatMap((s) => ('data' in s ? [s.data] : [Buffer.alloc(s.hole)]));
        const content: Buffer[] = [];
        for (const x of chunks) {
          expect([1, 2]).toContain(x.type);
          expect(Number(x.payload.readBigUInt64BE(0))).toBe(at); // contiguous: no gap, no overlap
          const len = x.type === 1 ? x.payload.length - 8 : x.payload.readUInt32BE(8);
          expect(len).toBeGreaterThan(0);
          content.push(x.type === 1 ? x.payload.subarray(8) : Buffer.alloc(len));
          at += len;
        }
        expect(at).toBe(off + total); // covers the whole range
        expect(Buffer.concat(content).equals(Buffer.concat(zeroes))).toBe(true);
      }),
    );
  });

  it('reply.df-one-chunk: replyRead with DF: exactly one OFFSET_DATA chunk holding all the bytes', () => {
    run(
      'replyRead(df)',
      fc.property(
        mode,
        cookie,
        offset,
        // A DF read of length 0 is unspecified (transmission.zero-length): at least one byte here.
        fc.array(segment, { maxLength: 6 }).filter((segs) => segs.some((s) => segLength(s) > 0)),
        (m, c, off, segs) => {
          const chunks = parseChunks(replyRead(m, c, off, segs, true));
          checkCommon(chunks, m, c, off);
          expect(chunks).toHaveLength(1);
          expect(chunks[0]!.type).toBe(1);
          expect(Number(chunks[0]!.payload.readBigUInt64BE(0))).toBe(off);
          expect(chunks[0]!.payload.length - 8).toBe(segs.reduce((a, s) => a + segLength(s), 0));
        },
      ),
    );
  });

  it('reply.simple-read: replyRead simple: header then exactly Σ segment bytes', () => {
    run(
      'replyRead(simple)',
      fc.property(cookie, offset, fc.array(segment, { maxLength: 6 }), (c, off, segs) => {
        const r = parseSimple(replyRead('simple', c, off, segs));
        expect(r.error).toBe(0);
        expect(r.cookie).toBe(c);
        expect(r.data.equals(Buffer.concat(segs.map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole)))))).toBe(true);
      }),
    );
  });

  it('reply.block-status-chunks: replyBlockStatus: one BLOCK_STATUS chunk per context, DONE on the last', () => {
    const extents = fc.array(fc.record({ length: fc.integer({ min: 1, max: 0xffffffff }), flags: fc.nat({ max: 3 }) }), { minLength: 1, maxLength: 5 });
    run(
      'replyBlockStatus',
      fc.property(mode, cookie, offset, fc.array(fc.record({ id: fc.nat(), extents }), { maxLength: 4 }), (m, c, off, contexts) => {
        const chunks = parseChunks(replyBlockStatus(m, c, off, contexts));
        checkCommon(chunks, m, c, off);
        if (contexts.length === 0) {
          expect(chunks.map((x) => x.type)).toEqual([0]);
          return;
        }
        expect(chunks).toHaveLength(contexts.length);
        chunks.forEach((x, i) => {
          const ctx = contexts[i]!;
          expect(x.type).toBe(m === 'extended' ? 6 : 5);
          expect(x.payload.readUInt32BE(0)).toBe(ctx.id);
          if (m === 'extended') {
            expect(x.payload.readUInt32BE(4)).toBe(ctx.extents.length);
            ctx.extents.forEach((e, j) => {
              expect(Number(x.payload.readBigUInt64BE(8 + 16 * j))).toBe(e.length);
              expect(Number(x.payload.readBigUInt64BE(16 + 16 * j))).toBe(e.flags);
            });
          } else {
            expect(x.payload).toHaveLength(4 + 8 * ctx.extents.length);
            ctx.extents.forEach((e, j) => {
              expect(x.payload.readUInt32BE(4 + 8 * j)).toBe(e.length);
              expect(x.payload.readUInt32BE(8 + 8 * j)).toBe(e.flags);
            });
          }
        });
      }),
    );
  });

  it('replyError: one ERROR chunk with DONE, the errno and a bounded message', () => {
    const errno = fc.constantFrom(1, 5, 12, 22, 28, 75, 95, 108);
    run(
      'replyError',
      fc.property(mode, cookie, offset, fc.nat({ max: 8 }), errno, fc.option(fc.string({ maxLength: 5000, unit: 'binary' }), { nil: undefined }), (m, c, off, type, e, msg) => {
        const chunks = parseChunks(replyError(m, c, type, e, msg, off));
        checkCommon(chunks, m, c, off);
        expect(chunks).toHaveLength(1);
        const x = chunks[0]!;
        expect(x.type).toBe(0x8001);
        expect(x.payload.readUInt32BE(0)).toBe(e);
        const ml = x.payload.readUInt16BE(4);
        expect(ml).toBeLessThanOrEqual(4096); // general.string-limits
        expect(x.payload).toHaveLength(6 + ml);
        expect(x.payload.subarray(6).includes(0)).toBe(false);
      }),
    );
  });
});
