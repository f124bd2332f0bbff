/**
 * Filter preparation (Filter.prepare, prepareExports): a filter's async
 * set-up sees the chain below it, innermost first; filters above it are not
 * wrapped for it; the instances made for preparation are cleaned up right
 * after; exports without such a filter are not touched. Checked with
 * the partition filter over a filter that moves the disk 1 MiB in, served
 * to nbdinfo and libnbd.
 */
import { describe, expect, it } from 'vitest';
import { layer, memoryBackend, partitionFilter, prepareExports, type ExportConfig, type Filter } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A disk image in memory: one MBR partition of 1 MiB at sector 2048, its first bytes "PART". */
function disk(): Buffer {
  const d = Buffer.alloc(4 * MiB);
  const e = 446;
  d[e + 4] = 0x83;
  d.writeUInt32LE(2048, e + 8);
  d.writeUInt32LE(2048, e + 12);
  d[510] = 0x55;
  d[511] = 0xaa;
  d.write('PART', 2048 * 512);
  return d;
}

/** A filter serving its backend from 1 MiB on, counting its wraps and clean-ups. */
function skipMiB(stats: { wraps: number; closed: number }): Filter {
  return {
    name: 'skip',
    scope: 'shared',
    wrap: (next, ctx) => {
      stats.wraps++;
      ctx.onClose(() => void stats.closed++);
      return layer(next, { size: next.size! - MiB, read: (o, l) => next.read(o + MiB, l), write: (o, d, opts) => next.write!(o + MiB, d, opts) });
    },
  };
}

describe('filter preparation', () => {
  it('prepare sees the chain below; filters above are not wrapped for it; its instances are cleaned up after', async () => {
    const mem = memoryBackend({ size: 5 * MiB });
    mem.write!(MiB, disk(), { fua: false });
    const below = { wraps: 0, closed: 0 };
    const plain = { wraps: 0, closed: 0 };
    const outerWraps: Array<string | undefined> = [];
    const outer: Filter = { name: 'outer', scope: 'connection', wrap: (next, ctx) => (outerWraps.push(ctx.connection?.peer), layer(next)) };
    const exports: ExportConfig[] = [
      { name: '', backend: mem, filters: [outer, partitionFilter({ partition: 1 }), skipMiB(below)] },
      { name: 'plain', backend: memoryBackend({ size: 2 * MiB }), filters: [skipMiB(plain)] },
    ];
    await prepareExports(exports);
    // Preparation wrapped only the filter below the partition filter, once, and ran its clean-up; nothing else.
    expect(below).toEqual({ wraps: 1, closed: 1 });
    expect(outerWraps).toEqual([]);
    expect(plain).toEqual({ wraps: 0, closed: 0 });
    const srv = await serve({ exports });
    expect(Number((await run('nbdinfo', ['--size', srv.uri('')])).stdout.trim())).toBe(MiB);
    expect(Number((await run('nbdinfo', ['--size', srv.uri('plain')])).stdout.trim())).toBe(MiB);
    // The server made the export-wide instance (no connection) and one per connection.
    expect(outerWraps.filter((p) => p === undefined)).toHaveLength(1);
    expect(outerWraps.filter((p) => p !== undefined)).toHaveLength(1);
  });

  it('the partition table is read through the filters below it, and requests go back through them', async () => {
    const mem = memoryBackend({ size: 5 * MiB });
    mem.write!(MiB, disk(), { fua: false });
    const stats = { wraps: 0, closed: 0 };
    const exports: ExportConfig[] = [{ name: 'p1', backend: mem, filters: [partitionFilter({ partition: 1 }), skipMiB(stats)] }];
    await prepareExports(exports);
    const srv = await serve({ exports });
    const out = await py<{ size: number; head: string }>(srv.uri('p1'), `
      h = connect()
      h.pwrite(b'NEW!', 4)
      out = {'size': h.get_size(), 'head': h.pread(8, 0).decode()}
    `);
    expect(out).toEqual({ size: MiB, head: 'PARTNEW!' });
    const back = await mem.read(MiB + 2048 * 512, 8);
    expect(Buffer.concat(Buffer.isBuffer(back) ? [back] : back.map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole)))).toString()).toBe('PARTNEW!');
  });
});
