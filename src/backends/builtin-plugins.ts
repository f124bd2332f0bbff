/**
 * The memory and file backends as command-line plugins (`nbd-engine serve
 * memory 1G`, `nbd-engine serve file disk.img`), with nbdkit's keys.
 */
import type { BackendPlugin } from '../plugins/registry.js';
import { memoryBackend } from './memory.js';
import { fileBackend } from './file.js';
import { ALLOCATOR_PARAM } from './allocator-param.js';

export const memoryPlugin: BackendPlugin = {
  name: 'memory',
  summary: 'a sparse RAM disk (nbdkit memory)',
  magic: 'size',
  params: [{ name: 'size', kind: 'size', summary: 'export size (512M, 1G, 16T …)', required: true }, ALLOCATOR_PARAM],
  create: async (p, ctx) => memoryBackend({ size: p.size as number, readOnly: ctx.readOnly }),
};

export const filePlugin: BackendPlugin = {
  name: 'file',
  summary: 'a file or block device (nbdkit file)',
  magic: 'file',
  params: [
    { name: 'file', kind: 'path', summary: 'the file or device to serve', required: true },
    // Not nbdkit's: turns off the native sparse support (holes, trim, fast zeroing) for comparison.
    { name: 'native', kind: 'boolean', summary: 'use the native sparse support when built (default true)' },
  ],
  create: (p, ctx) =>
    fileBackend({ path: p.file as string, readOnly: ctx.readOnly, native: p.native as boolean | undefined, logger: ctx.logger }),
};
