/**
 * Issue 15: "with no filter the fast paths stay as fast as today". An export
 * without filters must be served by its backend object itself — no layer, no
 * per-connection instance, and the backend's zero-copy WRITE path kept — so
 * the request path is the one it was before filters existed (bench/RESULTS.md,
 * "Filters: absent and present", has the figures). With one pass-through
 * filter the export is served through a layer instead, and a filter that
 * looks at WRITEs hides the zero-copy path (what the bench's filter rows pay).
 */
import { describe, expect, it } from 'vitest';
import { describeExport, writePlacement } from '../../../src/api/export-entry.js';
import { memoryBackend } from '../../../src/backends/memory.js';
import { delayFilter } from '../../../src/filters/delay.js';
import { silentLogger } from '../../../src/transport/logger.js';

const MAX_PAYLOAD = 32 * 1024 * 1024;

describe('an export without filters', () => {
  it.each([
    ['no filters key', undefined],
    ['an empty filters list', []],
  ])('is served by the backend object itself (%s)', (_label, filters) => {
    const backend = memoryBackend(1 << 20);
    const entry = describeExport({ name: '', backend, filters }, MAX_PAYLOAD, silentLogger);
    expect(entry.backend).toBe(backend);
    expect(entry.forConnection).toBeUndefined();
    expect(entry.closers).toEqual([]);
    // The memory backend's zero-copy WRITEs stay on.
    expect(writePlacement(entry, entry.backend)).toBeTypeOf('function');
  });
});

describe('an export with one pass-through filter', () => {
  it('is served through a layer over the backend, with the same size and capabilities', async () => {
    const backend = memoryBackend(1 << 20);
    const plain = describeExport({ name: 'plain', backend }, MAX_PAYLOAD, silentLogger);
    const entry = describeExport({ name: 'delayed', backend, filters: [delayFilter({})] }, MAX_PAYLOAD, silentLogger);
    expect(entry.backend).not.toBe(backend);
    expect(entry.descriptor.size).toBe(plain.descriptor.size);
    expect(entry.descriptor.flags).toBe(plain.descriptor.flags);
    // The layer forwards: a write through it is read back from the backend.
    const data = Buffer.alloc(4096, 0x5a);
    await entry.backend!.write!(8192, data, { fua: false });
    const back = await backend.read(8192, 4096);
    // One page, written whole: the memory backend returns it as one Buffer.
    expect(Buffer.isBuffer(back) ? Buffer.from(back) : back).toEqual(data);
    // delay sees every WRITE, so the zero-copy path is not forwarded through it.
    expect(writePlacement(entry, entry.backend)).toBeUndefined();
  });
});
