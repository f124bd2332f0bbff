/**
 * The cache filter over a backend that counts the READs it gets: repeated
 * reads are served from the cache, the cache stays within cache-max-size
 * (least recently used blocks go first), writes go through and drop what
 * they touch, CACHE requests prefetch, and fio's verify workload through
 * the cache reads back what it wrote.
 */
import { describe, expect, it } from 'vitest';
import { cacheFilter, layer, memoryBackend, type Filter } from '../../../src/index.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest } from '../harness.js';

const KiB = 1024;
const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A filter counting the bytes and READs that reach the backend. */
function counter(): { filter: Filter; reads: () => number; bytes: () => number } {
  let reads = 0;
  let bytes = 0;
  const filter: Filter = { name: 'count', scope: 'shared', wrap: (next) => layer(next, { read: (o, l) => ((reads++, (bytes += l)), next.read(o, l)) }) };
  return { filter, reads: () => reads, bytes: () => bytes };
}

async function plugin(args: string[]) {
  const p = await FILTERS.cache!();
  return p.create(readParams('cache', p.params, args), { logger: silentLogger, readOnly: false });
}

describe('cache filter', () => {
  it('serves repeated reads from the cache, on any connection', async () => {
    const c = counter();
    const cache = cacheFilter();
    const mem = memoryBackend({ size: MiB });
    await mem.write!(0, Buffer.alloc(MiB, 0x3c), { fua: false });
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [cache, c.filter] }] });
    const a = await py<{ d: string }>(srv.uri(), `h = connect(); out = {'d': h.pread(300000, 1000)[0:4].hex()}`);
    const after = c.reads();
    const b = await py<{ d: string }>(srv.uri(), `h = connect(); out = {'d': h.pread(300000, 1000)[-4:].hex() + h.pread(10, 70000).hex()}`);
    expect(a.d).toBe('3c3c3c3c');
    expect(b.d).toBe('3c'.repeat(14));
    expect(after).toBeGreaterThan(0);
    expect(c.reads()).toBe(after);
    expect(cache.stats().hits).toBeGreaterThan(0);
  });

  it('stays within cache-max-size, dropping the least recently used blocks first', async () => {
    const c = counter();
    const cache = (await plugin(['cache-max-size=256k', 'cache-min-block-size=64k'])) as ReturnType<typeof cacheFilter>;
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [cache, c.filter] }] });
    await py(srv.uri(), `
      h = connect()
      for i in range(16):
          h.pread(65536, i * 65536)
      out = {}
    `);
    expect(cache.stats().bytes).toBeLessThanOrEqual(256 * KiB);
    expect(cache.stats().blocks).toBe(4);
    const before = c.reads();
    await py(srv.uri(), `h = connect(); h.pread(65536, 15 * 65536); h.pread(65536, 12 * 65536); out = {}`);
    expect(c.reads()).toBe(before); // the 4 most recent blocks are still there
    await py(srv.uri(), `h = connect(); h.pread(65536, 0); out = {}`);
    expect(c.reads()).toBe(before + 1); // block 0 was evicted
    expect(cache.stats().bytes).toBeLessThanOrEqual(256 * KiB);
  });

  it('writes go through to the backend and drop the cached blocks they touch (writethrough)', async () => {
    const c = counter();
    const mem = memoryBackend({ size: MiB });
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [cacheFilter(), c.filter] }] });
    const out = await py<{ before: string; after: string; zeroed: string; trimmed: string }>(srv.uri(), `
      h = connect()
      h2 = connect()
      before = h.pread(8, 100000).hex()
      h2.pwrite(b'\\x11' * 8, 100000)
      after = h.pread(8, 100000).hex()
      h2.zero(4, 100002)
      zeroed = h.pread(8, 100000).hex()
      h2.trim(65536, 65536)
      trimmed = h.pread(8, 100000).hex()
      h.pread(4, 500000)
      h2.pwrite(b'\x22' * 4, 500000)
      out = {'before': before, 'after': after, 'zeroed': zeroed, 'trimmed': trimmed}
    `);
    expect(out).toEqual({ before: '00'.repeat(8), after: '11'.repeat(8), zeroed: '1111000000001111', trimmed: '00'.repeat(8) });
    // Through to the backend before the reply.
    const inBackend = await mem.read(500000, 4);
    expect(Buffer.isBuffer(inBackend) ? inBackend.toString('hex') : 'hole').toBe('22222222');
  });

  it('prefetches on CACHE requests; with cache-on-read=false plain reads are not kept', async () => {
    const c = counter();
    const cache = (await plugin(['cache-on-read=false'])) as ReturnType<typeof cacheFilter>;
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [cache, c.filter] }] });
    await py(srv.uri(), `h = connect(); h.pread(4096, 0); h.pread(4096, 0); out = {}`);
    expect(c.reads()).toBe(2);
    const out = await py<{ can: boolean }>(srv.uri(), `h = connect(); out = {'can': h.can_cache()}; h.cache(131072, 262144); h.pread(4096, 300000); h.pread(100, 262144)`);
    expect(out.can).toBe(true);
    expect(c.reads()).toBe(3); // the one prefetch
    expect(cache.stats().blocks).toBe(2);
  });

  it('fio writes and verifies 8 MiB of random 4k I/O through the cache', async () => {
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: 8 * MiB }), filters: [cacheFilter({ maxSize: MiB, minBlockSize: 4096 })] }] });
    const { stdout } = await run('fio', ['--ioengine=nbd', `--uri=${srv.uri()}`, '--name=v', '--rw=randwrite', '--bs=4k', '--iodepth=8', '--size=8M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json'], { timeout: 120_000 });
    const job = (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number; read: { io_bytes: number } }> }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBe(8 * MiB); // the verify pass read everything back
  });

  it('refuses a mode it does not have and a bad block size with clear errors', async () => {
    await expect(plugin(['cache=writeback'])).rejects.toThrow(/cache: cache=writeback: expected one of writethrough/);
    await expect(plugin(['cache-min-block-size=1000'])).rejects.toThrow(/cache-min-block-size=1000: must be a power of 2/);
  });
});
