/**
 * The readahead filter over a backend that records the READs it gets:
 * nbdcopy's sequential copy reaches the backend as fewer, larger READs
 * (and copies the right bytes), random reads pass unchanged, and a write
 * on another connection is seen at once by a connection reading ahead.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { layer, memoryBackend, readaheadFilter, type Filter } from '../../../src/index.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A filter recording the length of each READ reaching the backend. */
function recorder(): { filter: Filter; reads: number[] } {
  const reads: number[] = [];
  return { reads, filter: { name: 'rec', scope: 'shared', wrap: (next) => layer(next, { read: (o, l) => (reads.push(l), next.read(o, l)) }) } };
}

async function filledMemory(size: number) {
  const mem = memoryBackend({ size });
  const data = crypto.randomBytes(size);
  await mem.write!(0, data, { fua: false });
  return { mem, data };
}

describe('readahead filter', () => {
  it('turns a sequential nbdcopy into fewer, larger backend READs, and the copy is right', async () => {
    const size = 16 * MiB;
    const { mem, data } = await filledMemory(size);
    const withRa = recorder();
    const without = recorder();
    const ra = await (await FILTERS.readahead!()).create(readParams('readahead', (await FILTERS.readahead!()).params, ['readahead-max=4M']), { logger: silentLogger, readOnly: false });
    const srv = await serve({
      exports: [
        { name: 'ra', backend: mem, filters: [ra, withRa.filter] },
        { name: 'plain', backend: mem, filters: [without.filter] },
      ],
    });
    const dir = tmpDir();
    for (const name of ['ra', 'plain']) {
      const out = path.join(dir, `${name}.img`);
      await run('nbdcopy', ['--connections=1', srv.uri(name), out]);
      expect(crypto.createHash('sha256').update(fs.readFileSync(out)).digest('hex')).toBe(crypto.createHash('sha256').update(data).digest('hex'));
    }
    expect(withRa.reads.length).toBeLessThan(without.reads.length / 2);
    expect(Math.max(...withRa.reads)).toBeGreaterThan(Math.max(...without.reads));
    expect(Math.max(...withRa.reads)).toBeLessThanOrEqual(4 * MiB);
  });

  it('leaves random reads alone: one backend READ of the same size per client READ', async () => {
    const { mem } = await filledMemory(4 * MiB);
    const rec = recorder();
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [readaheadFilter(), rec.filter] }] });
    await py(srv.uri(), `
      import random
      random.seed(7)
      h = connect()
      offs = random.sample(range(0, 1024), 100)
      for i in offs:
          h.pread(4096, ((i * 397) % 1024) * 4096)
      out = {}
    `);
    expect(rec.reads.length).toBeGreaterThanOrEqual(95); // a chance follow-on may read ahead once or twice
    expect(rec.reads.filter((l) => l === 4096).length).toBeGreaterThanOrEqual(90);
  });

  it('a write on another connection is seen at once by a connection reading ahead', async () => {
    const { mem } = await filledMemory(4 * MiB);
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [readaheadFilter()] }] });
    const out = await py<{ seen: string }>(srv.uri(), `
      h = connect()
      h2 = connect()
      for i in range(8):
          h.pread(65536, i * 65536)
      h2.pwrite(b'\\xab' * 16, 8 * 65536 + 100)
      out = {'seen': h.pread(16, 8 * 65536 + 100).hex()}
    `);
    expect(out.seen).toBe('ab'.repeat(16));
  });

  it('refuses readahead-max below readahead-min', async () => {
    const p = await FILTERS.readahead!();
    await expect(p.create(readParams('readahead', p.params, ['readahead-min=1M', 'readahead-max=64k']), { logger: silentLogger, readOnly: false })).rejects.toThrow(/readahead: readahead-max=65536: must be ≥ readahead-min/);
  });
});
