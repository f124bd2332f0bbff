/**
 * The partition filter object (src/filters/partition.ts) without a server:
 * the sector size it picks from the backend's minimum block size (nbdkit's
 * rule), alignment and size checks, option checks, and the offset its
 * backend adds.
 */
import { describe, expect, it } from 'vitest';
import { layer, memoryBackend, partitionFilter, type Backend, type FilterContext } from '../../../src/index.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { gptDisk, putTable } from './partition-images.js';

const ctx: FilterContext = { export: 'x', logger: silentLogger, onClose: () => {} };

/** A memory backend holding `disk`, advertising `minimum` as its minimum block size. */
function backendOf(disk: Buffer, minimum?: number): Backend {
  const mem = memoryBackend({ size: disk.length });
  mem.write!(0, disk, { fua: false });
  return minimum === undefined ? mem : layer(mem, { blockSizes: { minimum, preferred: Math.max(4096, minimum), maximum: 1 << 20 } });
}

describe('partitionFilter', () => {
  it('takes the sector size from a 4096-byte minimum block size, and 512 otherwise', async () => {
    const disk4k = gptDisk({ ss: 4096 });
    const auto = partitionFilter({ partition: 2 });
    await auto.prepare(backendOf(disk4k, 4096), ctx);
    expect(auto.location).toMatchObject({ offset: 128 * 4096, length: 128 * 4096 });
    // A minimum of 1024 is neither 512 nor 4096: 512, so the 4K table is not found.
    await expect(partitionFilter({ partition: 2 }).prepare(backendOf(disk4k, 1024), ctx)).rejects.toThrow(/no GPT header/);
    const forced = partitionFilter({ partition: 2, sectorSize: 4096 });
    await forced.prepare(backendOf(disk4k), ctx);
    expect(forced.location?.offset).toBe(128 * 4096);
  });

  it('refuses a partition not aligned to the minimum block size below', async () => {
    const disk = Buffer.alloc(4 * 1024 * 1024);
    putTable(disk, 0, [{ type: 0x83, start: 63, sectors: 2048 }]);
    await expect(partitionFilter({ partition: 1, sectorSize: 512 }).prepare(backendOf(disk, 4096), ctx)).rejects.toThrow(/not aligned to the backend's minimum block size 4096/);
    const ok = partitionFilter({ partition: 1 });
    await ok.prepare(backendOf(disk, 512), ctx);
    expect(ok.location).toMatchObject({ offset: 63 * 512, length: 2048 * 512 });
  });

  it('adds the offset to every operation and serves the partition\'s size', async () => {
    const disk = Buffer.alloc(4 * 1024 * 1024);
    putTable(disk, 0, [{ type: 0x83, start: 2048, sectors: 2048 }]);
    const below = backendOf(disk);
    const f = partitionFilter({ partition: 1 });
    await f.prepare(below, ctx);
    const b = f.wrap(below, ctx);
    expect(b.size).toBe(1024 * 1024);
    await b.write!(10, Buffer.from('abc'), { fua: false });
    const raw = await below.read(1024 * 1024 + 10, 3);
    expect(Buffer.isBuffer(raw) ? raw.toString() : Buffer.concat(raw.map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole)))).toString()).toBe('abc');
    // The backend below it is smaller than the partition's end: refused, never served past it.
    expect(() => f.wrap(layer(below, { size: 1024 * 1024 }), ctx)).toThrow(/beyond the backend below/);
  });

  it('checks its options', () => {
    expect(() => partitionFilter({ partition: 0 })).toThrow(RangeError);
    expect(() => partitionFilter({ partition: 1.5 })).toThrow(/integer ≥ 1/);
    expect(() => partitionFilter({ partition: 1, sectorSize: 1024 as 512 })).toThrow(/512 or 4096/);
    expect(() => partitionFilter({ partition: 1, gptArrayLimit: 1000 })).toThrow(/≥ 16384/);
  });
});
