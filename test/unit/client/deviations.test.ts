/**
 * The client library against a scripted server that breaks the spec on
 * purpose: each deviation must be reported, with its rule ID, on the reply
 * (or option reply) and on the connection, and nothing may hang.
 */
import { describe, expect, it } from 'vitest';
import { CMD_FLAG, INFO, OPT, REP, REPLY_TYPE, type Deviation } from '../../../src/client/index.js';
import { encodeGreeting, encodeInfoExport, encodeOptionReply } from '../../../src/protocol/encoder.js';
import { at, chunk, goWith, scripted, serveUntilGo, simpleReply } from './fake-server.js';

const T = REPLY_TYPE;
const rulesOf = (ds: readonly Deviation[]) => ds.map((d) => d.rule);
const u32 = (...vs: number[]) => Buffer.concat(vs.map((v) => Buffer.from([v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255])));
const errPayload = (error: number, msg: string, declared = Buffer.byteLength(msg)) => {
  const b = Buffer.alloc(6);
  b.writeUInt32BE(error, 0);
  b.writeUInt16BE(declared, 4);
  return Buffer.concat([b, Buffer.from(msg)]);
};

describe('handshake deviations', () => {
  it('peer.greeting-magic and handshake.greeting-flags: a wrong magic and undefined flag bits', async () => {
    const { client } = await scripted(async (s) => {
      const g = encodeGreeting();
      g.writeUInt32BE(0x12345678, 8);
      g.writeUInt16BE(0x8003, 16);
      s.write(g);
    });
    const g = await client.greeting();
    expect(rulesOf(g.deviations)).toEqual(['peer.greeting-magic', 'handshake.greeting-flags']);
    expect(rulesOf(client.deviations)).toEqual(['peer.greeting-magic', 'handshake.greeting-flags']);
    expect(g.deviations[0]!.evidence).toHaveLength(16);
  });

  it('option.reply-header: an option reply naming another option; peer.option-reply-type: SERVER in answer to GO', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const o = await s.option();
      s.write(encodeOptionReply(OPT.NBD_OPT_LIST, REP.NBD_REP_ACK));
      const go = await s.option();
      s.write(encodeOptionReply(go.code, REP.NBD_REP_SERVER, Buffer.from([0, 0, 0, 0])), encodeInfoExport(go.code, 512, 1), encodeOptionReply(go.code, REP.NBD_REP_ACK));
      void o;
    });
    await client.handshake();
    const r = await client.structuredReply();
    expect(rulesOf(r.replies[0]!.deviations)).toEqual(['option.reply-header']);
    const go = await client.go('');
    expect(go.ok).toBe(true);
    expect(rulesOf(go.replies[0]!.deviations)).toEqual(['peer.option-reply-type']);
    expect(rulesOf(client.deviations)).toEqual(['option.reply-header', 'peer.option-reply-type']);
  });

  it('peer.option-reply-data and option.info-export: a short NBD_INFO_EXPORT, an ACK with data, no export info', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const info = await s.option();
      s.write(encodeOptionReply(info.code, REP.NBD_REP_INFO, Buffer.alloc(10)), encodeOptionReply(info.code, REP.NBD_REP_ACK, Buffer.from('x')));
      const go = await s.option();
      s.write(encodeOptionReply(go.code, REP.NBD_REP_ACK));
    });
    await client.handshake();
    const info = await client.info('', [INFO.NBD_INFO_NAME]);
    expect(rulesOf(info.replies.flatMap((r) => r.deviations))).toEqual(['peer.option-reply-data', 'peer.option-reply-data', 'option.info-export']);
    const go = await client.go('');
    expect(rulesOf(go.replies.at(-1)!.deviations)).toEqual(['option.info-export']);
  });

  it('peer.option-reply-type: an unknown reply type without the error bit; general.string-limits: an error text that is not UTF-8', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const a = await s.option();
      s.write(encodeOptionReply(a.code, 77), encodeOptionReply(a.code, REP.NBD_REP_ERR_UNSUP, Buffer.from([0xff, 0xfe])));
    });
    await client.handshake();
    const r = await client.option(OPT.NBD_OPT_STRUCTURED_REPLY);
    expect(r.map((x) => x.typeName)).toEqual(['UNKNOWN(0x4d)', 'NBD_REP_ERR_UNSUP']);
    expect(rulesOf(client.deviations)).toEqual(['peer.option-reply-type', 'general.string-limits']);
  });

  it('transmission.flags-advertised and option.block-size-constraints: flags without HAS_FLAGS, DF in simple mode, FAST_ZERO alone; block sizes that do not fit', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const o = await s.option();
      const bs = Buffer.concat([Buffer.from([0, 3]), u32(3, 256, 128)]);
      s.write(encodeInfoExport(o.code, 4096, 0), encodeOptionReply(o.code, REP.NBD_REP_INFO, bs), encodeOptionReply(o.code, REP.NBD_REP_ACK));
      const go = await s.option();
      s.write(encodeInfoExport(go.code, 4096, 1 | (1 << 7) | (1 << 11)), encodeOptionReply(go.code, REP.NBD_REP_ACK));
    });
    await client.handshake();
    const info = await client.info('', [INFO.NBD_INFO_BLOCK_SIZE]);
    expect(info.blockSize).toEqual({ minimum: 3, preferred: 256, maximum: 128 });
    expect(info.replies.flatMap((r) => r.deviations).map((d) => d.message)).toEqual([
      'transmission flags 0x0: NBD_FLAG_HAS_FLAGS is not set',
      'NBD_INFO_BLOCK_SIZE: minimum 3 is not a power of 2 up to 64 KiB',
      'NBD_INFO_BLOCK_SIZE: preferred 256 is not a power of 2 of at least max(minimum, 512)',
      'NBD_INFO_BLOCK_SIZE: maximum 128 is less than preferred 256',
    ]);
    const go = await client.go('', []);
    expect(go.replies[0]!.deviations.map((d) => d.message)).toEqual([
      'transmission flags 0x881: NBD_FLAG_SEND_DF without structured replies',
      'transmission flags 0x881: NBD_FLAG_SEND_FAST_ZERO without NBD_FLAG_SEND_WRITE_ZEROES',
    ]);
    expect(rulesOf(client.deviations)).toEqual([
      'transmission.flags-advertised',
      'option.block-size-constraints',
      'option.block-size-constraints',
      'option.block-size-constraints',
      'transmission.flags-advertised',
      'transmission.flags-advertised',
    ]);
  });

  it('option.meta-context-reply: SET_META_CONTEXT gives two contexts the same id', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const o = await s.option();
      const ctx = (name: string) => encodeOptionReply(o.code, REP.NBD_REP_META_CONTEXT, Buffer.concat([u32(3), Buffer.from(name)]));
      s.write(ctx('base:allocation'), ctx('qemu:dirty-bitmap:x'), encodeOptionReply(o.code, REP.NBD_REP_ACK));
    });
    await client.handshake();
    const r = await client.setMetaContext('', ['base:allocation', 'qemu:dirty-bitmap:x']);
    expect(rulesOf(client.deviations)).toEqual(['option.meta-context-reply']);
    expect(r.contexts).toHaveLength(2);
  });

  it('option.reply-header: a reply without the reply magic cannot be followed: the call fails with `desync`', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      await s.option();
      s.write(Buffer.alloc(20, 0xab));
    });
    await client.handshake();
    await expect(client.structuredReply()).rejects.toMatchObject({ code: 'desync' });
    expect(rulesOf(client.deviations)).toEqual(['option.reply-header']);
  });

  it('handshake.no-zeroes: non-zero padding after the EXPORT_NAME reply', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      await s.option();
      s.write(Buffer.from('00000000001000000001', 'hex'), Buffer.alloc(124, 1));
    });
    await client.greeting();
    client.sendClientFlags(1);
    const e = await client.exportName('');
    expect(e.bytes).toHaveLength(134);
    expect(rulesOf(client.deviations)).toEqual(['handshake.no-zeroes']);
  });
});

describe('handshake deviations (EXPORT_NAME, oldstyle)', () => {
  it('option.export-name-terminates: EXPORT_NAME answered with an error reply instead of a close; the call fails with `refused`', async () => {
    const { client } = await scripted(async (s) => {
      await s.greet();
      const o = await s.option();
      s.write(encodeOptionReply(o.code, REP.NBD_REP_ERR_UNKNOWN, Buffer.from('no such export')));
    });
    await client.handshake();
    await expect(client.exportName('nope')).rejects.toMatchObject({ code: 'refused' });
    expect(rulesOf(client.deviations)).toEqual(['option.export-name-terminates']);
    expect(client.deviations[0]!.evidence.subarray(20).toString()).toBe('no such export');
  });

  it('handshake.greeting-flags: an oldstyle greeting is read whole and reported (no option haggling possible)', async () => {
    const { client } = await scripted(async (s) => {
      const g = Buffer.alloc(152);
      g.writeBigUInt64BE(0x4e42444d41474943n, 0);
      g.writeBigUInt64BE(0x00420281861253n, 8);
      g.writeBigUInt64BE(1n << 20n, 16);
      s.write(g);
    });
    const g = await client.greeting();
    expect(g.oldstyle).toBe(true);
    expect(g.bytes).toHaveLength(152);
    expect(rulesOf(g.deviations)).toEqual(['handshake.greeting-flags']);
  });
});

/** A server that negotiates `mode`, then answers the first request with `reply(cookie, offset)`. */
async function transmit(mode: 'simple' | 'structured' | 'extended', reply: (cookie: bigint, offset: bigint) => Buffer[], after?: 'close') {
  const { client } = await scripted(async (s) => {
    await serveUntilGo(s);
    const r = await s.request(mode === 'extended');
    s.write(...reply(r.cookie, r.offset));
    if (after === 'close') s.end();
  });
  await goWith(client, mode);
  return client;
}

describe('transmission deviations', () => {
  it('peer.reply-magic: an unknown reply magic stops the connection; the request fails with `desync`', async () => {
    const c = await transmit('structured', () => [Buffer.from('deadbeef00000000000000000000000000000000', 'hex')]);
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'desync' });
    expect(rulesOf(c.deviations)).toEqual(['peer.reply-magic']);
    expect(c.deviations[0]!.evidence.subarray(0, 4).toString('hex')).toBe('deadbeef');
  });

  it('peer.unknown-cookie and reply.structured-chunks: a chunk for a cookie never sent, a chunk after DONE', async () => {
    const c = await transmit('structured', (cookie) => [
      chunk(cookie + 100n, T.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true }),
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(0, Buffer.alloc(512, 9)), { done: true }),
      chunk(cookie, T.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true }),
      simpleReply(cookie),
    ]);
    const r = await c.read(0, 512);
    expect(r.data).toEqual(Buffer.alloc(512, 9));
    expect(rulesOf(r.deviations)).toEqual([]);
    await expect.poll(() => rulesOf(c.deviations)).toEqual(['peer.unknown-cookie', 'reply.structured-chunks', 'reply.structured-chunks']);
  });

  it('reply.structured-chunks: DONE missing before the server closes', async () => {
    const c = await transmit('structured', (cookie) => [chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(0, Buffer.alloc(256)))], 'close');
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'closed' });
    expect(rulesOf(c.deviations)).toEqual(['reply.structured-chunks']);
  });

  it('reply.structured-chunks: overlapping data, data outside the request, a READ not covered', async () => {
    const c = await transmit('structured', (cookie, offset) => [
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(Number(offset), Buffer.alloc(256, 1))),
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_HOLE, at(Number(offset) + 128, u32(64))),
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(Number(offset) + 4096, Buffer.alloc(16))),
      chunk(cookie, T.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true }),
    ]);
    const r = await c.read(1024, 512);
    expect(r.deviations.map((d) => d.message.replace(/^.*?: /, ''))).toEqual([
      'data chunk [1152, 1216) overlaps an earlier one',
      'data chunk [5120, 5136) outside the request [1024, 1536)',
      'successful READ reply covers 320 of the 512 bytes asked for',
    ]);
    expect(rulesOf(r.deviations)).toEqual(['reply.structured-chunks', 'reply.structured-chunks', 'reply.structured-chunks']);
  });

  it('peer.chunk-payload and peer.error-value: an error chunk whose message length is wrong, an errno the spec lacks', async () => {
    const c = await transmit('structured', (cookie) => [chunk(cookie, T.NBD_REPLY_TYPE_ERROR, errPayload(99, 'oops', 10), { done: true })]);
    const r = await c.flush();
    expect(r.error).toBe(99);
    expect(rulesOf(r.deviations)).toEqual(['peer.error-value', 'peer.chunk-payload']);
    expect(rulesOf(c.deviations)).toEqual(rulesOf(r.deviations));
  });

  it('peer.chunk-payload: an OFFSET_HOLE of size 0', async () => {
    const c = await transmit('structured', (cookie) => [chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_HOLE, at(0, u32(0)), { done: true })]);
    const r = await c.read(0, 512);
    expect(rulesOf(r.deviations)).toEqual(['peer.chunk-payload', 'reply.structured-chunks']);
  });

  it('reply.negotiated-mode: a simple reply to a READ although structured replies were negotiated (the data is still read)', async () => {
    const c = await transmit('structured', (cookie) => [simpleReply(cookie), Buffer.alloc(512, 5)]);
    const r = await c.read(0, 512);
    expect(r.form).toBe('simple');
    expect(r.data).toEqual(Buffer.alloc(512, 5));
    expect(rulesOf(r.deviations)).toEqual(['reply.negotiated-mode']);
  });

  it('reply.negotiated-mode: a structured chunk on a connection without structured replies', async () => {
    const c = await transmit('simple', (cookie) => [chunk(cookie, T.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true })]);
    expect(rulesOf((await c.flush()).deviations)).toEqual(['reply.negotiated-mode']);
  });

  it('peer.unknown-chunk-type: an unknown type without the error bit; with the error bit it is an error, not a deviation', async () => {
    const c = await transmit('structured', (cookie) => [chunk(cookie, 0x0077, Buffer.alloc(3)), chunk(cookie, 0x8077, errPayload(5, 'bad'), { done: true })]);
    const r = await c.flush();
    expect(r.error).toBe(5);
    expect(r.errorMessage).toBe('bad');
    expect(rulesOf(r.deviations)).toEqual(['peer.unknown-chunk-type']);
  });

  it('reply.extended-offset-echo and reply.negotiated-mode: extended chunks with a wrong offset, a compact BLOCK_STATUS', async () => {
    const c = await transmit('extended', (cookie) => [
      chunk(cookie, T.NBD_REPLY_TYPE_BLOCK_STATUS, Buffer.concat([u32(1), u32(4096, 0)]), { extended: true, offset: 99n, done: true }),
    ]);
    const r = await c.blockStatus(0, 4096);
    expect(rulesOf(r.deviations)).toEqual(['reply.extended-offset-echo', 'reply.negotiated-mode']);
  });

  it('reply.block-status-chunks: an unselected context, a zero-length extent, several extents with REQ_ONE', async () => {
    const c = await transmit('structured', (cookie) => [
      chunk(cookie, T.NBD_REPLY_TYPE_BLOCK_STATUS, Buffer.concat([u32(7), u32(0, 0)])),
      chunk(cookie, T.NBD_REPLY_TYPE_BLOCK_STATUS, Buffer.concat([u32(1), u32(512, 0, 512, 1)]), { done: true }),
    ]);
    const r = await c.blockStatus(0, 4096, { flags: CMD_FLAG.NBD_CMD_FLAG_REQ_ONE });
    expect(rulesOf(r.deviations)).toEqual(['reply.block-status-chunks', 'reply.block-status-chunks', 'reply.block-status-chunks']);
    expect(r.blockStatus.map((b) => b.contextId)).toEqual([7, 1]);
  });

  it('reply.block-status-chunks: a successful BLOCK_STATUS answered with a simple reply', async () => {
    const c = await transmit('structured', (cookie) => [simpleReply(cookie)]);
    const r = await c.blockStatus(0, 4096);
    expect(r.form).toBe('simple');
    expect(rulesOf(r.deviations)).toEqual(['reply.block-status-chunks']);
  });

  it('reply.df-one-chunk: two data chunks for a READ with DF', async () => {
    const c = await transmit('structured', (cookie) => [
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(0, Buffer.alloc(256))),
      chunk(cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(256, Buffer.alloc(256)), { done: true }),
    ]);
    const r = await c.read(0, 512, { flags: CMD_FLAG.NBD_CMD_FLAG_DF });
    expect(rulesOf(r.deviations)).toEqual(['reply.df-one-chunk']);
  });

  it('reply.structured-chunks: a data chunk over the advertised maximum payload (a DF READ up to 64 KiB in one chunk is not one)', async () => {
    const { client: c } = await scripted(async (s) => {
      await s.greet();
      for (;;) {
        const o = await s.option();
        if (o.code === OPT.NBD_OPT_GO) {
          // The export advertises a 4 KiB maximum payload.
          s.write(encodeInfoExport(o.code, 1 << 20, 1 | (1 << 11)), encodeOptionReply(o.code, REP.NBD_REP_INFO, Buffer.concat([Buffer.from([0, 3]), u32(1, 4096, 4096)])), encodeOptionReply(o.code, REP.NBD_REP_ACK));
          break;
        }
        s.write(encodeOptionReply(o.code, REP.NBD_REP_ACK));
      }
      for (const length of [8192, 8192, 4096]) {
        const r = await s.request();
        s.write(chunk(r.cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(0, Buffer.alloc(length)), { done: true }));
      }
    });
    await c.handshake();
    await c.structuredReply();
    expect((await c.go('', [INFO.NBD_INFO_BLOCK_SIZE])).blockSize?.maximum).toBe(4096);
    const over = await c.read(0, 8192);
    expect(rulesOf(over.deviations)).toEqual(['reply.structured-chunks']);
    expect(over.deviations[0]!.message).toBe('NBD_CMD_READ cookie 1: data chunk of 8192 bytes, more than the advertised maximum payload 4096');
    expect(rulesOf((await c.read(0, 8192, { flags: CMD_FLAG.NBD_CMD_FLAG_DF })).deviations)).toEqual([]);
    expect(rulesOf((await c.read(0, 4096)).deviations)).toEqual([]);
  });

  it('peer.chunk-payload: a chunk longer than maxPayload gives the stream up (`desync`) instead of buffering it', async () => {
    const { client: c } = await scripted(
      async (s) => {
        await serveUntilGo(s);
        const r = await s.request();
        s.write(chunk(r.cookie, T.NBD_REPLY_TYPE_OFFSET_DATA, at(0, Buffer.alloc(2048)), { done: true }));
      },
      { maxPayload: 1024 },
    );
    await goWith(c);
    await expect(c.read(0, 2048)).rejects.toMatchObject({ code: 'desync' });
    expect(rulesOf(c.deviations)).toEqual(['peer.chunk-payload']);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  it('a cookie reused on purpose: both requests are in flight and take the replies for it in order', async () => {
    const { client: c } = await scripted(async (s) => {
      await serveUntilGo(s);
      const a = await s.request();
      const b = await s.request();
      s.write(simpleReply(a.cookie, 0), simpleReply(b.cookie, 5));
    });
    await goWith(c, 'simple');
    const [a, b] = [c.request({ type: 3, cookie: 5n }), c.request({ type: 3, cookie: 5n })];
    expect(c.inFlight).toBe(2);
    expect([(await a).error, (await b).error]).toEqual([0, 5]);
    expect(c.inFlight).toBe(0);
    expect(c.deviations).toEqual([]);
  });

  it('a reply that never comes: the request times out; its late reply is still checked, not taken for a stray', async () => {
    const { client: c } = await scripted(async (s) => {
      await serveUntilGo(s);
      const first = await s.request();
      const second = await s.request();
      s.write(chunk(first.cookie, 0x0077, Buffer.alloc(0), { done: true }), chunk(second.cookie, T.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true }));
    });
    await goWith(c);
    await expect(c.request({ type: 3, timeoutMs: 200 })).rejects.toMatchObject({ code: 'timeout' });
    expect(rulesOf((await c.flush()).deviations)).toEqual([]);
    expect(rulesOf(c.deviations)).toEqual(['peer.unknown-chunk-type']);
  });
});
