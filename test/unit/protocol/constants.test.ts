/**
 * The constant tables against the spec values (doc/proto.md),
 * the derived name lookups, and the host errno mapping.
 */
import { ERRNO_SPEC } from '../../helpers/wire.js';
import { describe, expect, it } from 'vitest';
import {
  allBits,
  camelNames,
  CMD,
  CMD_FLAG,
  cmdName,
  ERRNO,
  errnoName,
  errnoValue,
  FLAG,
  flagNames,
  hostErrnoToNbd,
  infoName,
  isRepError,
  KNOWN_COMMANDS,
  KNOWN_OPTIONS,
  MAGIC,
  magicName,
  OPT,
  optName,
  REP,
  REPLY_TYPE,
  replyTypeName,
  repName,
  SIZE,
} from '../../../src/protocol/constants.js';

describe('tables match the spec (magics, options, commands, chunk types, errors)', () => {
  it('magics', () => {
    expect(MAGIC.NBDMAGIC).toBe(BigInt('0x' + Buffer.from('NBDMAGIC').toString('hex')));
    expect(MAGIC.IHAVEOPT).toBe(BigInt('0x' + Buffer.from('IHAVEOPT').toString('hex')));
    expect(MAGIC.NBD_REP_MAGIC).toBe(0x3e889045565a9n);
    expect(MAGIC.OLDSTYLE_MAGIC).toBe(0x420281861253n);
    expect([MAGIC.NBD_REQUEST_MAGIC, MAGIC.NBD_SIMPLE_REPLY_MAGIC, MAGIC.NBD_STRUCTURED_REPLY_MAGIC]).toEqual([0x25609513, 0x67446698, 0x668e33ef]);
    expect([MAGIC.NBD_EXTENDED_REQUEST_MAGIC, MAGIC.NBD_EXTENDED_REPLY_MAGIC]).toEqual([0x21e41c71, 0x6e8a278c]);
  });

  it('option codes 1–11 in spec order', () => {
    expect(Object.entries(OPT).map(([n, v]) => `${v}:${n}`)).toEqual([
      '1:NBD_OPT_EXPORT_NAME',
      '2:NBD_OPT_ABORT',
      '3:NBD_OPT_LIST',
      '4:NBD_OPT_PEEK_EXPORT',
      '5:NBD_OPT_STARTTLS',
      '6:NBD_OPT_INFO',
      '7:NBD_OPT_GO',
      '8:NBD_OPT_STRUCTURED_REPLY',
      '9:NBD_OPT_LIST_META_CONTEXT',
      '10:NBD_OPT_SET_META_CONTEXT',
      '11:NBD_OPT_EXTENDED_HEADERS',
    ]);
  });

  it('commands, flags, chunk types, errno values', () => {
    expect(Object.values(CMD)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(Object.values(CMD_FLAG)).toEqual([1, 2, 4, 8, 16, 32]);
    expect(Object.values(FLAG)).toEqual([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]);
    expect(REPLY_TYPE).toEqual({
      NBD_REPLY_TYPE_NONE: 0,
      NBD_REPLY_TYPE_OFFSET_DATA: 1,
      NBD_REPLY_TYPE_OFFSET_HOLE: 2,
      NBD_REPLY_TYPE_BLOCK_STATUS: 5,
      NBD_REPLY_TYPE_BLOCK_STATUS_EXT: 6,
      NBD_REPLY_TYPE_ERROR: 0x8001,
      NBD_REPLY_TYPE_ERROR_OFFSET: 0x8002,
    });
    expect(ERRNO).toEqual(ERRNO_SPEC);
    expect(SIZE).toMatchObject({ GREETING: 18, OPTION_HEADER: 16, OPTION_REPLY_HEADER: 20, REQUEST: 28, EXTENDED_REQUEST: 32, SIMPLE_REPLY: 16, STRUCTURED_REPLY: 20, EXTENDED_REPLY: 32, MAX_STRING: 4096 });
  });
});

describe('name lookups (derived reverse maps)', () => {
  it('known codes map to their spec names', () => {
    expect(optName(7)).toBe('NBD_OPT_GO');
    expect(optName(11)).toBe('NBD_OPT_EXTENDED_HEADERS');
    expect(repName(0x80000001)).toBe('NBD_REP_ERR_UNSUP');
    expect(repName(1)).toBe('NBD_REP_ACK');
    expect(cmdName(7)).toBe('NBD_CMD_BLOCK_STATUS');
    expect(replyTypeName(0x8002)).toBe('NBD_REPLY_TYPE_ERROR_OFFSET');
    expect(errnoName(28)).toBe('NBD_ENOSPC');
    expect(infoName(3)).toBe('NBD_INFO_BLOCK_SIZE');
    expect(magicName(0x25609513)).toBe('NBD_REQUEST_MAGIC');
    expect(magicName(0x49484156454f5054n)).toBe('IHAVEOPT');
  });

  it('unknown codes are named UNKNOWN(0x…)', () => {
    expect(optName(0x42)).toBe('UNKNOWN(0x42)');
    expect(cmdName(99)).toBe('UNKNOWN(0x63)');
    expect(repName(0x8000000b)).toBe('UNKNOWN(0x8000000b)');
    expect(replyTypeName(3)).toBe('UNKNOWN(0x3)');
    expect(magicName(0x12560953)).toBe('UNKNOWN(0x12560953)');
  });

  it('every table entry round-trips through its lookup', () => {
    for (const [n, v] of Object.entries(OPT)) expect(optName(v)).toBe(n);
    for (const [n, v] of Object.entries(REP)) expect(repName(v)).toBe(n);
    for (const [n, v] of Object.entries(CMD)) expect(cmdName(v)).toBe(n);
    for (const [n, v] of Object.entries(ERRNO)) expect(errnoName(v)).toBe(n);
    for (const [n, v] of Object.entries(MAGIC)) expect(magicName(v)).toBe(n);
  });

  it('flag helpers', () => {
    expect(flagNames(FLAG, 0x0005)).toEqual(['NBD_FLAG_HAS_FLAGS', 'NBD_FLAG_SEND_FLUSH']);
    expect(flagNames(CMD_FLAG, 0)).toEqual([]);
    expect(allBits(CMD_FLAG)).toBe(0x3f);
    expect(allBits(FLAG)).toBe(0x1fff);
  });

  it('sets and predicates', () => {
    expect([...KNOWN_OPTIONS].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(KNOWN_COMMANDS.has(8)).toBe(true);
    expect(KNOWN_COMMANDS.has(9)).toBe(false);
    expect(isRepError(REP.NBD_REP_ERR_TOO_BIG)).toBe(true);
    expect(isRepError(REP.NBD_REP_META_CONTEXT)).toBe(false);
  });

  it('errnoValue accepts short and NBD_ names', () => {
    expect(errnoValue('ENOSPC')).toBe(28);
    expect(errnoValue('NBD_EIO')).toBe(5);
    expect(errnoValue('ESHUTDOWN')).toBe(108);
  });
});

describe('hostErrnoToNbd (transmission.error-values)', () => {
  it.each([
    ['EROFS', 1],
    ['EPERM', 1],
    ['EACCES', 1],
    ['EIO', 5],
    ['ENOMEM', 12],
    ['EINVAL', 22],
    ['ENOSPC', 28],
    ['EDQUOT', 28],
    ['EFBIG', 28],
    ['ESHUTDOWN', 108],
  ] as const)('%s → %i', (code, nbd) => {
    expect(hostErrnoToNbd(code)).toBe(nbd);
  });

  it('ENOTSUP/EOPNOTSUPP only become NBD_ENOTSUP for FAST_ZERO; otherwise EINVAL', () => {
    expect(hostErrnoToNbd('ENOTSUP')).toBe(22);
    expect(hostErrnoToNbd('EOPNOTSUPP')).toBe(22);
    expect(hostErrnoToNbd('ENOTSUP', { fastZero: true })).toBe(95);
    expect(hostErrnoToNbd('EOPNOTSUPP', { fastZero: true })).toBe(95);
  });

  it('EOVERFLOW only for DF reads; otherwise EINVAL', () => {
    expect(hostErrnoToNbd('EOVERFLOW')).toBe(22);
    expect(hostErrnoToNbd('EOVERFLOW', { df: true })).toBe(75);
  });

  it('anything else (and no code at all) is EIO; the result is always in the error set of the spec', () => {
    expect(hostErrnoToNbd(undefined)).toBe(5);
    expect(hostErrnoToNbd('ECONNRESET')).toBe(5);
    expect(hostErrnoToNbd('EBADF')).toBe(5);
    const allowed = new Set(Object.values(ERRNO));
    for (const code of ['EAGAIN', 'ENOENT', 'EISDIR', 'ETIMEDOUT', '', 'eio']) expect(allowed.has(hostErrnoToNbd(code))).toBe(true);
  });
});

describe('camelNames: tables of camel-case names derived from the constants', () => {
  it('options as the frames name them, the withdrawn PEEK_EXPORT left out', () => {
    const names = camelNames(OPT, 'NBD_OPT_', ['NBD_OPT_PEEK_EXPORT']);
    expect([...names]).toEqual([
      [1, 'exportName'],
      [2, 'abort'],
      [3, 'list'],
      [5, 'starttls'],
      [6, 'info'],
      [7, 'go'],
      [8, 'structuredReply'],
      [9, 'listMetaContext'],
      [10, 'setMetaContext'],
      [11, 'extendedHeaders'],
    ]);
  });

  it('commands as the API names them (RequestType), DISC and RESIZE left out', () => {
    const names = camelNames(CMD, 'NBD_CMD_', ['NBD_CMD_DISC', 'NBD_CMD_RESIZE']);
    expect(Object.fromEntries(names)).toEqual({ 0: 'read', 1: 'write', 3: 'flush', 4: 'trim', 5: 'cache', 6: 'writeZeroes', 7: 'blockStatus' });
  });
});
