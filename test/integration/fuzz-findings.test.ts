/**
 * Replies the hostile-stream fuzzer (test/hostile/fuzz.test.ts) found
 * malformed, pinned as regression tests over a real socket:
 * - extended headers: a refused request whose offset does not fit a
 *   JavaScript safe integer (≥ 2^53) must echo the offset exactly as sent
 *   in the reply chunk header, not a clamped number;
 * - structured replies: a zero-length READ with NBD_CMD_FLAG_DF is
 *   answered with NBD_REPLY_TYPE_NONE (an OFFSET_DATA chunk must carry at
 *   least one byte of data).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { CHUNK, DONE, W, encodeClientFlags, encodeExtendedRequest, encodeInfoGoData, encodeOption, encodeRequest } from '../helpers/wire.js';
import { RawClient, requestBytes } from './raw-client.js';
import { startServer, type Running } from './harness.js';

const OPT = { GO: 7, STRUCTURED_REPLY: 8, EXTENDED_HEADERS: 11 };
const READ = 0;
const FLAG_DF = 1 << 2;
const EINVAL = 22;

async function optionReplies(c: RawClient): Promise<number[]> {
  const types: number[] = [];
  for (;;) {
    const h = await c.read(20);
    expect(h.readBigUInt64BE(0)).toBe(W.REP_MAGIC);
    await c.read(h.readUInt32BE(16));
    const t = h.readUInt32BE(12);
    types.push(t);
    if (t === 1 || t & 0x80000000) return types;
  }
}

describe('fuzzer findings', () => {
  let srv: Running;
  beforeAll(async () => {
    const bytes = Buffer.alloc(1 << 20, 1);
    srv = await startServer({
      exports: [
        { name: '', backend: memoryBackend({ size: 1 << 20 }) },
        // A backend answering READs with one Buffer (the path that sent an empty OFFSET_DATA chunk).
        { name: 'plain', backend: { size: bytes.length, read: (o: number, l: number) => bytes.subarray(o, o + l) } },
      ],
    });
  });
  afterAll(() => srv.close());

  for (const offset of [1n << 53n, (1n << 63n) + 12345n, 0xffff_ffff_ffff_ffffn]) {
    it(`extended headers: a READ at offset ${offset} is refused and the chunk echoes that offset exactly`, async () => {
      const c = await RawClient.connect({ path: srv.socket });
      try {
        await c.readGreeting();
        await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.EXTENDED_HEADERS)]));
        expect(await optionReplies(c)).toEqual([1]);
        await c.write(encodeOption(OPT.GO, encodeInfoGoData('', [])));
        expect((await optionReplies(c)).at(-1)).toBe(1);
        const req = encodeExtendedRequest({ flags: 0, type: READ, cookie: 77n, offset: 0, length: 512 });
        req.writeBigUInt64BE(offset, 16);
        await c.write(req);
        const h = await c.read(32);
        expect(h.readUInt32BE(0)).toBe(W.EXTENDED_REPLY_MAGIC);
        expect(h.readUInt16BE(6)).toBe(CHUNK.ERROR);
        expect(h.readBigUInt64BE(8)).toBe(77n);
        expect(h.readBigUInt64BE(16)).toBe(offset);
        const payload = await c.read(Number(h.readBigUInt64BE(24)));
        expect(payload.readUInt32BE(0)).toBe(EINVAL);
      } finally {
        c.destroy();
      }
    });
  }

  for (const name of ['', 'plain'])
  it(`structured replies: a zero-length READ with DF gets one NONE chunk with DONE (export "${name}")`, async () => {
    const c = await RawClient.connect({ path: srv.socket });
    try {
      await c.readGreeting();
      await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.STRUCTURED_REPLY)]));
      expect(await optionReplies(c)).toEqual([1]);
      await c.write(encodeOption(OPT.GO, encodeInfoGoData(name, [])));
      expect((await optionReplies(c)).at(-1)).toBe(1);
      await c.write(Buffer.concat([encodeRequest({ flags: FLAG_DF, type: READ, cookie: 5n, offset: 4096, length: 0 }), encodeRequest({ flags: 0, type: READ, cookie: 6n, offset: 0, length: 1 })]));
      const h = await c.read(20);
      expect(h.readUInt32BE(0)).toBe(W.STRUCTURED_REPLY_MAGIC);
      expect({ flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), length: h.readUInt32BE(16) }).toEqual({ flags: DONE, type: CHUNK.NONE, cookie: 5n, length: 0 });
      // The stream stays in sync: the next reply parses.
      const h2 = await c.read(20);
      expect({ flags: h2.readUInt16BE(4), cookie: h2.readBigUInt64BE(8) }).toEqual({ flags: DONE, cookie: 6n });
      expect([CHUNK.OFFSET_DATA, CHUNK.OFFSET_HOLE]).toContain(h2.readUInt16BE(6));
    } finally {
      c.destroy();
    }
  });
});

describe('fuzzer findings: a refused request never strands the rest of its burst', () => {
  it('a READ far over the byte budget (refused) followed by small READs, then EOF: all answered, then closed', async () => {
    const srv2 = await startServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }] });
    try {
      const c = await RawClient.open({ path: srv2.socket });
      // 4 GiB − 1 counts against the 128 MiB budget until the machine refuses it (too long, past the end).
      c.send(Buffer.concat([requestBytes({ type: READ, offset: 0, length: 0xffffffff, cookie: 1n }), requestBytes({ type: READ, offset: 0, length: 512, cookie: 2n }), requestBytes({ type: READ, offset: 512, length: 512, cookie: 3n })]));
      const got = [await c.readSimpleReply(() => 0), await c.readSimpleReply((k) => (k === 1n ? 0 : 512)), await c.readSimpleReply((k) => (k === 1n ? 0 : 512))];
      expect(got.map((r) => [r.cookie, r.error === 0])).toEqual([
        [1n, false],
        [2n, true],
        [3n, true],
      ]);
      c.stream.end();
      await expect(c.readSimpleReply(() => 0)).rejects.toThrow(/closed/);
      c.destroy();
    } finally {
      await srv2.close();
    }
  });
});
