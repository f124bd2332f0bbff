/**
 * Server frames read back from the encoders' bytes (src/inspect/trace-frames.ts):
 * every handshake reply and every reply chunk by its spec name, payloads as
 * their length (and a prefix only when asked), across buffer boundaries.
 */
import { describe, expect, it } from 'vitest';
import { handshakeFrame, replyFrames, clientFrame, jsonSafe } from '../../../src/inspect/trace-frames.js';
import { encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeOptionError, encodeRepServer, encodeExportNameReply, encodeSimpleReply } from '../../../src/protocol/encoder.js';
import { replyBlockStatus, replyError, replyRead } from '../../../src/protocol/replies.js';
import { CMD, FLAG, OPT } from '../../../src/protocol/constants.js';
import { chunksOf, flat } from '../../helpers/wire.js';

/** The same bytes in 3-byte pieces: nothing may depend on where buffers split. */
const shredded = (frame: readonly Buffer[]) => chunksOf(flat(frame), 3);

describe('handshake frames', () => {
  it('greeting, NBD_REP_INFO (EXPORT, BLOCK_SIZE), NBD_REP_SERVER, an error reply, the EXPORT_NAME reply', () => {
    expect(handshakeFrame([encodeGreeting()], 'greeting')).toEqual({ name: 'greeting', fields: { flags: ['NBD_FLAG_FIXED_NEWSTYLE', 'NBD_FLAG_NO_ZEROES'] } });
    expect(handshakeFrame(shredded(encodeInfoExport(OPT.NBD_OPT_GO, 2 ** 40, FLAG.NBD_FLAG_HAS_FLAGS | FLAG.NBD_FLAG_READ_ONLY)), 'x')).toEqual({
      name: 'NBD_REP_INFO',
      fields: { option: 'NBD_OPT_GO', info: 'NBD_INFO_EXPORT', size: 2 ** 40, flags: ['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_READ_ONLY'] },
    });
    expect(handshakeFrame(encodeInfoBlockSize(OPT.NBD_OPT_INFO, { minimum: 1, preferred: 4096, maximum: 1 << 25 }), 'x').fields).toEqual({
      option: 'NBD_OPT_INFO',
      info: 'NBD_INFO_BLOCK_SIZE',
      minimum: 1,
      preferred: 4096,
      maximum: 1 << 25,
    });
    expect(handshakeFrame(encodeRepServer(OPT.NBD_OPT_LIST, 'disk', 'a disk'), 'x')).toEqual({ name: 'NBD_REP_SERVER', fields: { option: 'NBD_OPT_LIST', name: 'disk', description: 'a disk' } });
    expect(handshakeFrame(encodeOptionError(OPT.NBD_OPT_GO, 'NBD_REP_ERR_UNKNOWN', 'no such export'), 'x')).toEqual({
      name: 'NBD_REP_ERR_UNKNOWN',
      fields: { option: 'NBD_OPT_GO', message: 'no such export' },
    });
    expect(handshakeFrame([encodeExportNameReply(512, FLAG.NBD_FLAG_HAS_FLAGS, true)], 'export reply (10 bytes)')).toEqual({
      name: 'exportNameReply',
      fields: { size: 512, flags: ['NBD_FLAG_HAS_FLAGS'], zeroes: false },
    });
  });
});

describe('reply frames', () => {
  const data = Buffer.from('0123456789abcdef');
  for (const mode of ['structured', 'extended'] as const) {
    it(`${mode}: a READ of data then a hole is one OFFSET_DATA and one OFFSET_HOLE chunk, DONE on the last; no data bytes`, () => {
      const chunks = replyFrames(shredded(replyRead(mode, 5n, 4096, [{ data }, { hole: 512 }])));
      expect(chunks.map((c) => c.name)).toEqual(['NBD_REPLY_TYPE_OFFSET_DATA', 'NBD_REPLY_TYPE_OFFSET_HOLE']);
      expect(chunks[0]).toMatchObject({ fields: { cookie: '5', flags: [], offset: 4096, dataLength: 16 }, payload: { length: 16 } });
      expect(chunks[0]!.payload).toEqual({ length: 16 });
      expect(chunks[1]).toMatchObject({ fields: { flags: ['NBD_REPLY_FLAG_DONE'], offset: 4112, holeSize: 512 } });
    });

    it(`${mode}: BLOCK_STATUS extents and an error chunk with its message`, () => {
      const [bs] = replyFrames(replyBlockStatus(mode, 6n, 0, [{ id: 1, extents: [{ length: 4096, flags: 3 }, { length: 8192, flags: 0 }] }]));
      expect(bs).toMatchObject({
        name: mode === 'extended' ? 'NBD_REPLY_TYPE_BLOCK_STATUS_EXT' : 'NBD_REPLY_TYPE_BLOCK_STATUS',
        fields: { contextId: 1, extentCount: 2, extents: [{ length: 4096, flags: 3 }, { length: 8192, flags: 0 }] },
      });
      expect(replyFrames(replyError(mode, 7n, CMD.NBD_CMD_READ, 22, 'past the end', 0))).toEqual([
        expect.objectContaining({ name: 'NBD_REPLY_TYPE_ERROR', fields: expect.objectContaining({ error: 'NBD_EINVAL', message: 'past the end' }) }),
      ]);
    });
  }

  it('a simple READ reply: the data as its length, and a hex prefix when asked', () => {
    expect(replyFrames(encodeSimpleReply(9n, 0, data))).toEqual([{ name: 'simpleReply', fields: { cookie: '9' }, payload: { length: 16 } }]);
    expect(replyFrames(shredded(encodeSimpleReply(9n, 0, data)), 4)[0]!.payload).toEqual({ length: 16, prefix: '30313233' });
    expect(replyFrames(encodeSimpleReply(9n, 5))).toEqual([{ name: 'simpleReply', fields: { cookie: '9', error: 'NBD_EIO' } }]);
  });
});

describe('client frames and JSON safety', () => {
  it('a WRITE request: command and flag names, cookie as a string, payload length and prefix', () => {
    const s = clientFrame(
      { kind: 'request', extended: false, flags: 1, type: CMD.NBD_CMD_WRITE, cookie: 2n ** 63n, offset: 0, length: 4, huge: false, payload: Buffer.from([1, 2, 3, 4]), payloadDiscarded: false },
      2,
    );
    expect(s).toEqual({ name: 'NBD_CMD_WRITE', fields: { cookie: '9223372036854775808', offset: 0, length: 4, flags: ['NBD_CMD_FLAG_FUA'] }, payload: { length: 4, prefix: '0102' } });
  });

  it('jsonSafe: bigints as strings, buffers as lengths, functions dropped, depth capped', () => {
    expect(jsonSafe({ a: 1n, b: Buffer.alloc(3), f: () => 1, d: { e: { f: { g: 1 } } } }, 3)).toEqual({ a: '1', b: { length: 3 }, d: { e: { f: '…' } } });
  });
});
