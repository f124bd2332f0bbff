/**
 * The file backend on sparse images, with real clients: holes are mapped
 * (nbdinfo --map, libnbd block_status, qemu-img map), TRIM and WRITE_ZEROES
 * punch holes or zero without writing data, FAST_ZERO is honoured or refused
 * with ENOTSUP, nbdcopy copies byte-identically into a sparse output — and
 * the fallback (no native addon) still serves the same bytes, as data.
 *
 * Sizes and offsets are multiples of 64 KiB so the filesystem's block size
 * (4 KiB on ext4, the page on tmpfs) never rounds a hole.
 */
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileBackend } from '../../../src/index.js';
import { BACKENDS } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { py } from '../pylibnbd.js';
import { requirePythonNbd, requireTool, run, serverPerTest, spawnCli, tmpDir } from '../harness.js';

const KiB = 1024;
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const { serve } = serverPerTest();

let work: string;
beforeAll(() => {
  for (const t of ['nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io']) requireTool(t);
  requirePythonNbd();
  work = tmpDir('nbd-engine-sparse-');
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const sha256 = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
/** Bytes the filesystem has allocated for the file. */
const allocated = (file: string) => fs.statSync(file).blocks * 512;

/** A SIZE sparse file with random data at each [offset, length) given; returns the data. */
function sparseImage(name: string, pieces: Array<[number, number]>, dir = work): { file: string; pieces: Map<number, Buffer> } {
  const file = path.join(dir, name);
  fs.rmSync(file, { force: true });
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, SIZE);
  const written = new Map<number, Buffer>();
  for (const [offset, length] of pieces) {
    const data = crypto.randomBytes(length);
    fs.writeSync(fd, data, 0, length, offset);
    written.set(offset, data);
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return { file, pieces: written };
}

/** nbdinfo --map as [offset, length, flags] rows. */
async function nbdinfoMap(uri: string): Promise<number[][]> {
  const { stdout } = await run('nbdinfo', ['--map', uri]);
  return stdout
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
}

describe('file backend, native sparse support', () => {
  it('says so once in the log and advertises trim, zero, fast zero and cache', async () => {
    const { file } = sparseImage('flags.img', []);
    const backend = await fileBackend({ path: file, logger: silentLogger });
    expect(backend.sparse).toBe('native');
    const srv = await serve({ exports: [{ name: '', backend }] });
    const flags = await py(srv.uri(), `h = connect(); out = flags(h)`);
    expect(flags).toMatchObject({ trim: true, zero: true, fast_zero: true, cache: true, size: SIZE });
    // The one line comes from the backend's own logger option, at open.
    const lines: string[] = [];
    await (await fileBackend({ path: file, logger: { info: (m) => lines.push(`info: ${m}`), warn: (m) => lines.push(`warn: ${m}`), error: () => {} } })).close?.();
    expect(lines).toEqual([`info: file flags.img: native sparse support (fallocate, SEEK_DATA/SEEK_HOLE)`]);
  });

  it('maps holes and data: nbdinfo --map, libnbd block_status (also REQ_ONE), qemu-img map', async () => {
    const { file } = sparseImage('map.img', [[MiB, 64 * KiB], [40 * MiB, 2 * MiB]]);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    expect(await nbdinfoMap(srv.uri())).toEqual([
      [0, MiB, 3],
      [MiB, 64 * KiB, 0],
      [MiB + 64 * KiB, 40 * MiB - MiB - 64 * KiB, 3],
      [40 * MiB, 2 * MiB, 0],
      [42 * MiB, SIZE - 42 * MiB, 3],
    ]);
    const bs = await py<{ all: { extents: number[][] }; one: { extents: number[][] }; mid: { extents: number[][] } }>(
      srv.uri(),
      `
      h = connect()
      out['all'] = extents(h, ${SIZE}, 0)
      out['one'] = extents(h, ${SIZE - MiB}, ${MiB}, nbd.CMD_FLAG_REQ_ONE)
      out['mid'] = extents(h, ${2 * MiB}, ${41 * MiB})
      `,
    );
    expect(bs.all.extents[0]).toEqual([MiB, 3]);
    expect(bs.one.extents).toEqual([[64 * KiB, 0]]);
    expect(bs.mid.extents).toEqual([[MiB, 0], [MiB, 3]]);
    const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'raw', srv.uri()]);
    const map = (JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>).map((e) => [e.start, e.length, e.data, e.zero]);
    expect(map).toEqual([
      [0, MiB, false, true],
      [MiB, 64 * KiB, true, false],
      [MiB + 64 * KiB, 40 * MiB - MiB - 64 * KiB, false, true],
      [40 * MiB, 2 * MiB, true, false],
      [42 * MiB, SIZE - 42 * MiB, false, true],
    ]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, srv.uri()]);
  });

  it('a fragmented image (more extents than are walked inline): every extent mapped, in order, in one reply or more', async () => {
    // 48 data pieces of 64 KiB, 1 MiB apart: 96 extents, past INLINE_EXTENTS (the rest on the thread pool).
    const pieces: Array<[number, number]> = Array.from({ length: 48 }, (_, i) => [i * MiB + 512 * KiB, 64 * KiB]);
    const { file } = sparseImage('frag.img', pieces);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    const rows: number[][] = [];
    let at = 0;
    for (const [start, len] of pieces) rows.push([at, start - at, 3], [start, len, 0]), (at = start + len);
    rows.push([at, SIZE - at, 3]);
    // Neighbours with equal flags merge in nbdinfo's output; here holes and data alternate, so none do.
    expect(await nbdinfoMap(srv.uri())).toEqual(rows);
    const one = await py<{ all: { extents: number[][] } }>(srv.uri(), `h = connect()\nout['all'] = extents(h, ${SIZE}, 0)`);
    expect(one.all.extents.length).toBeGreaterThan(32);
    expect(one.all.extents.slice(0, 4)).toEqual([[512 * KiB, 3], [64 * KiB, 0], [MiB - 64 * KiB, 3], [64 * KiB, 0]]);
  });

  it('nbdcopy out of a sparse image is byte-identical and the copy is sparse', async () => {
    const { file } = sparseImage('copy-src.img', [[4 * MiB, 128 * KiB], [60 * MiB, MiB]]);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    const out = path.join(work, 'copy-out.img');
    fs.rmSync(out, { force: true });
    await run('nbdcopy', [srv.uri(), out]);
    expect(sha256(out)).toBe(sha256(file));
    expect(fs.statSync(out).size).toBe(SIZE);
    // Only the 1.125 MiB of data (plus metadata slack) is allocated, not 64 MiB.
    expect(allocated(out)).toBeLessThanOrEqual(2 * MiB);
  });

  it('nbdcopy of a sparse file into an export full of data: identical, and the export becomes sparse (zeroing punched holes)', async () => {
    const { file: src } = sparseImage('into-src.img', [[2 * MiB, 256 * KiB], [50 * MiB, MiB]]);
    const dst = path.join(work, 'into-dst.img');
    fs.writeFileSync(dst, crypto.randomBytes(SIZE));
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: dst }) }] });
    await run('nbdcopy', [src, srv.uri()]);
    expect(sha256(dst)).toBe(sha256(src));
    expect(allocated(dst)).toBeLessThanOrEqual(2 * MiB);
  });

  it('TRIM punches a hole: blocks freed, zeroes read, neighbours kept, mapped as a hole', async () => {
    const file = path.join(work, 'trim.img');
    const data = crypto.randomBytes(8 * MiB);
    fs.writeFileSync(file, data);
    const before = allocated(file);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    const got = await py<{ map: { extents: number[][] }; around: string }>(
      srv.uri(),
      `
      h = connect()
      h.trim(${2 * MiB}, ${2 * MiB})
      h.flush()
      out['map'] = extents(h, ${8 * MiB}, 0)
      out['around'] = h.pread(${6 * MiB}, ${MiB}).hex()
      `,
    );
    expect(got.map.extents).toEqual([[2 * MiB, 0], [2 * MiB, 3], [4 * MiB, 0]]);
    const expected = Buffer.concat([data.subarray(MiB, 2 * MiB), Buffer.alloc(2 * MiB), data.subarray(4 * MiB, 7 * MiB)]);
    expect(got.around).toBe(expected.toString('hex'));
    expect(before - allocated(file)).toBe(2 * MiB);
    expect(fs.readFileSync(file).equals(Buffer.concat([data.subarray(0, 2 * MiB), Buffer.alloc(2 * MiB), data.subarray(4 * MiB)]))).toBe(true);
  });

  it('qemu-io write -z: with unmap it punches (frees blocks), without (NO_HOLE) it zeroes in place', async () => {
    const file = path.join(work, 'wz.img');
    const data = crypto.randomBytes(8 * MiB);
    fs.writeFileSync(file, data);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    const full = allocated(file);
    await run('qemu-io', ['-f', 'raw', '-c', `write -z -u 0 ${2 * MiB}`, srv.uri()]);
    expect(full - allocated(file)).toBe(2 * MiB);
    await run('qemu-io', ['-f', 'raw', '-c', `write -z ${4 * MiB} ${2 * MiB}`, srv.uri()]);
    // NO_HOLE: the range stays allocated (ZERO_RANGE keeps the blocks, no data is written).
    expect(full - allocated(file)).toBe(2 * MiB);
    const after = fs.readFileSync(file);
    expect(after.equals(Buffer.concat([Buffer.alloc(2 * MiB), data.subarray(2 * MiB, 4 * MiB), Buffer.alloc(2 * MiB), data.subarray(6 * MiB)]))).toBe(true);
    await run('qemu-io', ['-f', 'raw', '-c', `read -P 0 0 ${2 * MiB}`, '-c', `read -P 0 ${4 * MiB} ${2 * MiB}`, srv.uri()]);

    // On an empty sparse image, write -z -u allocates nothing at all.
    const { file: empty } = sparseImage('wz-empty.img', []);
    const srv2 = await serve({ exports: [{ name: '', backend: await fileBackend({ path: empty }) }] });
    await run('qemu-io', ['-f', 'raw', '-c', `write -z -u 0 ${SIZE / 2}`, srv2.uri()]);
    expect(allocated(empty)).toBe(0);
    expect(await nbdinfoMap(srv2.uri())).toEqual([[0, SIZE, 3]]);
  });

  it('FUA is native: WRITE, WRITE_ZEROES and TRIM with FUA sync in the backend (no server flush), bytes and holes right', async () => {
    const { file } = sparseImage('fua.img', [[0, 4 * MiB]]);
    const backend = await fileBackend({ path: file, logger: silentLogger });
    expect(backend.fua).toBe('native');
    // The server emulates FUA by calling flush; with native FUA it must not.
    let flushes = 0;
    const counted = { ...backend, flush: async () => (flushes++, backend.flush!()) };
    const srv = await serve({ exports: [{ name: '', backend: counted }] });
    const got = await py<{ fua: boolean; map: { extents: number[][] }; head: string }>(
      srv.uri(),
      `
      h = connect()
      out['fua'] = h.can_fua()
      h.pwrite(bytes([0xab]) * ${64 * KiB}, ${8 * MiB}, nbd.CMD_FLAG_FUA)
      h.zero(${MiB}, 0, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
      h.trim(${2 * MiB}, ${MiB}, nbd.CMD_FLAG_FUA)
      out['map'] = extents(h, ${2 * MiB}, ${MiB})
      out['head'] = h.pread(${2 * MiB}, 0).hex() + h.pread(${64 * KiB}, ${8 * MiB}).hex()
      `,
    );
    expect(got.fua).toBe(true);
    expect(flushes).toBe(0);
    expect(got.map.extents).toEqual([[2 * MiB, 3]]);
    const on = fs.readFileSync(file);
    expect(on.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    expect(on.subarray(MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    expect(on.subarray(8 * MiB, 8 * MiB + 64 * KiB).every((b) => b === 0xab)).toBe(true);
    expect(got.head).toBe(Buffer.alloc(2 * MiB).toString('hex') + Buffer.alloc(64 * KiB, 0xab).toString('hex'));
  });

  it('FAST_ZERO succeeds where fallocate can, and gets ENOTSUP where only writing zeroes would do (tmpfs has no ZERO_RANGE)', async () => {
    const fsType = execFileSync('stat', ['-f', '-c', '%T', '/dev/shm'], { encoding: 'utf8' }).trim();
    expect(fsType, '/dev/shm must be a tmpfs for this test').toBe('tmpfs');
    const shm = fs.mkdtempSync('/dev/shm/nbd-engine-sparse-');
    try {
      const data = crypto.randomBytes(4 * MiB);
      for (const [where, dir] of [['ext', work], ['tmpfs', shm]] as const) {
        const file = path.join(dir, `fz-${where}.img`);
        fs.writeFileSync(file, data);
        const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
        const got = await py<Record<string, string | null>>(
          srv.uri(),
          `
          h = connect()
          out['fast_punch'] = err(h.zero, ${MiB}, 0, nbd.CMD_FLAG_FAST_ZERO)
          out['fast_nohole'] = err(h.zero, ${MiB}, ${MiB}, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
          out['slow_nohole'] = err(h.zero, ${MiB}, ${2 * MiB}, nbd.CMD_FLAG_NO_HOLE)
          out['zeroes'] = h.pread(${MiB}, 0) == bytes(${MiB}) and h.pread(${MiB}, ${2 * MiB}) == bytes(${MiB})
          out['kept'] = h.pread(${MiB}, ${3 * MiB}).hex()
          out['second'] = h.pread(${MiB}, ${MiB}).hex()
          `,
        );
        expect(got.fast_punch).toBeNull();
        expect(got.slow_nohole).toBeNull();
        expect(got.zeroes).toBe(true);
        expect(got.kept).toBe(data.subarray(3 * MiB).toString('hex'));
        if (where === 'ext') {
          expect(got.fast_nohole).toBeNull();
          expect(got.second).toBe(Buffer.alloc(MiB).toString('hex'));
        } else {
          // tmpfs refuses ZERO_RANGE: a fast, no-hole zero cannot be done, and nothing was changed.
          expect(got.fast_nohole).toBe('ENOTSUP');
          expect(got.second).toBe(data.subarray(MiB, 2 * MiB).toString('hex'));
        }
        await srv.close();
      }
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });

  it('read-only: holes still mapped, no trim or zero advertised', async () => {
    const { file } = sparseImage('ro.img', [[8 * MiB, MiB]]);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file, readOnly: true }) }] });
    const got = await py<{ flags: Record<string, unknown>; map: { extents: number[][] } }>(srv.uri(), `h = connect(); out['flags'] = flags(h); out['map'] = extents(h, ${16 * MiB}, 0)`);
    expect(got.flags).toMatchObject({ read_only: true, trim: false, zero: false, cache: true });
    expect(got.map.extents).toEqual([[8 * MiB, 3], [MiB, 0], [7 * MiB, 3]]);
  });

  it('CACHE (posix_fadvise WILLNEED) answers success, also for a range past the end', async () => {
    const { file } = sparseImage('cache.img', [[0, MiB]]);
    const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: file }) }] });
    const got = await py(srv.uri(), `h = connect(); out['in'] = err(h.cache, ${4 * MiB}, 0); out['end'] = err(h.cache, ${MiB}, ${SIZE - MiB})`);
    expect(got).toEqual({ in: null, end: null });
  });
});

describe('file backend next to nbdkit file', () => {
  it('the same flags, maps, and the same holes after the same TRIM / WRITE_ZEROES requests', async () => {
    requireTool('nbdkit');
    requireTool('fallocate');
    const { file: ours } = sparseImage('cmp-ours.img', [[MiB, 4 * MiB], [32 * MiB, 2 * MiB]]);
    const theirs = path.join(work, 'cmp-nbdkit.img');
    fs.copyFileSync(ours, theirs);
    execFileSync('fallocate', ['--dig-holes', theirs]);
    const sock = path.join(work, 'nbdkit-cmp.sock');
    const pid = path.join(work, 'nbdkit-cmp.pid');
    const kit = spawn('nbdkit', ['-f', '-U', sock, '-P', pid, 'file', theirs], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && !fs.existsSync(pid); i++) await new Promise((r) => setTimeout(r, 25));
      const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: ours }) }] });
      const script = `
        h = connect()
        f = flags(h)
        out['flags'] = {k: f[k] for k in ('trim', 'zero', 'fast_zero', 'cache', 'size')}
        out['before'] = extents(h, ${SIZE}, 0)['extents']
        h.trim(${MiB}, ${2 * MiB})
        h.zero(${MiB}, ${32 * MiB})
        h.zero(${MiB}, ${4 * MiB}, nbd.CMD_FLAG_NO_HOLE)
        out['fast'] = err(h.zero, ${MiB}, ${40 * MiB}, nbd.CMD_FLAG_FAST_ZERO)
        h.flush()
        out['after'] = extents(h, ${SIZE}, 0)['extents']
        `;
      const mine = await py<{ flags: Record<string, unknown>; fast: string | null }>(srv.uri(), script);
      const kits = await py<{ flags: Record<string, unknown>; fast: string | null }>(`nbd+unix:///?socket=${sock}`, script);
      // The one difference: nbdkit 1.32's file plugin does not advertise FAST_ZERO (so libnbd refuses
      // the flag client-side with EINVAL); we do, and the fast zero succeeds.
      expect([mine.flags.fast_zero, mine.fast, kits.flags.fast_zero, kits.fast]).toEqual([true, null, false, 'EINVAL']);
      for (const r of [mine, kits]) (delete r.flags.fast_zero, Reflect.deleteProperty(r, 'fast'));
      expect(mine).toEqual(kits);
      expect(sha256(ours)).toBe(sha256(theirs));
      expect(allocated(ours)).toBe(allocated(theirs));
    } finally {
      kit.kill();
    }
  });
});

describe('file backend, fallback (no native part)', () => {
  it('native: false serves the same bytes, all data, zeroing emulated, and logs one warning', async () => {
    const { file } = sparseImage('fb.img', [[MiB, 64 * KiB]]);
    const lines: string[] = [];
    const backend = await fileBackend({ path: file, native: false, logger: { info: (m) => lines.push(`info: ${m}`), warn: (m) => lines.push(`warn: ${m}`), error: () => {} } });
    expect(backend.sparse).toBe('fallback');
    expect(lines).toEqual(['warn: file fb.img: no native sparse support (native: false): holes read as data, zeroing writes zeroes']);
    const srv = await serve({ exports: [{ name: '', backend }] });
    expect(await nbdinfoMap(srv.uri())).toEqual([[0, SIZE, 0]]);
    const got = await py(
      srv.uri(),
      `
      h = connect()
      out['flags'] = flags(h)
      out['fast'] = err(h.zero, ${MiB}, 0, nbd.CMD_FLAG_FAST_ZERO)
      out['slow'] = err(h.zero, ${64 * KiB}, ${MiB})
      out['zeroed'] = h.pread(${64 * KiB}, ${MiB}) == bytes(${64 * KiB})
      `,
    );
    expect(got.flags).toMatchObject({ trim: false, zero: true, fast_zero: true });
    expect(got).toMatchObject({ fast: 'ENOTSUP', slow: null, zeroed: true });
    const out = path.join(work, 'fb-out.img');
    fs.rmSync(out, { force: true });
    await run('nbdcopy', [srv.uri(), out]);
    expect(sha256(out)).toBe(sha256(file));
  });

  it('NBD_ENGINE_NO_NATIVE=1 on the command line: the warning on stderr, holes read as data', async () => {
    const { file } = sparseImage('env.img', [[MiB, 64 * KiB]]);
    const socket = path.join(work, 'env.sock');
    const cli = await spawnCli(['serve', '--file', file, '--socket', socket], { NBD_ENGINE_NO_NATIVE: '1' });
    try {
      expect(cli.stderr()).toContain('warn: file env.img: no native sparse support (NBD_ENGINE_NO_NATIVE=1)');
      expect(await nbdinfoMap(cli.uris[0]!)).toEqual([[0, SIZE, 0]]);
    } finally {
      cli.child.kill('SIGTERM');
    }
  });

  it('the plugin (`file FILE native=false`) reaches the same switch', async () => {
    const { file } = sparseImage('plugin.img', [[MiB, 64 * KiB]]);
    const plugin = await BACKENDS.file!();
    const ctx = { logger: silentLogger, readOnly: false };
    const on = await plugin.create(readParams('file', plugin.params, [file], plugin.magic), ctx);
    const off = await plugin.create(readParams('file', plugin.params, [file, 'native=false'], plugin.magic), ctx);
    expect([(on as { sparse?: string }).sparse, (off as { sparse?: string }).sparse]).toEqual(['native', 'fallback']);
    expect(await on.extents?.(0, 2 * MiB, { reqOne: false, context: 'base:allocation' })).toEqual([{ length: MiB, flags: 3 }, { length: 64 * KiB, flags: 0 }, { length: MiB - 64 * KiB, flags: 3 }]);
    expect(off.extents).toBeUndefined();
    await on.close?.();
    await off.close?.();
  });
});

describe('file backend on a block device (a loop device over a sparse file)', () => {
  it('size from BLKGETSIZE64; TRIM discards and zeroing punches through to the backing file', async () => {
    requireTool('losetup');
    const backing = path.join(work, 'loop-backing.img');
    fs.rmSync(backing, { force: true });
    fs.writeFileSync(backing, crypto.randomBytes(16 * MiB));
    const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
    try {
      const lines: string[] = [];
      const backend = await fileBackend({ path: dev, logger: { info: (m) => lines.push(m), warn: (m) => lines.push(m), error: () => {} } });
      expect(lines).toEqual([`file ${path.basename(dev)}: native sparse support (block device: fallocate, BLKGETSIZE64, BLKDISCARD)`]);
      const srv = await serve({ exports: [{ name: '', backend }] });
      const got = await py(
        srv.uri(),
        `
        h = connect()
        out['flags'] = flags(h)
        out['trim'] = err(h.trim, ${2 * MiB}, 0)
        out['punch'] = err(h.zero, ${2 * MiB}, ${4 * MiB}, nbd.CMD_FLAG_FAST_ZERO)
        out['nohole'] = err(h.zero, ${MiB}, ${8 * MiB}, nbd.CMD_FLAG_NO_HOLE)
        h.flush()
        out['zeroes'] = h.pread(${2 * MiB}, ${4 * MiB}) == bytes(${2 * MiB}) and h.pread(${MiB}, ${8 * MiB}) == bytes(${MiB})
        `,
      );
      expect(got).toMatchObject({ flags: { size: 16 * MiB, trim: true, zero: true, fast_zero: true }, trim: null, punch: null, nohole: null, zeroes: true });
      // The loop driver turns discard and punching zeroes into holes in its backing file.
      expect(16 * MiB - allocated(backing)).toBeGreaterThanOrEqual(4 * MiB);
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
  });
});

describe('file backend on a block device: requests not aligned to its sectors', () => {
  it('TRIM succeeds (the aligned part discarded), WRITE_ZEROES zeroes exactly the range, FAST_ZERO with unaligned edges is ENOTSUP; the bytes around are kept', async () => {
    requireTool('losetup');
    const backing = path.join(work, 'loop-unaligned.img');
    fs.rmSync(backing, { force: true });
    const bytes = crypto.randomBytes(16 * MiB);
    fs.writeFileSync(backing, bytes);
    const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
    try {
      const srv = await serve({ exports: [{ name: '', backend: await fileBackend({ path: dev }) }] });
      // The export advertises a minimum block size of 1: a client may send any alignment.
      const got = await py(
        srv.uri(),
        `
        h = connect()
        out['min'] = h.get_block_size(nbd.SIZE_MINIMUM)
        out['trim'] = [err(h.trim, 1000, ${6 * MiB}), err(h.trim, 4096, ${6 * MiB} + 100), err(h.trim, ${MiB} + 3, ${7 * MiB} - 1)]
        out['zero'] = [err(h.zero, 1000, ${9 * MiB}), err(h.zero, ${MiB}, ${10 * MiB} + 100, nbd.CMD_FLAG_NO_HOLE), err(h.zero, 5000, ${12 * MiB} + 7, nbd.CMD_FLAG_FUA)]
        out['fast'] = [err(h.zero, 1000, ${13 * MiB}, nbd.CMD_FLAG_FAST_ZERO), err(h.zero, 8192, ${13 * MiB}, nbd.CMD_FLAG_FAST_ZERO)]
        h.flush()
        out['z1'] = h.pread(1000, ${9 * MiB}) == bytes(1000)
        out['z2'] = h.pread(${MiB}, ${10 * MiB} + 100) == bytes(${MiB})
        out['z3'] = h.pread(5000, ${12 * MiB} + 7) == bytes(5000)
        out['z4'] = h.pread(8192, ${13 * MiB}) == bytes(8192)
        out['around'] = [h.pread(16, ${9 * MiB} + 1000).hex(), h.pread(100, ${10 * MiB}).hex(), h.pread(16, ${11 * MiB} + 100).hex(), h.pread(7, ${12 * MiB}).hex(), h.pread(16, ${12 * MiB} + 5007).hex(), h.pread(16, ${13 * MiB} + 8192).hex()]
        `,
      );
      const hex = (at: number, n: number) => bytes.subarray(at, at + n).toString('hex');
      expect(got).toEqual({
        min: 1,
        trim: [null, null, null],
        zero: [null, null, null],
        fast: ['ENOTSUP', null],
        z1: true,
        z2: true,
        z3: true,
        z4: true,
        around: [hex(9 * MiB + 1000, 16), hex(10 * MiB, 100), hex(11 * MiB + 100, 16), hex(12 * MiB, 7), hex(12 * MiB + 5007, 16), hex(13 * MiB + 8192, 16)],
      });
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
  });
});

describe('file: a file that cannot be opened for writing', () => {
  it('is served read-only with one log line (nbdkit file does the same), not refused: an immutable file, by the library and by the CLI', async () => {
    requireTool('chattr');
    const dir = tmpDir();
    const img = path.join(dir, 'immutable.img');
    fs.writeFileSync(img, Buffer.alloc(1 << 20, 0x3c));
    execFileSync('chattr', ['+i', img]);
    try {
      const logs: string[] = [];
      const logger = { ...silentLogger, warn: (m: string) => logs.push(m) };
      const backend = await fileBackend({ path: img, logger });
      expect(backend.readOnly).toBe(true);
      expect(logs.filter((l) => l.includes('cannot be opened for writing'))).toEqual(['file immutable.img: cannot be opened for writing (EPERM): served read-only']);
      const srv = await serve({ exports: [{ name: '', backend }] });
      const out = await py(srv.uri(), `
        h = connect()
        out['ro'] = h.is_read_only()
        out['data'] = h.pread(4, 4096).hex()
        out['write'] = err(h.pwrite, b'x' * 512, 0)
      `);
      expect(out).toEqual({ ro: true, data: '3c3c3c3c', write: 'EPERM' });
      // The command line as nbdkit's `nbdkit file IMG`.
      const cli = await spawnCli(['serve', 'file', img, '-U', path.join(dir, 's.sock')]);
      try {
        const { stdout } = await run('nbdinfo', ['--json', cli.uris[0]!]);
        expect(JSON.parse(stdout).exports[0].is_read_only).toBe(true);
        expect(cli.stderr()).toMatch(/file immutable\.img: cannot be opened for writing \(EPERM\): served read-only/);
      } finally {
        cli.child.kill('SIGTERM');
        await new Promise((r) => cli.child.once('exit', r));
      }
    } finally {
      execFileSync('chattr', ['-i', img]);
    }
    expect(fs.readFileSync(img).equals(Buffer.alloc(1 << 20, 0x3c))).toBe(true);
  });
});
