/**
 * The in-place READ reply fast path (encoder.writeReadReplyHeader and
 * ReplyWriter.writeRead) must put exactly the bytes of the general encoder
 * (replies.replyReadBuffer) on the wire, in every reply mode.
 */
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { READ_REPLY_HEADER_SIZE, writeReadReplyHeader } from '../../../src/protocol/encoder.js';
import { replyReadBuffer, type ReplyMode } from '../../../src/protocol/replies.js';
import { ReplyWriter } from '../../../src/transport/socket.js';
import { flat, parseTransmissionReplies } from '../../helpers/wire.js';

const MODES: ReplyMode[] = ['simple', 'structured', 'extended'];

describe('writeReadReplyHeader', () => {
  it('writes the general encoder’s bytes minus the data, for any cookie, offset and length', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...MODES),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 1, max: 1024 * 1024 }),
        fc.integer({ min: 0, max: 7 }),
        (mode, cookie, offset, length, at) => {
          const general = flat(replyReadBuffer(mode, cookie, offset, Buffer.alloc(length)));
          const buf = Buffer.alloc(at + 64, 0xaa);
          const n = writeReadReplyHeader(buf, at, mode, cookie, offset, length);
          expect(n).toBe(READ_REPLY_HEADER_SIZE[mode]);
          expect(general.length).toBe(n + length);
          expect(buf.subarray(at, at + n)).toEqual(general.subarray(0, n));
          // Nothing outside [at, at + n) was touched.
          expect(buf.subarray(0, at).every((b) => b === 0xaa)).toBe(true);
          expect(buf.subarray(at + n).every((b) => b === 0xaa)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});

/** Collect what a ReplyWriter puts on a stream. */
async function wireOf(fill: (w: ReplyWriter) => void): Promise<Buffer> {
  const sock = new PassThrough();
  const out: Buffer[] = [];
  sock.on('data', (b: Buffer) => out.push(b));
  const w = new ReplyWriter(sock, () => {});
  fill(w);
  await new Promise((r) => setImmediate(r));
  return Buffer.concat(out);
}

describe('ReplyWriter.writeRead', () => {
  for (const mode of MODES) {
    it(`${mode}: a burst of small and big READ replies is byte-identical to the general path, and parses`, async () => {
      const sizes = [1, 512, 4096, 16 * 1024, 16 * 1024 + 1, 300 * 1024, 4096];
      const datas = sizes.map((n, i) => Buffer.alloc(n, i + 1));
      const fast = await wireOf((w) => datas.forEach((d, i) => w.writeRead(mode, BigInt(i + 1), i * 1_000_000, d)));
      const general = await wireOf((w) => datas.forEach((d, i) => w.write(replyReadBuffer(mode, BigInt(i + 1), i * 1_000_000, d))));
      expect(fast.equals(general)).toBe(true);
      const reads = new Map(datas.map((d, i) => [BigInt(i + 1), d.length] as const));
      const replies = parseTransmissionReplies(fast, { structured: mode !== 'simple', extended: mode === 'extended', readLengths: reads });
      expect(replies).toHaveLength(datas.length);
    });
  }

  it('writes nothing after the writer was destroyed', async () => {
    const wire = await wireOf((w) => {
      w.destroy();
      w.writeRead('structured', 1n, 0, Buffer.alloc(10));
    });
    expect(wire.length).toBe(0);
  });
});
