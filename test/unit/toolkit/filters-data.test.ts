/**
 * The data-path filters' shared pieces and plugin descriptors, without a
 * socket: per-block locks run a block's changes one after another (and
 * different blocks' at once), read results with holes become zero-filled
 * buffers, and the command-line plugins use nbdkit's parameter names.
 */
import { describe, expect, it } from 'vitest';
import { BlockLocks, readBuffer } from '../../../src/plugins/common.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { readParams, ParamError } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { cacheFilter, cowFilter, layer, memoryBackend, readaheadFilter, type Backend } from '../../../src/index.js';

describe('BlockLocks', () => {
  it('runs holders of one block in order, each after the previous finished; other blocks do not wait', async () => {
    const locks = new BlockLocks();
    const log: string[] = [];
    let releaseFirst!: () => void;
    const first = locks.with(1, async () => {
      log.push('a start');
      await new Promise<void>((r) => (releaseFirst = r));
      log.push('a end');
    });
    const second = locks.with(1, () => void log.push('b'));
    const other = locks.with(2, () => void log.push('other'));
    await other;
    expect(log).toEqual(['a start', 'other']);
    releaseFirst();
    await Promise.all([first, second]);
    expect(log).toEqual(['a start', 'other', 'a end', 'b']);
  });

  it('releases the lock when the holder throws', async () => {
    const locks = new BlockLocks();
    await expect(locks.with(3, () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await locks.with(3, () => 42)).toBe(42);
  });
});

describe('readBuffer', () => {
  it('fills holes with zeroes and keeps data in place', () => {
    const out = readBuffer([{ data: Buffer.from([1, 2]) }, { hole: 3 }, { data: Buffer.from([9]) }], 6);
    expect([...out]).toEqual([1, 2, 0, 0, 0, 9]);
  });
});

describe('data filter plugins', () => {
  it('are registered with nbdkit\'s parameter names', async () => {
    const names = async (f: string) => (await FILTERS[f]!()).params.map((p) => p.name);
    expect(await names('cow')).toEqual(expect.arrayContaining(['cow-block-size', 'cow-on-read', 'cow-on-cache']));
    expect(await names('cache')).toEqual(expect.arrayContaining(['cache', 'cache-max-size', 'cache-min-block-size', 'cache-on-read']));
    expect(await names('blocksize')).toEqual(['minblock', 'maxdata', 'maxlen']);
    expect((await FILTERS.readahead!()).name).toBe('readahead');
  });

  it('cow-on-read takes true/false or an absolute path, and names the mistake otherwise', async () => {
    const p = await FILTERS.cow!();
    const make = (v: string) => p.create(readParams('cow', p.params, [`cow-on-read=${v}`]), { logger: silentLogger, readOnly: false });
    await expect(make('true')).resolves.toMatchObject({ name: 'cow', scope: 'shared' });
    await expect(make('/tmp/switch')).resolves.toMatchObject({ name: 'cow' });
    await expect(make('maybe')).rejects.toThrow(ParamError);
    await expect(make('maybe')).rejects.toThrow(/cow: cow-on-read=maybe/);
  });

  it('declare their scope: readahead per connection, the others shared', async () => {
    const scope = async (f: string) => (await (await FILTERS[f]!()).create({}, { logger: silentLogger, readOnly: false })).scope;
    expect(await scope('readahead')).toBe('connection');
    for (const f of ['cow', 'cache', 'blocksize']) expect(await scope(f)).toBe('shared');
  });
});

/** A backend whose READs wait until `release()`: to put a write in the middle of a read. */
function gatedMemory() {
  const mem = memoryBackend({ size: 1 << 20 });
  let gate: Promise<void> | undefined;
  let open!: () => void;
  const backend: Backend = layer(mem, {
    read: async (o, l) => {
      const data = Buffer.from(readBuffer(await mem.read(o, l), l)); // the bytes as they are now …
      if (gate) await gate; // … answered later
      return data;
    },
  });
  return {
    backend,
    hold: () => void (gate = new Promise<void>((r) => (open = r))),
    release: () => {
      gate = undefined;
      open();
    },
  };
}

const ctx = { export: '', logger: silentLogger, onClose: () => {} };

describe('a READ racing a WRITE', () => {
  it('cache: the bytes a READ fetched before a write landed are not kept', async () => {
    const g = gatedMemory();
    const b = cacheFilter().wrap(g.backend, ctx);
    g.hold();
    const racing = b.read(0, 4096);
    await b.write!(100, Buffer.from('new!'), { fua: false });
    g.release();
    expect(readBuffer(await racing, 4096).subarray(100, 104).toString()).toBe('\0\0\0\0'); // old bytes: concurrent, fine
    expect(readBuffer(await b.read(0, 4096), 4096).subarray(100, 104).toString()).toBe('new!');
  });

  it('readahead: a window fetched before a write landed is not used after it', async () => {
    const g = gatedMemory();
    const b = readaheadFilter().wrap(g.backend, ctx);
    await b.read(0, 4096);
    g.hold();
    const racing = b.read(4096, 4096); // sequential: fetches a window beyond
    await b.write!(20000, Buffer.from('new!'), { fua: false });
    g.release();
    await racing;
    expect(readBuffer(await b.read(20000, 4), 4).toString()).toBe('new!');
  });
});

describe('cache and multi-conn', () => {
  it('one cache for the export even when wrapped per connection (a per-connection filter below it): a write on one connection is seen on the other, and multi-conn stays advertised', async () => {
    const below = memoryBackend(1 << 20);
    const f = cacheFilter();
    const a = f.wrap(below, ctx);
    const b = f.wrap(below, ctx);
    expect(readBuffer(await b.read(0, 4096), 4096).subarray(0, 4).toString()).toBe('\0\0\0\0'); // now cached
    await a.write!(0, Buffer.from('new!'), { fua: false });
    expect(readBuffer(await b.read(0, 4096), 4096).subarray(0, 4).toString()).toBe('new!');
    expect(a.multiConn).toBe(below.multiConn);
    expect(below.multiConn).toBe(true);
  });
});

describe('stateful filter objects', () => {
  it('serve one export: the same cow or cache object in two exports is a clear configuration error', async () => {
    const { createServer, cowFilter } = await import('../../../src/index.js');
    for (const f of [cowFilter(), cacheFilter()]) {
      expect(() =>
        createServer({
          logger: silentLogger,
          exports: [
            { name: 'a', backend: memoryBackend({ size: 1 << 20 }), filters: [f] },
            { name: 'b', backend: memoryBackend({ size: 1 << 20 }), filters: [f] },
          ],
        }),
      ).toThrow(new RegExp(`${f.name}: this filter object already serves export "a"`));
    }
  });
});

describe('whole-export requests on a huge export (outside-in audit: each stalled every client for seconds and grew memory by GiBs)', () => {
  const size = 2 ** 50;
  const o = { reqOne: false, context: 'base:allocation' };

  it('cow: WRITE_ZEROES past the tracked-block cap fails with ENOSPC at once; such a TRIM is ignored; BLOCK_STATUS skips unmarked ranges and stops at maxExtents', async () => {
    const b = cowFilter().wrap(memoryBackend({ size }), ctx);
    await expect(Promise.resolve(b.zero!(0, size, { fua: false, noHole: false, fastZero: false }))).rejects.toMatchObject({ errno: 28 });
    await b.trim!(0, size, { fua: false });
    await b.write!(2 ** 45, Buffer.alloc(65536, 7), { fua: false });
    const ext = await b.extents!(0, size, { ...o, maxExtents: 2 });
    expect(ext.map((e) => e.length)).toEqual([2 ** 45, 65536]);
    expect(ext[1]!.flags).toBe(0);
    // Within the cap a whole-block zero still only marks (no data read or kept).
    await b.zero!(0, 2 ** 30, { fua: false, noHole: false, fastZero: false });
    expect(readBuffer(await b.read(2 ** 29, 4), 4).equals(Buffer.alloc(4))).toBe(true);
  });

  it('cache: a 4 GiB CACHE prefetches at most cache-max-size; a TRIM of the whole export drops the cached blocks without walking it', async () => {
    const f = cacheFilter({ maxSize: 1 << 20 });
    const b = f.wrap(memoryBackend({ size }), ctx);
    await b.cache!(0, 2 ** 32 - 4096);
    expect((f as unknown as { stats(): { bytes: number } }).stats().bytes).toBeLessThanOrEqual(1 << 20);
    await b.trim!(0, size, { fua: false });
    expect((f as unknown as { stats(): { blocks: number } }).stats().blocks).toBe(0);
  });
});
