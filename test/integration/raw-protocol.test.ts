/**
 * Protocol paths no installed client exercises, driven byte by byte over a
 * real UNIX socket: the kernel client's way in (EXPORT_NAME, with and
 * without fixed newstyle / NO_ZEROES, simple replies), the experimental
 * extended headers end to end (libnbd 1.14 and qemu 7.2 predate them),
 * and a first request pipelined in the same segment as NBD_OPT_GO.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import {
  CHUNK,
  DONE,
  W,
  decodeBlockStatusExt,
  decodeError,
  decodeOffsetData,
  encodeClientFlags,
  encodeExtendedRequest,
  encodeInfoGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
} from '../helpers/wire.js';
import { RawClient } from './raw-client.js';
import { startServer, type Running } from './harness.js';

const OPT = { EXPORT_NAME: 1, GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11 };
const INFO_BLOCK_SIZE = 3;
const DF = 1 << 2;
const NBD_EOVERFLOW = 75;
const REP = { ACK: 1, INFO: 3, META_CONTEXT: 4 };
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, BLOCK_STATUS: 7 };
const PAYLOAD_LEN = 1 << 5;
const SIZE = 8 * 1024 * 1024;

/** Read one option reply (20-byte header + data). */
async function optionReply(c: RawClient): Promise<{ option: number; type: number; data: Buffer }> {
  const h = await c.read(20);
  expect(h.readBigUInt64BE(0)).toBe(W.REP_MAGIC);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: Buffer.from(await c.read(h.readUInt32BE(16))) };
}

/** Read replies to the end of GO / SET_META_CONTEXT (until the ACK). */
async function untilAck(c: RawClient) {
  const got = [];
  for (;;) {
    const r = await optionReply(c);
    got.push(r);
    if (r.type === REP.ACK || r.type & 0x80000000) return got;
  }
}

/** One extended reply chunk (32-byte header + payload). */
async function extendedChunk(c: RawClient) {
  const h = await c.read(32);
  expect(h.readUInt32BE(0)).toBe(W.EXTENDED_REPLY_MAGIC);
  return {
    flags: h.readUInt16BE(4),
    type: h.readUInt16BE(6),
    cookie: h.readBigUInt64BE(8),
    offset: h.readBigUInt64BE(16),
    payload: Buffer.from(await c.read(Number(h.readBigUInt64BE(24)))),
  };
}

/** One structured (20-byte header) or extended (32-byte header) reply chunk. */
async function replyChunk(c: RawClient, extended: boolean) {
  if (extended) return extendedChunk(c);
  const h = await c.read(20);
  expect(h.readUInt32BE(0)).toBe(W.STRUCTURED_REPLY_MAGIC);
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), offset: 0n, payload: Buffer.from(await c.read(h.readUInt32BE(16))) };
}

/** The chunks of one reply, up to the one flagged DONE. */
async function replyChunks(c: RawClient, extended: boolean) {
  const got = [];
  for (;;) {
    const ch = await replyChunk(c, extended);
    got.push(ch);
    if (ch.flags & DONE) return got;
  }
}

describe('raw protocol paths over a real socket', () => {
  let srv: Running;
  beforeAll(async () => {
    srv = await startServer({
      exports: [
        { name: 'disk', backend: memoryBackend({ size: SIZE }) },
        { name: 'ext', backend: memoryBackend({ size: SIZE }) },
        { name: 'fresh', backend: memoryBackend({ size: SIZE }) },
      ],
    });
  });
  afterAll(() => srv?.close());

  for (const clientFlags of [0, 1, 3]) {
    it(`EXPORT_NAME with client flags ${clientFlags}: ${clientFlags & 2 ? '10' : '134'}-byte reply, then simple replies and DISC`, async () => {
      const c = await RawClient.connect({ path: srv.socket });
      try {
        expect((await c.readGreeting()) & 3).toBe(3);
        await c.write(Buffer.concat([encodeClientFlags(clientFlags), encodeOption(OPT.EXPORT_NAME, Buffer.from('disk'))]));
        // size u64 · flags u16 · 124 zero bytes unless NO_ZEROES was echoed (handshake.no-zeroes).
        const withZeroes = (clientFlags & 2) === 0;
        const reply = await c.read(withZeroes ? 134 : 10);
        expect(reply.readBigUInt64BE(0)).toBe(BigInt(SIZE));
        const flags = reply.readUInt16BE(8);
        expect(flags & 1).toBe(1); // HAS_FLAGS
        expect(flags & 0x80).toBe(0); // no SEND_DF without structured replies
        if (withZeroes) expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
        const data = Buffer.alloc(4096, 0x5a + clientFlags);
        await c.write(
          Buffer.concat([
            encodeRequest({ flags: 0, type: CMD.WRITE, cookie: 11n, offset: 4096 * clientFlags, length: 4096 }, data),
            encodeRequest({ flags: 0, type: CMD.FLUSH, cookie: 12n, offset: 0, length: 0 }),
          ]),
        );
        const r1 = await c.readSimpleReply();
        const r2 = await c.readSimpleReply();
        expect([r1, r2].sort((a, b) => Number(a.cookie - b.cookie))).toEqual([
          { error: 0, cookie: 11n },
          { error: 0, cookie: 12n },
        ]);
        await c.write(encodeRequest({ flags: 0, type: CMD.READ, cookie: 13n, offset: 4096 * clientFlags, length: 4096 }));
        expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 13n });
        expect((await c.read(4096)).equals(data)).toBe(true);
        // Out of range: simple error reply, no data (reply.simple-read, transmission.out-of-bounds).
        await c.write(encodeRequest({ flags: 0, type: CMD.READ, cookie: 14n, offset: SIZE, length: 512 }));
        expect(await c.readSimpleReply()).toEqual({ error: 22, cookie: 14n });
        // DISC: no reply, the server closes (transmission.disc-drains).
        await c.write(encodeRequest({ flags: 0, type: CMD.DISC, cookie: 15n, offset: 0, length: 0 }));
        await c.expectClosedWithin(2000);
      } finally {
        c.destroy();
      }
    });
  }

  it('option.export-name-terminates: EXPORT_NAME for an unknown export: the connection is dropped without a reply', async () => {
    const c = await RawClient.connect({ path: srv.socket });
    try {
      await c.readGreeting();
      await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.EXPORT_NAME, Buffer.from('nope'))]));
      await c.expectClosedWithin(2000);
      await expect(c.read(1)).rejects.toThrow(/closed/);
    } finally {
      c.destroy();
    }
  });

  it('extended headers end to end: 32-byte requests, extended chunks only, BLOCK_STATUS_EXT', async () => {
    const c = await RawClient.connect({ path: srv.socket });
    try {
      await c.readGreeting();
      await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.EXTENDED_HEADERS)]));
      expect(await optionReply(c)).toMatchObject({ option: OPT.EXTENDED_HEADERS, type: REP.ACK });
      await c.write(encodeOption(OPT.SET_META_CONTEXT, encodeMetaContextData('ext', ['base:allocation'])));
      const meta = await untilAck(c);
      expect(meta.map((r) => r.type)).toEqual([REP.META_CONTEXT, REP.ACK]);
      const contextId = meta[0]!.data.readUInt32BE(0);
      expect(meta[0]!.data.subarray(4).toString()).toBe('base:allocation');
      await c.write(encodeOption(OPT.GO, encodeInfoGoData('ext', [])));
      const go = await untilAck(c);
      expect(go.at(-1)!.type).toBe(REP.ACK);
      // Pipelined: a WRITE with PAYLOAD_LEN, a READ of it, a BLOCK_STATUS, a FLUSH.
      const payload = Buffer.alloc(64 * 1024, 0xc3);
      await c.write(
        Buffer.concat([
          encodeExtendedRequest({ flags: PAYLOAD_LEN, type: CMD.WRITE, cookie: 1n, offset: 1 << 20, length: payload.length }, payload),
          encodeExtendedRequest({ flags: 0, type: CMD.READ, cookie: 2n, offset: 1 << 20, length: payload.length }),
          encodeExtendedRequest({ flags: 0, type: CMD.BLOCK_STATUS, cookie: 3n, offset: 0, length: 2 << 20 }),
          encodeExtendedRequest({ flags: 0, type: CMD.FLUSH, cookie: 4n, offset: 0, length: 0 }),
          // A small READ inside the written range (its reply is staged by copy, the 64 KiB one by reference).
          encodeExtendedRequest({ flags: 0, type: CMD.READ, cookie: 6n, offset: (1 << 20) + 4096, length: 4096 }),
        ]),
      );
      const byCookie = new Map<bigint, Array<Awaited<ReturnType<typeof extendedChunk>>>>();
      let done = 0;
      while (done < 5) {
        const ch = await extendedChunk(c);
        byCookie.set(ch.cookie, [...(byCookie.get(ch.cookie) ?? []), ch]);
        if (ch.flags & DONE) done++;
      }
      // WRITE and FLUSH: a NONE chunk with DONE; the header echoes the request offset.
      expect(byCookie.get(1n)).toEqual([expect.objectContaining({ type: CHUNK.NONE, flags: DONE, offset: BigInt(1 << 20) })]);
      expect(byCookie.get(4n)).toEqual([expect.objectContaining({ type: CHUNK.NONE, flags: DONE })]);
      // READ: data chunks covering the range, DONE on the last.
      const read = byCookie.get(2n)!;
      expect(read.at(-1)!.flags & DONE).toBe(DONE);
      const bytes = Buffer.concat(read.filter((ch) => ch.type === CHUNK.OFFSET_DATA).map((ch) => decodeOffsetData(ch.payload).data));
      expect(bytes.equals(payload)).toBe(true);
      // Every chunk header of a reply echoes the request's offset (reply.extended-offset-echo); one OFFSET_DATA chunk each here.
      for (const [cookie, at] of [
        [2n, 1 << 20],
        [6n, (1 << 20) + 4096],
      ] as const) {
        const chunks = byCookie.get(cookie)!;
        expect(chunks).toEqual([expect.objectContaining({ type: CHUNK.OFFSET_DATA, flags: DONE, offset: BigInt(at) })]);
        expect(decodeOffsetData(chunks[0]!.payload).offset).toBe(BigInt(at));
      }
      expect(decodeOffsetData(byCookie.get(6n)![0]!.payload).data.equals(payload.subarray(4096, 8192))).toBe(true);
      // BLOCK_STATUS_EXT: a hole, the written 64 KiB as data, then a hole.
      const bs = byCookie.get(3n)!;
      expect(bs).toHaveLength(1);
      expect(bs[0]!.type).toBe(CHUNK.BLOCK_STATUS_EXT);
      const ext = decodeBlockStatusExt(bs[0]!.payload);
      expect(ext.contextId).toBe(contextId);
      expect(ext.extents.map((e) => [Number(e.length), Number(e.flags)])).toEqual([
        [1 << 20, 3],
        [64 * 1024, 0],
        [(1 << 20) - 64 * 1024, 3],
      ]);
      // A compact request after extended headers is a protocol violation: once a
      // 32-byte header's worth of bytes is in, its magic is wrong and the client is dropped.
      await c.write(Buffer.concat([encodeRequest({ flags: 0, type: CMD.READ, cookie: 5n, offset: 0, length: 512 }), Buffer.alloc(4)]));
      await c.expectClosedWithin(2000);
    } finally {
      c.destroy();
    }
  });

  it('transmission.write-payload-len: with extended headers, a WRITE without PAYLOAD_LEN is read as carrying its length of payload, served, and the stream stays in sync', async () => {
    const c = await RawClient.connect({ path: srv.socket });
    try {
      await c.readGreeting();
      await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.EXTENDED_HEADERS)]));
      expect(await optionReply(c)).toMatchObject({ type: REP.ACK });
      await c.write(encodeOption(OPT.GO, encodeInfoGoData('fresh', [])));
      expect((await untilAck(c)).at(-1)!.type).toBe(REP.ACK);
      const payload = Buffer.alloc(4096, 0x7e);
      await c.write(
        Buffer.concat([
          encodeExtendedRequest({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 8192, length: payload.length }, payload),
          encodeExtendedRequest({ flags: 0, type: CMD.READ, cookie: 2n, offset: 8192, length: payload.length }),
        ]),
      );
      expect(await extendedChunk(c)).toMatchObject({ type: CHUNK.NONE, flags: DONE, cookie: 1n });
      const read = await extendedChunk(c);
      expect(read).toMatchObject({ type: CHUNK.OFFSET_DATA, flags: DONE, cookie: 2n });
      expect(decodeOffsetData(read.payload).data.equals(payload)).toBe(true);
    } finally {
      c.destroy();
    }
  });

  it('option.go-starts-transmission: a request pipelined in the same segment as NBD_OPT_GO is served', async () => {
    const c = await RawClient.connect({ path: srv.socket });
    try {
      await c.readGreeting();
      await c.write(
        Buffer.concat([
          encodeClientFlags(3),
          encodeOption(OPT.GO, encodeInfoGoData('fresh', [])),
          encodeRequest({ flags: 0, type: CMD.READ, cookie: 99n, offset: 0, length: 512 }),
        ]),
      );
      expect((await untilAck(c)).at(-1)!.type).toBe(REP.ACK);
      expect(await c.readSimpleReply()).toEqual({ error: 0, cookie: 99n });
      expect((await c.read(512)).every((b) => b === 0)).toBe(true);
    } finally {
      c.destroy();
    }
  });
});

describe('reply.structured-chunks, reply.df-one-chunk: READ chunks stay within the advertised maximum payload', () => {
  const KiB = 1024;
  const MAX = 256 * KiB;
  let srv: Running;
  beforeAll(async () => {
    // The export advertises a 256 KiB maximum; the server serves READs up to maxPayload (1 MiB).
    srv = await startServer({ exports: [{ name: 'm', backend: memoryBackend({ size: 4 * 1024 * KiB }), blockSizes: { maximum: MAX } }], limits: { maxPayload: 1024 * KiB } });
  });
  afterAll(() => srv?.close());

  for (const extended of [false, true]) {
    it(`${extended ? 'extended headers' : 'structured replies'}: a 600 KiB READ comes in chunks of ≤ 256 KiB; with DF it is refused with EOVERFLOW; a 64 KiB DF READ is one chunk`, async () => {
      const c = await RawClient.connect({ path: srv.socket });
      try {
        await c.readGreeting();
        await c.write(Buffer.concat([encodeClientFlags(3), encodeOption(extended ? OPT.EXTENDED_HEADERS : OPT.STRUCTURED_REPLY)]));
        expect(await optionReply(c)).toMatchObject({ type: REP.ACK });
        await c.write(encodeOption(OPT.GO, encodeInfoGoData('m', [INFO_BLOCK_SIZE])));
        const go = await untilAck(c);
        const bs = go.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === INFO_BLOCK_SIZE)!.data;
        expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, MAX]);
        const request = (r: { flags: number; type: number; cookie: bigint; offset: number; length: number }, payload?: Buffer) =>
          extended ? encodeExtendedRequest({ ...r, flags: r.flags | (payload ? PAYLOAD_LEN : 0) }, payload) : encodeRequest(r, payload);
        // 600 KiB of data, written in pieces the client may send (≤ the maximum).
        const data = Buffer.alloc(600 * KiB);
        for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
        for (let at = 0, cookie = 1n; at < data.length; at += MAX, cookie++) {
          const piece = data.subarray(at, at + MAX);
          await c.write(request({ flags: 0, type: CMD.WRITE, cookie, offset: at, length: piece.length }, piece));
          const [ok] = extended ? await replyChunks(c, true) : [await c.readSimpleReply()];
          expect(ok).toMatchObject(extended ? { type: CHUNK.NONE } : { error: 0 });
        }
        await c.write(request({ flags: 0, type: CMD.READ, cookie: 10n, offset: 0, length: data.length }));
        const read = await replyChunks(c, extended);
        expect(read.every((ch) => ch.type === CHUNK.OFFSET_DATA && ch.cookie === 10n)).toBe(true);
        const parts = read.map((ch) => decodeOffsetData(ch.payload));
        expect(parts.map((p) => [Number(p.offset), p.data.length])).toEqual([
          [0, MAX],
          [MAX, MAX],
          [2 * MAX, 600 * KiB - 2 * MAX],
        ]);
        expect(Buffer.concat(parts.map((p) => p.data)).equals(data)).toBe(true);
        expect(read.map((ch) => ch.flags & DONE)).toEqual([0, 0, DONE]);
        // DF: too long for one chunk of at most the maximum: EOVERFLOW, no content chunk.
        await c.write(request({ flags: DF, type: CMD.READ, cookie: 11n, offset: 0, length: MAX + 512 }));
        const refused = await replyChunks(c, extended);
        expect(refused).toHaveLength(1);
        expect(refused[0]!.type).toBe(CHUNK.ERROR);
        expect(decodeError(refused[0]!.payload)).toEqual({ error: NBD_EOVERFLOW, message: expect.stringMatching(/^reply\.df-one-chunk: /) });
        // DF up to the maximum: one chunk.
        await c.write(request({ flags: DF, type: CMD.READ, cookie: 12n, offset: 4096, length: MAX }));
        const one = await replyChunks(c, extended);
        expect(one.map((ch) => [ch.type, ch.flags])).toEqual([[CHUNK.OFFSET_DATA, DONE]]);
        expect(decodeOffsetData(one[0]!.payload).data.equals(data.subarray(4096, 4096 + MAX))).toBe(true);
      } finally {
        c.destroy();
      }
    });
  }

  it('transmission.payload-too-large: with extended headers a WRITE payload over the advertised maximum is a hard disconnect (not read); compact headers serve it up to maxPayload', async () => {
    const payload = Buffer.alloc(MAX + 512, 0x5a);
    // Compact headers: the client broke the maximum it was told, the server still serves up to maxPayload (1 MiB).
    const sr = await RawClient.connect({ path: srv.socket });
    try {
      await sr.readGreeting();
      await sr.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.GO, encodeInfoGoData('m', [INFO_BLOCK_SIZE]))]));
      expect((await untilAck(sr)).at(-1)!.type).toBe(REP.ACK);
      await sr.write(encodeRequest({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: payload.length }, payload));
      expect(await sr.readSimpleReply()).toEqual({ error: 0, cookie: 1n });
    } finally {
      sr.destroy();
    }
    const eh = await RawClient.connect({ path: srv.socket });
    try {
      await eh.readGreeting();
      await eh.write(Buffer.concat([encodeClientFlags(3), encodeOption(OPT.EXTENDED_HEADERS)]));
      expect(await optionReply(eh)).toMatchObject({ type: REP.ACK });
      await eh.write(encodeOption(OPT.GO, encodeInfoGoData('m', [INFO_BLOCK_SIZE])));
      expect((await untilAck(eh)).at(-1)!.type).toBe(REP.ACK);
      // Up to the maximum: served.
      await eh.write(encodeExtendedRequest({ flags: PAYLOAD_LEN, type: CMD.WRITE, cookie: 2n, offset: 0, length: MAX }, payload.subarray(0, MAX)));
      expect(await replyChunks(eh, true)).toEqual([expect.objectContaining({ type: CHUNK.NONE, flags: DONE, cookie: 2n })]);
      // Over it: dropped without a reply, before the payload is read (only the header is sent here).
      await eh.write(encodeExtendedRequest({ flags: PAYLOAD_LEN, type: CMD.WRITE, cookie: 3n, offset: 0, length: MAX + 512 }));
      await eh.expectClosedWithin(2000);
      expect(srv.logs.some((l) => l.includes(`payload of ${MAX + 512} bytes exceeds ${MAX}`))).toBe(true);
    } finally {
      eh.destroy();
    }
  });
});
