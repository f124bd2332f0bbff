/**
 * The everyday backends (null, zero, pattern, data, sparse-random) with real
 * clients, and against nbdkit 1.32's plugins of the same names: the same
 * bytes (sha256 of what nbdcopy reads) where ours are meant to be
 * byte-identical, the same advertised flags, the same answers to writes.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dataBackend, nullBackend, patternBackend, sparseRandomBackend, zeroBackend, type Backend } from '../../../src/index.js';
import { backendPlugin } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { py } from '../pylibnbd.js';
import { execFileP, requireTool, run, serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** Everything nbdcopy reads from a URI. */
async function copyOut(uri: string): Promise<Buffer> {
  requireTool('nbdcopy');
  const { stdout } = await execFileP('nbdcopy', [uri, '-'], { encoding: 'buffer', maxBuffer: 256 * MiB, timeout: 60_000 });
  return stdout;
}

/** Everything nbdcopy reads from nbdkit serving `args` (nbdkit -U - … --run). */
async function nbdkitBytes(args: string[]): Promise<Buffer> {
  requireTool('nbdkit');
  requireTool('nbdcopy');
  const { stdout } = await execFileP('nbdkit', ['-U', '-', ...args, '--run', 'nbdcopy "$uri" -'], { encoding: 'buffer', maxBuffer: 256 * MiB, timeout: 60_000 });
  return stdout;
}

/** python3-libnbd `body` run against nbdkit serving `args` (the script gets nbdkit's URI). */
async function nbdkitPy<T>(args: string[], body: string): Promise<T> {
  requireTool('nbdkit');
  const dir = tmpDir();
  const sock = path.join(dir, 'nbdkit.sock');
  const { spawn } = await import('node:child_process');
  const child = spawn('nbdkit', ['-f', '-U', sock, ...args], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
    return await py<T>(`nbd+unix:///?socket=${sock}`, body);
  } finally {
    child.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Our backend served on its own. */
async function ours(backend: Backend): Promise<string> {
  const srv = await serve({ exports: [{ name: '', backend }] });
  return srv.uri();
}

/** The flags both servers should agree on (all but block sizes: nbdkit's plugins send none). */
const FLAGS = `f = flags(h); out = {k: f[k] for k in ('size', 'read_only', 'flush', 'fua', 'trim', 'zero', 'fast_zero', 'cache', 'df', 'multi_conn', 'rotational')}`;

describe('pattern', () => {
  for (const size of [8 * 1000, 1001, 3 * MiB + 5]) {
    it(`is nbdkit pattern's bytes (size ${size})`, async () => {
      const mine = await copyOut(await ours(patternBackend({ size })));
      expect(mine.length).toBe(size);
      expect(sha(mine)).toBe(sha(await nbdkitBytes(['pattern', String(size)])));
    });
  }

  it('reads at unaligned offsets around 4 GiB as nbdkit does, and advertises the same', async () => {
    const body = `h = connect(); ${FLAGS}; out['at'] = h.pread(29, 2**32 - 13).hex(); out['tail'] = h.pread(3, 5 * 2**30 - 3).hex()`;
    const mine = await py(await ours(patternBackend({ size: 5 * 2 ** 30 })), body);
    const theirs = await nbdkitPy(['pattern', '5G'], body);
    expect(mine).toEqual(theirs);
    expect((mine as { read_only: boolean }).read_only).toBe(true);
  });
});

describe('null and zero', () => {
  it('null: zeroes, writes accepted and discarded, one hole+zero extent; flags as nbdkit null', async () => {
    const body = `
      h = connect()
      ${FLAGS}
      h.pwrite(b'\\x5a' * 4096, 8192)
      out['read'] = h.pread(4096, 8192) == bytes(4096)
      out['zero'] = err(h.zero, 4096, 0)
      out['trim'] = err(h.trim, 4096, 0)
      out['extents'] = extents(h, 3 * 2**20, 0)['extents']`;
    const mine = await py<Record<string, unknown>>(await ours(nullBackend({ size: 3 * MiB })), body);
    expect(mine).toMatchObject({ read: true, zero: null, trim: null, extents: [[3 * MiB, 3]] });
    expect(mine).toEqual(await nbdkitPy(['null', '3M'], body));
  });

  it('zero: an empty read-only disk, as nbdkit zero', async () => {
    const body = `h = connect(); ${FLAGS}`;
    const mine = await py(await ours(zeroBackend()), body);
    expect(mine).toMatchObject({ size: 0, read_only: true });
    expect(mine).toEqual(await nbdkitPy(['zero'], body));
    const info = await run('nbdinfo', ['--size', await ours(zeroBackend())]);
    expect(info.stdout.trim()).toBe('0');
  });
});

describe('data', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'blob');
  fs.writeFileSync(file, Buffer.from('a file of 24 bytes......'));
  const mbr = `
    @0x1be    # MBR first partition entry
      0       # Partition status
      0 2 0   # CHS start
      0x83    # Partition type (Linux)
      0x20 0x20 0 # CHS last sector
      le32:1  # LBA first sector
      le32:0x7ff  # LBA number of sectors
    @0x1fe    # Boot signature
      0x55 0xaa`;
  const cases: Array<{ args: Record<string, string> }> = [
    { args: { data: '0 1 2 3 @0x1fe 0x55 0xaa' } },
    { args: { data: ' ( 0x55 0xAA )*2048 ' } },
    { args: { data: ' ( "Hello" )*2000 ', size: '8192' } },
    { args: { data: mbr, size: '1M' } },
    { args: { data: '0 1 2 3 @^0x200 @-2 le16:0xaa55' } },
    { args: { data: '(1 @4)*3 1 (2 @-1) 3 "abc"[1:] (1 @8)[2:5] 7' } },
    { args: { data: ' ( 0x55 0xAA ) -> \\boot-signature ( @0x1fe \\boot-signature ) -> \\sector \\sector \\sector ' } },
    { args: { data: '( 1 @65536 ) * 100 be64:0x0102030405060708 010 0x7f "q\\"\\n"*3' } },
    { args: { data: `<${file} @^512 <${file}[4:8]*3 @^512` } },
    { args: { data: `</dev/zero[:4096]*2 1 <${file}[:5]` } },
    { args: { raw: 'Hello, world!' } },
    { args: { base64: 'MTIz', size: '1M' } },
    { args: { data: '1 2 3', size: '2' } },
  ];
  for (const { args } of cases) {
    const pairs = Object.entries(args).map(([k, v]) => `${k}=${v}`);
    it(`is nbdkit data's bytes for ${JSON.stringify(pairs).slice(0, 90)}`, async () => {
      const plugin = await backendPlugin('data');
      const backend = await plugin.create(readParams('data', plugin.params, pairs, plugin.magic), { logger: silentLogger, readOnly: false });
      const mine = await copyOut(await ours(backend));
      const theirs = await nbdkitBytes(['data', ...pairs]);
      expect(mine.length).toBe(theirs.length);
      expect(sha(mine)).toBe(sha(theirs));
    });
  }

  it('is writable in memory, with the flags of nbdkit data; read-only on request', async () => {
    const body = `
      h = connect()
      ${FLAGS}
      if not h.is_read_only():
          h.pwrite(b'xyz', 1)
          h.zero(2, 5)
      out['head'] = h.pread(8, 0).hex()`;
    const mine = await py<Record<string, unknown>>(await ours(dataBackend({ data: '1 2 3 4 5 6 7 8' })), body);
    expect(mine.head).toBe('0178797a05000008');
    expect(mine).toEqual(await nbdkitPy(['data', '1 2 3 4 5 6 7 8'], body));
    const ro = await py<Record<string, unknown>>(await ours(dataBackend({ data: '1 2 3 4 5 6 7 8', readOnly: true })), body);
    expect(ro).toMatchObject({ read_only: true, head: '0102030405060708' });
  });

  it('qemu-img compare: the data disk equals a file of the same bytes', async () => {
    const img = path.join(dir, 'same.img');
    const bytes = Buffer.alloc(2 * MiB);
    bytes.write('boot', 0x1fa);
    bytes[MiB + 7] = 0xee;
    fs.writeFileSync(img, bytes);
    const uri = await ours(dataBackend({ data: '@0x1fa "boot" @1048583 0xee', size: 2 * MiB }));
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri]);
    expect(cmp.stdout).toContain('Images are identical');
  });
});

describe('sparse-random', () => {
  const opts = { size: 64 * MiB, seed: 42, percent: 30, runlength: 256 * 1024 };

  it('is the same bytes for the same seed (two instances), different for another seed', async () => {
    const a = await copyOut(await ours(sparseRandomBackend(opts)));
    const b = await copyOut(await ours(sparseRandomBackend(opts)));
    const c = await copyOut(await ours(sparseRandomBackend({ ...opts, seed: 43 })));
    expect(a.length).toBe(64 * MiB);
    expect(sha(a)).toBe(sha(b));
    expect(sha(a)).not.toBe(sha(c));
  });

  it('a BLOCK_STATUS over 1 TiB of 4 KiB runs gets the maxExtents cap: that many extents, less than asked, and the rest on asking again', async () => {
    // 2^28 runs: computing them all (as before the cap) held the event loop for minutes and GiBs of memory.
    const backend = sparseRandomBackend({ size: 2 ** 40, seed: 1, percent: 50, runlength: 4096 });
    const srv = await serve({ exports: [{ name: '', backend }], limits: { maxExtents: 1000 } });
    const out = await py<{ first: number; covered: number; next: number; nextOffset: number; asked: number }>(
      srv.uri(),
      `
      h = connect()
      a = extents(h, 2**32 - 4096, 0)['extents']
      covered = sum(l for l, f in a)
      b = extents(h, 2**32 - 4096, covered)
      out = {'first': len(a), 'covered': covered, 'next': len(b['extents']), 'nextOffset': b['offset'], 'asked': 2**32 - 4096}`,
    );
    expect(out.first).toBe(1000);
    expect(out.covered).toBeGreaterThan(0);
    expect(out.covered).toBeLessThan(out.asked);
    expect(out.nextOffset).toBe(out.covered);
    expect(out.next).toBe(1000);
  });

  it('reports its holes in BLOCK_STATUS: they read as zeroes, data blocks as one non-zero byte, about percent% data', async () => {
    const out = await py<{ extents: [number, number][]; ok: boolean }>(
      await ours(sparseRandomBackend(opts)),
      `
      h = connect()
      ex = extents(h, 64 * 2**20, 0)['extents']
      ok, pos = True, 0
      for length, flags in ex:
          b = h.pread(min(length, 8192), pos)
          if flags == 3: ok = ok and b == bytes(len(b))
          else: ok = ok and len(set(b[:4096])) == 1 and b[0] != 0
          pos += length
      out = {'extents': ex, 'ok': ok}`,
    );
    expect(out.ok).toBe(true);
    const data = out.extents.filter(([, f]) => f === 0).reduce((s, [l]) => s + l, 0);
    expect(out.extents.some(([, f]) => f === 3)).toBe(true);
    expect(out.extents.filter(([, f]) => f === 0).length).toBeGreaterThan(10);
    expect(data / (64 * MiB)).toBeGreaterThan(0.15);
    expect(data / (64 * MiB)).toBeLessThan(0.45);
    for (const [l] of out.extents) expect(l % 4096).toBe(0);
  });

  it('writes must match and only holes may be zeroed (EIO otherwise), as nbdkit sparse-random; same flags', async () => {
    const body = `
      h = connect()
      ${FLAGS}
      ex = extents(h, h.get_size(), 0)['extents']
      pos, data, hole = 0, None, None
      for length, fl in ex:
          if fl == 0 and data is None: data = pos
          if fl == 3 and hole is None: hole = pos
          pos += length
      b = h.pread(8192, data)
      out['same'] = err(h.pwrite, b, data)
      out['differs'] = err(h.pwrite, b'\\x01' * 512, data)
      out['zeroes_on_hole'] = err(h.pwrite, bytes(512), hole)
      out['bytes_on_hole'] = err(h.pwrite, b'\\x01' * 512, hole)
      out['zero_hole'] = err(h.zero, 512, hole)
      out['zero_data'] = err(h.zero, 512, data)
      out['trim_data'] = err(h.trim, 512, data)
      out['flush'] = err(h.flush)`;
    const mine = await py<Record<string, unknown>>(await ours(sparseRandomBackend(opts)), body);
    expect(mine).toMatchObject({ same: null, differs: 'EIO', zeroes_on_hole: null, bytes_on_hole: 'EIO', zero_hole: null, zero_data: 'EIO', trim_data: 'EIO' });
    const theirs = await nbdkitPy(['sparse-random', String(opts.size), 'seed=1', 'percent=30', `runlength=${opts.runlength}`], body);
    expect(mine).toEqual(theirs);
  });

  it('nbdinfo --map --totals of a 1 TiB disk: about percent% data, the rest hole+zero (as nbdkit sparse-random 1T)', async () => {
    const uri = await ours(sparseRandomBackend({ size: 2 ** 40, seed: 3, percent: 10 }));
    const { stdout } = await run('nbdinfo', ['--map', '--totals', uri]);
    // "   108714250240   9.9%   0 data" / "990797377536  90.1%   3 hole,zero"
    const rows = stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
    const bytesOf = (type: string) => Number(rows.find((r) => r[2] === type)?.[0] ?? 0);
    expect(bytesOf('0') + bytesOf('3')).toBe(2 ** 40);
    expect(bytesOf('0') / 2 ** 40).toBeGreaterThan(0.08);
    expect(bytesOf('0') / 2 ** 40).toBeLessThan(0.12);
  });

  it('nbdcopy copies it onto itself (every write matches), and qemu-img compare finds a copy identical', async () => {
    const uri = await ours(sparseRandomBackend({ ...opts, randomContent: true }));
    await run('nbdcopy', [uri, uri]);
    const img = path.join(tmpDir(), 'copy.img');
    await run('nbdcopy', [uri, img]);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri]);
    expect(cmp.stdout).toContain('Images are identical');
    fs.rmSync(path.dirname(img), { recursive: true, force: true });
  });
});
