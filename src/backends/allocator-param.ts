import type { ParamSpec } from '../plugins/params.js';

/**
 * nbdkit's `allocator=` (memory, data), so its command lines work here.
 * sparse and zstd both keep unwritten space as holes, as our sparse store
 * does (zstd only compresses what is stored, which nbd-engine does not);
 * malloc is refused: it reports the whole disk as data, which ours cannot.
 */
export const ALLOCATOR_PARAM: ParamSpec = {
  name: 'allocator',
  kind: 'string',
  choices: ['sparse', 'zstd'],
  summary: "nbdkit's allocator: sparse (default) or zstd, both served by the sparse store (no compression)",
};
