/**
 * The data-path filters as command-line plugins (`--filter=cow`, …), with
 * nbdkit's parameter names where nbdkit has the same knob.
 */
import { ParamError, type Params } from '../plugins/params.js';
import type { FilterPlugin } from '../plugins/registry.js';
import { blocksizeFilter } from './blocksize.js';
import { cacheFilter } from './cache.js';
import { cowFilter } from './cow.js';
import { readaheadFilter } from './readahead.js';

/** nbdkit's `X-on-read=true|false|/PATH`: a boolean, or an absolute path that switches it on while it exists. */
function onRead(filter: string, key: string, p: Params): boolean | string | undefined {
  const v = p[key] as string | undefined;
  if (v === undefined) return undefined;
  const t = v.toLowerCase();
  if (['1', 'true', 'on', 'yes'].includes(t)) return true;
  if (['0', 'false', 'off', 'no'].includes(t)) return false;
  if (v.startsWith('/')) return v;
  throw new ParamError(`${filter}: ${key}=${v}: expected true, false or an absolute path`);
}

const num = (p: Params, key: string) => p[key] as number | undefined;

export const cowPlugin: FilterPlugin = {
  name: 'cow',
  readOnlyBelow: true,
  summary: 'writable copy-on-write overlay; the backend is never written (nbdkit cow)',
  params: [
    { name: 'cow-block-size', kind: 'size', summary: 'overlay block size, a power of 2 ≥ 4k (default 64k)' },
    { name: 'cow-file', kind: 'path', summary: 'keep the overlay in this new file (must not exist; deleted at exit) instead of memory' },
    { name: 'cow-on-read', kind: 'string', summary: 'true|false|/PATH: also keep blocks read from the backend (default false)' },
    { name: 'cow-on-cache', kind: 'boolean', summary: 'keep blocks named by CACHE requests in the overlay (default false)' },
    { name: 'cow-max-size', kind: 'size', summary: 'most bytes the overlay holds; writes beyond fail with ENOSPC (default 0: no limit)' },
  ],
  create: async (p) =>
    cowFilter({ blockSize: num(p, 'cow-block-size'), file: p['cow-file'] as string | undefined, onRead: onRead('cow', 'cow-on-read', p), onCache: p['cow-on-cache'] as boolean | undefined, maxSize: num(p, 'cow-max-size') }),
};

export const cachePlugin: FilterPlugin = {
  name: 'cache',
  summary: 'bounded in-memory LRU read cache, writethrough (nbdkit cache)',
  params: [
    { name: 'cache', kind: 'string', choices: ['writethrough'], summary: 'caching mode: writethrough only (the default)' },
    { name: 'cache-max-size', kind: 'size', summary: 'most bytes of data cached (default 64M)' },
    { name: 'cache-min-block-size', kind: 'size', summary: 'cache block size, a power of 2 ≥ 4k (default 64k)' },
    { name: 'cache-on-read', kind: 'string', summary: 'true|false|/PATH: keep what READs fetch (default true)' },
  ],
  create: async (p) =>
    cacheFilter({ mode: p.cache as 'writethrough' | undefined, maxSize: num(p, 'cache-max-size'), minBlockSize: num(p, 'cache-min-block-size'), onRead: onRead('cache', 'cache-on-read', p) }),
};

export const readaheadPlugin: FilterPlugin = {
  name: 'readahead',
  summary: 'per-connection read-ahead of sequential READs (nbdkit readahead)',
  params: [
    { name: 'readahead-min', kind: 'size', summary: 'first window (default 64k)' },
    { name: 'readahead-max', kind: 'size', summary: 'largest window, memory per connection (default 4M)' },
  ],
  create: async (p) => readaheadFilter({ min: num(p, 'readahead-min'), max: num(p, 'readahead-max') }),
};

export const blocksizePlugin: FilterPlugin = {
  name: 'blocksize',
  summary: "split and align requests to the backend's limits (nbdkit blocksize)",
  params: [
    { name: 'minblock', kind: 'size', summary: "alignment for the backend, power of 2 ≤ 64k (default: backend's minimum or 1)" },
    { name: 'maxdata', kind: 'size', summary: 'largest READ/WRITE passed on (default 64M or the backend maximum)' },
    { name: 'maxlen', kind: 'size', summary: 'largest TRIM/ZERO/CACHE/BLOCK_STATUS passed on (default 4G-1, aligned)' },
  ],
  create: async (p) => blocksizeFilter({ minblock: num(p, 'minblock'), maxdata: num(p, 'maxdata'), maxlen: num(p, 'maxlen') }),
};
