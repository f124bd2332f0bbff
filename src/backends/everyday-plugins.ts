/**
 * The everyday test backends as command-line plugins, with nbdkit's names
 * and keys: `null [size=]SIZE`, `zero`, `pattern [size=]SIZE`, `data
 * [data=]EXPR | raw=… | base64=… [size=SIZE]`, `sparse-random [size=]SIZE
 * [seed=N] [percent=N] [runlength=N] [random-content=BOOL]`.
 */
import type { BackendPlugin } from '../plugins/registry.js';
import { ParamError } from '../plugins/params.js';
import { nullBackend, patternBackend, zeroBackend } from './synthetic.js';
import { dataBackend } from './data.js';
import { DataFormatError, DATA_MAX_BYTES } from './data-format.js';
import { sparseRandomBackend } from './sparse-random.js';
import { ALLOCATOR_PARAM } from './allocator-param.js';

export const nullPlugin: BackendPlugin = {
  name: 'null',
  summary: 'zeroes; writes are discarded (nbdkit null)',
  magic: 'size',
  params: [{ name: 'size', kind: 'size', summary: 'export size (default 0)' }],
  create: async (p, ctx) => nullBackend({ size: (p.size as number | undefined) ?? 0, readOnly: ctx.readOnly }),
};

export const zeroPlugin: BackendPlugin = {
  name: 'zero',
  summary: 'an empty (0-byte) read-only disk (nbdkit zero)',
  params: [],
  create: async () => zeroBackend(),
};

export const patternPlugin: BackendPlugin = {
  name: 'pattern',
  summary: 'read-only; each 8-byte word is its offset, big-endian (nbdkit pattern)',
  magic: 'size',
  params: [{ name: 'size', kind: 'size', summary: 'export size', required: true }],
  create: async (p) => patternBackend({ size: p.size as number }),
};

export const dataPlugin: BackendPlugin = {
  name: 'data',
  summary: 'an image written inline, writable in memory (nbdkit data)',
  magic: 'data',
  params: [
    { name: 'data', kind: 'string', summary: "nbdkit's data format: bytes, @OFFSET, ( … )*N, \"strings\", <FILE …" },
    { name: 'raw', kind: 'string', summary: 'the bytes of this string' },
    { name: 'base64', kind: 'string', summary: 'base64-encoded bytes' },
    { name: 'size', kind: 'size', summary: 'truncate or extend to this size (default: where the data ends)' },
    { name: 'data-max', kind: 'size', summary: `most bytes the data may expand to (default ${DATA_MAX_BYTES / 2 ** 30}G)` },
    ALLOCATOR_PARAM,
  ],
  create: async (p, ctx) => {
    try {
      return dataBackend({
        data: p.data as string | undefined,
        raw: p.raw as string | undefined,
        base64: p.base64 as string | undefined,
        size: p.size as number | undefined,
        maxBytes: p['data-max'] as number | undefined,
        readOnly: ctx.readOnly,
      });
    } catch (e) {
      // A mistake in the parameters (not a bug): reported like any other bad key=value.
      if (e instanceof DataFormatError || e instanceof RangeError) throw new ParamError(e.message);
      throw e;
    }
  },
};

export const sparseRandomPlugin: BackendPlugin = {
  name: 'sparse-random',
  summary: 'sparse disk of seeded random data; writes must match (nbdkit sparse-random)',
  magic: 'size',
  params: [
    { name: 'size', kind: 'size', summary: 'export size', required: true },
    { name: 'seed', kind: 'integer', summary: 'random seed (default: random, logged)' },
    { name: 'percent', kind: 'number', summary: 'percentage of the disk that is data (default 10)' },
    { name: 'runlength', kind: 'size', summary: 'average length of a data run (default 16M)' },
    { name: 'random-content', kind: 'boolean', summary: 'every byte random, not one byte per block (default false)' },
  ],
  create: async (p, ctx) => {
    try {
      const backend = sparseRandomBackend({
        size: p.size as number,
        seed: p.seed as number | undefined,
        percent: p.percent as number | undefined,
        runlength: p.runlength as number | undefined,
        randomContent: p['random-content'] as boolean | undefined,
        logger: ctx.logger,
      });
      // A random seed is worth knowing: it reproduces the disk.
      if (p.seed === undefined) ctx.logger.info?.(`sparse-random: seed=${backend.seed}`);
      return ctx.readOnly ? { ...backend, readOnly: true } : backend;
    } catch (e) {
      if (e instanceof RangeError) throw new ParamError(e.message);
      throw e;
    }
  },
};
