/**
 * checkFor keeps the tables it compiled, keyed by what a table depends on, so connections that negotiated
 * the same share one. Here each field of CheckedExport is changed alone, after the base export's table was
 * compiled (and kept): the table returned must answer a request that tells the two apart differently, as a
 * table compiled for it alone does. A key that left a field out would return the base export's table.
 */
import { describe, expect, it } from 'vitest';
import { CMD, CMD_FLAG, FLAG } from '../../../src/protocol/constants.js';
import { checkFor, type CheckedExport } from '../../../src/machines/request-rules.js';
import { request } from './support.js';

const MiB = 1 << 20;
const base: CheckedExport = {
  size: MiB,
  flags: FLAG.NBD_FLAG_HAS_FLAGS | FLAG.NBD_FLAG_SEND_FLUSH | FLAG.NBD_FLAG_SEND_FUA | FLAG.NBD_FLAG_SEND_DF,
  minimumBlock: 1,
  maximumBlock: 64 * 1024,
  maxPayload: 256 * 1024,
  structuredReplies: true,
  extendedHeaders: false,
  metaContextIds: [1],
};

const codeOf = (c: CheckedExport, frame: ReturnType<typeof request>) => checkFor(c)(frame)?.code ?? null;

// One change per field of CheckedExport, and a request the base export and the changed one answer differently.
const CASES: ReadonlyArray<[keyof CheckedExport, Partial<CheckedExport>, ReturnType<typeof request>]> = [
  ['size', { size: 2 * MiB }, request({ type: CMD.NBD_CMD_READ, offset: MiB, length: 512 })],
  ['flags', { flags: base.flags | FLAG.NBD_FLAG_READ_ONLY }, request({ type: CMD.NBD_CMD_WRITE, offset: 0, length: 512, payload: Buffer.alloc(512) })],
  ['minimumBlock', { minimumBlock: 512 }, request({ type: CMD.NBD_CMD_READ, offset: 1, length: 1 })],
  ['maximumBlock', { maximumBlock: 128 * 1024 }, request({ type: CMD.NBD_CMD_READ, offset: 0, length: 128 * 1024, flags: CMD_FLAG.NBD_CMD_FLAG_DF })],
  ['maxPayload', { maxPayload: 32 * 1024 }, request({ type: CMD.NBD_CMD_READ, offset: 0, length: 64 * 1024 })],
  ['structuredReplies', { structuredReplies: false }, request({ type: CMD.NBD_CMD_BLOCK_STATUS, offset: 0, length: 512 })],
  ['extendedHeaders', { extendedHeaders: true }, request({ type: CMD.NBD_CMD_READ, offset: 0, length: 512, flags: CMD_FLAG.NBD_CMD_FLAG_PAYLOAD_LEN })],
  ['metaContextIds', { metaContextIds: [] }, request({ type: CMD.NBD_CMD_BLOCK_STATUS, offset: 0, length: 512 })],
];

describe('checkFor: kept tables are keyed by every field they depend on', () => {
  it('covers every field of CheckedExport', () => {
    expect(new Set(CASES.map(([field]) => field))).toEqual(new Set(Object.keys(base)));
  });
  for (const [field, change, frame] of CASES) {
    it(`a different ${field} gets its own table`, () => {
      const before = codeOf(base, frame);
      const changed = { ...base, ...change };
      const after = codeOf(changed, frame);
      expect(after).not.toBe(before);
      // The same answers again from the kept tables, and the same table for an equal export.
      expect(codeOf(base, frame)).toBe(before);
      expect(codeOf({ ...changed }, frame)).toBe(after);
      expect(checkFor({ ...base })).toBe(checkFor(base));
    });
  }
});
