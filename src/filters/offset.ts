/**
 * The offset filter (nbdkit's `--filter=offset offset=N range=N`): serve a
 * byte range of the backend below as the whole export — a partition whose
 * place you know, one disk image inside a bigger file, a header skipped.
 *
 * `windowOf` is the shift both this filter and the partition filter apply:
 * every request's offset moves by the window's start, the export's size is
 * the window's length, and the server refuses requests past that size
 * before they reach here, so nothing outside the window is ever touched.
 */
import type { Backend } from '../api/backend.js';
import type { Filter } from '../api/filter.js';
import { layer } from '../api/filter.js';
import type { FilterPlugin } from '../plugins/registry.js';
import { check } from './util.js';

type Overrides = Parameters<typeof layer>[1];

/** `next` seen through the window [at, at + length): offsets shifted, size `length`. */
export function windowOf(next: Backend, at: number, length: number): Backend {
  const o: Overrides = { size: length, read: (off, len) => next.read(at + off, len) };
  // READs into lent buffers and zero-copy WRITEs stay what they are: only the offset changes.
  if (next.readInto) o.readInto = (off, target) => next.readInto!(at + off, target);
  if (next.write) o.write = (off, data, opts) => next.write!(at + off, data, opts);
  if (next.writev) o.writev = (off, parts, opts) => next.writev!(at + off, parts, opts);
  if (next.writeTargets) o.writeTargets = (off, len) => next.writeTargets!(at + off, len);
  if (next.trim) o.trim = (off, len, opts) => next.trim!(at + off, len, opts);
  if (next.zero) o.zero = (off, len, opts) => next.zero!(at + off, len, opts);
  if (next.cache) o.cache = (off, len) => next.cache!(at + off, len);
  // Extents are lengths from the requested offset, so they need no translation.
  if (next.extents) o.extents = (off, len, opts) => next.extents!(at + off, len, opts);
  return layer(next, o);
}

export interface OffsetFilterOptions {
  /** Where the window starts in the backend below, in bytes (default 0). */
  readonly offset?: number;
  /** The window's length (default: from `offset` to the end of the backend below). */
  readonly range?: number;
}

export function offsetFilter(options: OffsetFilterOptions = {}): Filter {
  const { offset = 0, range } = options;
  check(Number.isSafeInteger(offset) && offset >= 0, 'offset', `offset=${offset}: must be an integer ≥ 0`);
  check(range === undefined || (Number.isSafeInteger(range) && range >= 0), 'offset', `range=${range}: must be an integer ≥ 0`);
  return {
    name: 'offset',
    scope: 'shared',
    wrap(next) {
      const size = next.size;
      check(size !== undefined, 'offset', 'the backend below has no size');
      check(offset <= size!, 'offset', `offset=${offset} is beyond the end of the backend below (${size} bytes)`);
      const length = range ?? size! - offset;
      check(offset + length <= size!, 'offset', `offset=${offset} + range=${length} is beyond the end of the backend below (${size} bytes)`);
      // An unaligned window would make aligned requests unaligned below (as for a partition).
      const minimum = next.blockSizes?.minimum;
      check(minimum === undefined || minimum <= 1 || (offset % minimum === 0 && length % minimum === 0), 'offset', `offset=${offset} and range=${length} must be multiples of the backend's minimum block size ${minimum}`);
      return windowOf(next, offset, length);
    },
  };
}

export const offsetPlugin: FilterPlugin = {
  name: 'offset',
  summary: 'serve a byte range of the backend (nbdkit offset filter)',
  params: [
    { name: 'offset', kind: 'size', summary: 'where the range starts (default 0)' },
    { name: 'range', kind: 'size', summary: 'its length (default: to the end)' },
  ],
  create: async (p) => offsetFilter({ offset: p.offset as number | undefined, range: p.range as number | undefined }),
};
