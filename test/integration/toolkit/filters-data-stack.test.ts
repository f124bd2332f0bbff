/**
 * The four data filters stacked over a read-only file, as a user would
 * combine them: readahead (per connection) over cache over cow over
 * blocksize. fio writes and verifies misaligned random I/O through the
 * stack on several jobs at once, qemu-img reads the result back, and the
 * base file is unchanged.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { blocksizeFilter, cacheFilter, cowFilter, fileBackend, readaheadFilter } from '../../../src/index.js';
import { run, serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

describe('data filters stacked', () => {
  it('readahead + cache + cow + blocksize over a read-only file: fio verify passes, base unchanged', async () => {
    const dir = tmpDir();
    const base = path.join(dir, 'base.img');
    fs.writeFileSync(base, crypto.randomBytes(16 * MiB));
    const before = crypto.createHash('sha256').update(fs.readFileSync(base)).digest('hex');
    const srv = await serve({
      exports: [{ name: '', backend: await fileBackend({ path: base, readOnly: true }), filters: [readaheadFilter(), cacheFilter({ maxSize: 2 * MiB }), cowFilter({ blockSize: 16384 }), blocksizeFilter({ minblock: 4096 })] }],
    });
    // 1536-byte blocks: never aligned to the cow block or to minblock; 4 jobs on separate 4 MiB regions, 8 in flight each.
    const { stdout } = await run('fio', ['--ioengine=nbd', `--uri=${srv.uri()}`, '--name=v', '--rw=randwrite', '--bs=1536', '--iodepth=8', '--numjobs=4', '--size=4M', '--offset_increment=4M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json'], { timeout: 120_000 });
    const jobs = (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number; read: { io_bytes: number } }> }).jobs;
    expect(jobs.map((j) => j.error)).toEqual([0, 0, 0, 0]);
    expect(jobs.every((j) => j.read.io_bytes > 0)).toBe(true);
    const copy = path.join(dir, 'copy.img');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri(), copy]);
    expect(fs.statSync(copy).size).toBe(16 * MiB);
    const { stdout: cmp } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy, srv.uri()]);
    expect(cmp).toMatch(/Images are identical/);
    expect(crypto.createHash('sha256').update(fs.readFileSync(base)).digest('hex')).toBe(before);
    expect(fs.readFileSync(copy).equals(fs.readFileSync(base))).toBe(false);
  });
});
