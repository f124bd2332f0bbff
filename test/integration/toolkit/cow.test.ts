/**
 * The cow filter with real clients: writes land in the overlay and never
 * in the base (its sha256 is unchanged), the bytes a client reads back are
 * those of a model of the operations and those nbdkit's cow filter gives
 * for the same operations on the same base, extents merge the overlay's
 * blocks with the base's, the overlay can live in a file, and overlapping
 * unaligned writes from two connections lose no update.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cowFilter, fileBackend, layer, memoryBackend, type Filter } from '../../../src/index.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { interleavedBytes, py } from '../pylibnbd.js';
import { run, serverPerTest, tmpDir } from '../harness.js';
import { withNbdkit } from './nbdkit-peer.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();
const sha = (buf: Buffer) => crypto.createHash('sha256').update(buf).digest('hex');

/** The same pattern as pattern(n, seed) in the Python prelude (pylibnbd.ts). */
function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

/** A base image with distinct bytes in every 512-byte sector. */
function baseImage(size = MiB): { file: string; bytes: Buffer } {
  const file = path.join(tmpDir(), 'base.img');
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >> 9)) & 0xff;
  fs.writeFileSync(file, bytes);
  return { file, bytes };
}

/** (libnbd's order is count, offset.) Unaligned writes, a two-block zero, a partial zero, a trim and a write into the trimmed blocks; then the disk's sha256. */
const OPS = `
import hashlib
h = connect()
size = h.get_size()
# nbdkit 1.32's cow over the file plugin advertises no WRITE_ZEROES: write zeroes there instead.
zero = h.zero if h.can_zero() else (lambda c, o: h.pwrite(bytes(c), o))
trim = h.trim if h.can_trim() else (lambda c, o: h.pwrite(bytes(c), o))
h.pwrite(b'A' * 100, 10)
h.pwrite(pattern(70000, 1), 60000)
zero(131072, 65536)
zero(300, 5000)
trim(131072, 262144)
h.pwrite(b'B' * 10, 300000)
h.pwrite(pattern(4096, 2), size - 4096)
data = h.pread(size, 0)
out = {'sha': hashlib.sha256(data).hexdigest(), 'ext': extents(h, size, 0)['extents'], 'native': h.can_zero()}
`;

/** What OPS should leave on a disk that was `base` (trimmed bytes read as zero, as both cow filters give). */
function model(base: Buffer): Buffer {
  const d = Buffer.from(base);
  d.fill(0x41, 10, 110);
  pattern(70000, 1).copy(d, 60000);
  d.fill(0, 65536, 65536 + 131072);
  d.fill(0, 5000, 5300);
  d.fill(0, 262144, 262144 + 131072);
  d.fill(0x42, 300000, 300010);
  pattern(4096, 2).copy(d, d.length - 4096);
  return d;
}

describe('cow filter', () => {
  it('makes a read-only file writable: the model\'s bytes, the same as nbdkit --filter=cow, base untouched', async () => {
    const base = baseImage();
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: base.file, readOnly: true }), filters: [cowFilter()] }] });
    const flags = await py<{ read_only: boolean; multi_conn: boolean; trim: boolean; zero: boolean }>(srv.uri(), `h = connect(); out = flags(h)`);
    expect(flags).toMatchObject({ read_only: false, multi_conn: true, trim: true, zero: true });
    const ours = await py<{ sha: string; ext: Array<[number, number]>; native: boolean }>(srv.uri(), OPS);
    expect(ours.native).toBe(true);
    const kit = await withNbdkit(['--filter=cow', 'file', base.file], (uri) => py<{ sha: string }>(uri, OPS));
    expect(ours.sha).toBe(sha(model(base.bytes)));
    expect(kit.sha).toBe(ours.sha);
    expect(sha(fs.readFileSync(base.file))).toBe(sha(base.bytes));
    // Overlay blocks (64 KiB): 0 data, 1-2 zeroed, 3 base (a file: all data), 4 data (trimmed, then written), 5 trimmed, 6-14 base, 15 data.
    expect(ours.ext).toEqual([[65536, 0], [131072, 2], [131072, 0], [65536, 3], [65536 * 10, 0]]);
  });

  it('merges the overlay with the base\'s extents (a sparse memory base), and qemu-img sees the same map', async () => {
    const mem = memoryBackend({ size: MiB });
    await mem.write!(512 * 1024, Buffer.alloc(65536, 7), { fua: false });
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [cowFilter()] }] });
    const out = await py<{ ext: Array<[number, number]> }>(srv.uri(), `
      h = connect()
      h.pwrite(b'x' * 10, 70000)
      h.zero(64 * 1024, 128 * 1024)
      h.trim(64 * 1024, 512 * 1024)
      out = {'ext': extents(h, 1 << 20, 0)['extents']}
    `);
    // Base: hole|zero except 512K..576K; overlay: block 1 data, block 2 zeroed, block 8 trimmed.
    expect(out.ext).toEqual([[65536, 3], [65536, 0], [65536, 2], [5 * 65536, 3], [65536, 3], [7 * 65536, 3]].reduce<Array<[number, number]>>((acc, e) => {
      const last = acc[acc.length - 1];
      if (last && last[1] === e[1]) last[0] += e[0];
      else acc.push([e[0], e[1]] as [number, number]);
      return acc;
    }, []));
    const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'raw', srv.uri()]);
    const map = JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
    expect(map.filter((m) => m.data && !m.zero).map((m) => [m.start, m.length])).toEqual([[65536, 65536]]);
    // The base is never written.
    expect(Buffer.from((await mem.read(512 * 1024, 65536)) as Buffer).equals(Buffer.alloc(65536, 7))).toBe(true);
  });

  it('keeps the overlay in a file (cow-file=), removed when the server closes; bytes as nbdcopy copies them', async () => {
    const base = baseImage(2 * MiB);
    const dir = tmpDir();
    const overlay = path.join(dir, 'overlay');
    const filter = await (await FILTERS.cow!()).create(readParams('cow', (await FILTERS.cow!()).params, [`cow-file=${overlay}`, 'cow-block-size=4k']), { logger: silentLogger, readOnly: false });
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: base.file, readOnly: true }), filters: [filter] }] });
    const src = path.join(dir, 'src.img');
    const payload = pattern(3 * 4096 + 123, 5);
    fs.writeFileSync(src, Buffer.alloc(2 * MiB));
    payload.copy(base.bytes, 0); // what we expect after copying src's first bytes below
    const expected = Buffer.from(base.bytes);
    await py(srv.uri(), `
      h = connect()
      h.pwrite(pattern(${payload.length}, 5), 0)
      h.flush()
      out = {}
    `);
    expect(fs.statSync(overlay).size).toBeGreaterThanOrEqual(4 * 4096);
    const copy = path.join(dir, 'copy.img');
    await run('nbdcopy', [srv.uri(), copy]);
    expect(sha(fs.readFileSync(copy))).toBe(sha(expected));
    expect(sha(fs.readFileSync(base.file))).not.toBe(sha(expected));
    await srv.close();
    expect(fs.existsSync(overlay)).toBe(false);
  });

  it('cow-file= never clobbers an existing file: the base image, another file or a directory is refused at start; a file made after start fails the write and stays as it was', async () => {
    const plugin = await FILTERS.cow!();
    const make = (file: string) => plugin.create(readParams('cow', plugin.params, [`cow-file=${file}`, 'cow-block-size=4k']), { logger: silentLogger, readOnly: false });
    const base = baseImage(MiB);
    const before = sha(fs.readFileSync(base.file));
    const dir = tmpDir();
    const precious = path.join(dir, 'notes.txt');
    fs.writeFileSync(precious, 'precious');
    await expect(make(base.file)).rejects.toThrow(/cow: cow-file=.*: already exists \(cow-file must name a new file/);
    await expect(make(precious)).rejects.toThrow(/already exists/);
    await expect(make(dir)).rejects.toThrow(/already exists/);
    // A path that is free at start but taken before the first write: that write fails, nothing is truncated or removed.
    const late = path.join(dir, 'late');
    const filter = await make(late);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: base.file, readOnly: true }), filters: [filter] }] });
    fs.writeFileSync(late, 'made by someone else');
    const out = await py(srv.uri(), `
      h = connect()
      out['write'] = err(h.pwrite, b'x' * 4096, 0)
      out['data'] = h.pread(4, 0).hex()
    `);
    expect(out).toEqual({ write: 'EIO', data: base.bytes.subarray(0, 4).toString('hex') });
    await srv.close();
    expect(fs.readFileSync(late, 'utf8')).toBe('made by someone else');
    expect(fs.readFileSync(precious, 'utf8')).toBe('precious');
    expect(sha(fs.readFileSync(base.file))).toBe(before);
  });

  it('cow-on-read keeps base blocks read once: the base is not read again', async () => {
    let baseReads = 0;
    const counting: Filter = { name: 'count', scope: 'shared', wrap: (next) => layer(next, { read: (o, l) => (baseReads++, next.read(o, l)) }) };
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [cowFilter({ onRead: true }), counting] }] });
    await py(srv.uri(), `h = connect(); h.pread(200000, 1000); out = {}`);
    const first = baseReads;
    await py(srv.uri(), `h = connect(); h.pread(200000, 1000); h.pread(5, 150000); out = {}`);
    expect(first).toBeGreaterThan(0);
    expect(baseReads).toBe(first);
  });

  it('two connections writing overlapping unaligned ranges of the same blocks lose no update', async () => {
    const base = baseImage();
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: base.file, readOnly: true }), filters: [cowFilter()] }] });
    // Connection k writes 700-byte pieces at 1400*i + 700*k: interleaved, never aligned, many per 64 KiB block, 16 in flight.
    const writer = (k: number) => py(srv.uri(), `
      h = connect()
      aio_writes(h, interleaved(${k}, 700), 16)
      out = {}
    `);
    await Promise.all([writer(0), writer(1)]);
    const out = await py<{ data: string }>(srv.uri(), `h = connect(); out = {'data': h.pread(1400 * 700, 0).hex()}`);
    const got = Buffer.from(out.data, 'hex');
    expect(got.equals(interleavedBytes(700))).toBe(true);
    expect(sha(fs.readFileSync(base.file))).toBe(sha(base.bytes));
  });

  it('handles a base whose size is not a multiple of the block size (the last block is short)', async () => {
    const size = 100000;
    const base = baseImage(size);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: base.file, readOnly: true }), filters: [cowFilter({ blockSize: 4096 })] }] });
    const out = await py<{ size: number; tail: string; ext: Array<[number, number]> }>(srv.uri(), `
      h = connect()
      h.pwrite(b'\x5a' * 300, ${size} - 300)
      h.zero(100, ${size} - 1000)
      out = {'size': h.get_size(), 'tail': h.pread(1000, ${size} - 1000).hex(), 'ext': extents(h, 8192, ${size} - 8192)['extents']}
    `);
    const want = Buffer.from(base.bytes.subarray(size - 1000));
    want.fill(0x5a, 700);
    want.fill(0, 0, 100);
    expect(out.size).toBe(size);
    expect(out.tail).toBe(want.toString('hex'));
    expect(out.ext).toEqual([[8192, 0]]);
    expect(sha(fs.readFileSync(base.file))).toBe(sha(base.bytes));
  });

  it('cow-max-size bounds the overlay: a write needing a block beyond it gets ENOSPC; trim gives room back', async () => {
    const plugin = await FILTERS.cow!();
    const filter = await plugin.create(readParams('cow', plugin.params, ['cow-max-size=128k']), { logger: silentLogger, readOnly: false });
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [filter] }] });
    const out = await py<Record<string, string | null>>(srv.uri(), `
      h = connect()
      out = {
          'first': err(h.pwrite, b'a' * 10, 0),
          'second': err(h.pwrite, b'b' * 10, 65536 + 5),
          'third': err(h.pwrite, b'c' * 10, 3 * 65536),
          'again': err(h.pwrite, b'd' * 70000, 0),
      }
      h.trim(65536, 0)
      out['after_trim'] = err(h.pwrite, b'c' * 10, 3 * 65536)
      out['data'] = h.pread(10, 3 * 65536).hex()
    `);
    expect(out).toEqual({ first: null, second: null, third: 'ENOSPC', again: null, after_trim: null, data: '63'.repeat(10) });
  });

  it('refuses a bad cow-block-size with a clear error', async () => {
    const plugin = await FILTERS.cow!();
    await expect(plugin.create(readParams('cow', plugin.params, ['cow-block-size=1000']), { logger: silentLogger, readOnly: false })).rejects.toThrow(/cow: cow-block-size=1000: must be a power of 2/);
    await expect(plugin.create(readParams('cow', plugin.params, ['cow-file=/nonexistent-dir/overlay']), { logger: silentLogger, readOnly: false })).rejects.toThrow(/cow: cow-file=\/nonexistent-dir\/overlay: \/nonexistent-dir is not a writable directory/);
  });
});
