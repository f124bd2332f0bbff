/**
 * Every backend through the real CLI in nbdkit's syntax (`nbd-engine serve
 * -U - BACKEND key=value --run CMD`), checked with real clients and, where
 * the result is defined by nbdkit, against `nbdkit` run with the same words.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTool, tmpDir } from './harness.js';
import { both, engine, nbdkit, outOf, pyCommand } from './cli-toolkit-support.js';

let work: string;
beforeAll(() => {
  for (const t of ['nbdinfo', 'nbdcopy', 'qemu-io', 'nbdkit']) requireTool(t);
  work = tmpDir('cli-toolkit-');
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** What python3-libnbd sees of an export: its flags and the sha256 of its bytes. */
const describeExport = () =>
  pyCommand(
    work,
    `
    import hashlib
    h = connect()
    out['flags'] = flags(h)
    size = h.get_size()
    out['sha'] = hashlib.sha256(h.pread(size, 0) if size else b'').hexdigest()
    `,
  );

describe('backends: the same command line as nbdkit, the same export', () => {
  it('memory 1M: size, flags and writes read back, as nbdkit', async () => {
    const cmd = pyCommand(
      work,
      `
      h = connect()
      out['flags'] = flags(h)
      h.pwrite(b'\\x5a' * 4096, 8192)
      out['back'] = h.pread(3, 8191).hex()
      `,
    );
    const { ours, kit } = await both(['memory', '1M'], cmd);
    expect(ours.code, ours.stderr).toBe(0);
    expect(outOf(ours)).toMatchObject({ back: '005a5a', flags: { size: 1 << 20, read_only: false, trim: true, zero: true } });
    // Block sizes are our server's own (nbdkit's memory plugin advertises none).
    const strip = (o: Record<string, unknown>) => ({ ...o, flags: { ...(o.flags as object), block_size: null } });
    expect(strip(outOf(ours))).toEqual(strip(outOf(kit)));
  });

  it('file disk.img: the file\'s bytes, and a write reaches the file, as nbdkit', async () => {
    const img = path.join(work, 'file.img');
    const bytes = Buffer.alloc(256 << 10);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
    fs.writeFileSync(img, bytes);
    const copy = path.join(work, 'file-kit.img');
    fs.copyFileSync(img, copy);
    const cmd = 'nbdcopy "$uri" - | sha256sum && qemu-io -f raw -c "write -P 0x77 4k 4k" "$uri" >/dev/null';
    const [ours, kit] = await Promise.all([engine(['file', img], cmd), nbdkit(['file', copy], cmd)]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(kit.stdout);
    expect(fs.readFileSync(img).equals(fs.readFileSync(copy))).toBe(true);
    expect(fs.readFileSync(img).subarray(4096, 8192).equals(Buffer.alloc(4096, 0x77))).toBe(true);
  });

  it('memory 1M allocator=sparse|zstd and data … allocator=sparse: nbdkit\'s key is taken, the same map as nbdkit; allocator=malloc is refused in one line', async () => {
    const cmd = 'qemu-io -f raw -c "write -P 1 0 64k" "$uri" >/dev/null && nbdinfo --map "$uri"';
    for (const a of ['sparse', 'zstd']) {
      const { ours, kit } = await both(['memory', '1M', `allocator=${a}`], cmd);
      expect(ours.code, ours.stderr).toBe(0);
      expect(ours.stdout, a).toBe(kit.stdout);
      expect(ours.stdout).toMatch(/^\s+0\s+65536\s+0\s+data\n/);
    }
    const data = await both(['data', '1 2 3', 'allocator=sparse'], 'nbdcopy "$uri" - | od -An -tx1');
    expect(data.ours.code, data.ours.stderr).toBe(0);
    expect(data.ours.stdout).toBe(data.kit.stdout);
    const malloc = await engine(['memory', '1M', 'allocator=malloc'], 'true');
    expect(malloc.code).toBe(2);
    expect(malloc.stderr.trim()).toBe('nbd-engine: memory: allocator=malloc: expected one of sparse, zstd');
  });

  it('null 1M: zeroes, writes accepted and discarded, the same flags as nbdkit', async () => {
    const cmd = pyCommand(
      work,
      `
      h = connect()
      out['flags'] = flags(h)
      h.pwrite(b'\\x11' * 512, 0)
      out['back'] = h.pread(512, 0) == bytes(512)
      out['extents'] = extents(h, 1 << 20, 0)
      `,
    );
    const { ours, kit } = await both(['null', '1M'], cmd);
    expect(ours.code, ours.stderr).toBe(0);
    expect(outOf(ours)).toMatchObject({ back: true, flags: { size: 1 << 20, read_only: false } });
    const strip = (o: Record<string, unknown>) => ({ ...o, flags: { ...(o.flags as object), block_size: null } });
    expect(strip(outOf(ours))).toEqual(strip(outOf(kit)));
  });

  it('null with no size and zero: empty exports as nbdkit\'s', async () => {
    for (const args of [['null'], ['zero']]) {
      const { ours, kit } = await both(args, 'nbdinfo --json "$uri"');
      expect(ours.code, `${args.join(' ')}: ${ours.stderr}`).toBe(0);
      const pick = (s: string) => {
        const e = (JSON.parse(s) as { exports: Record<string, unknown>[] }).exports[0]!;
        return { size: e['export-size'], ro: e.is_read_only, trim: e.can_trim, zero: e.can_zero, flush: e.can_flush };
      };
      expect(pick(ours.stdout), args.join(' ')).toEqual(pick(kit.stdout));
      expect(pick(ours.stdout).size).toBe(0);
    }
  });

  it('pattern 1M: the bytes and flags of nbdkit\'s pattern; pattern 1G ends with its own offset', async () => {
    const { ours, kit } = await both(['pattern', '1M'], describeExport());
    expect(ours.code, ours.stderr).toBe(0);
    expect(outOf(ours)).toMatchObject({ flags: { size: 1 << 20, read_only: true } });
    const strip = (o: Record<string, unknown>) => ({ ...o, flags: { ...(o.flags as object), block_size: null } });
    expect(strip(outOf(ours))).toEqual(strip(outOf(kit)));
    const big = await both(['pattern', '1G'], 'nbdinfo --size "$uri" && qemu-io -r -f raw -c "read -v 1073741816 8" "$uri" | head -1');
    expect(big.ours.code, big.ours.stderr).toBe(0);
    expect(big.ours.stdout).toBe(big.kit.stdout);
    expect(big.ours.stdout).toContain('1073741824\n');
    expect(big.ours.stdout).toContain('00 00 00 00 3f ff ff f8');
  });

  it('data "1 2 3 @512 4" and a richer expression: nbdkit\'s bytes', async () => {
    for (const args of [['data', '1 2 3 @512 4'], ['data', '(0x55 0xAA)*4 @0x100 "hello" @^4096 0xff'], ['data', 'size=2k', 'data=@1000 9']]) {
      const expr = args.join(' ');
      const { ours, kit } = await both(args, 'nbdinfo --size "$uri" && nbdcopy "$uri" - | od -An -tx1 -v | sha256sum');
      expect(ours.code, `${expr}: ${ours.stderr}`).toBe(0);
      expect(kit.code, kit.stderr).toBe(0);
      expect(ours.stdout, expr).toBe(kit.stdout);
    }
    const r = await engine(['data', '1 2 3 @512 4'], 'nbdcopy "$uri" - | od -An -tx1 -v');
    const bytes = r.stdout.split(/\s+/).filter(Boolean);
    expect(bytes.length).toBe(513);
    expect([...bytes.slice(0, 4), bytes[512]]).toEqual(['01', '02', '03', '00', '04']);
  });

  it('-r sparse-random 1G seed=1: read-only, 1 GiB, the same disk for the same seed, another for another', async () => {
    const ro = await engine(['-r', 'sparse-random', '1G', 'seed=1'], 'nbdinfo --json "$uri"');
    expect(ro.code, ro.stderr).toBe(0);
    const e = (JSON.parse(ro.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
    expect([e['export-size'], e.is_read_only]).toEqual([2 ** 30, true]);
    // Small runs so 4 MiB has many extents (nbdkit's runlength takes a plain number).
    const args = (seed: number) => ['-r', 'sparse-random', '4M', `seed=${seed}`, 'runlength=65536', 'percent=50'];
    const cmd = 'nbdinfo --map "$uri" && nbdcopy "$uri" - | sha256sum';
    const [a, b, c] = await Promise.all([engine(args(1), cmd), engine(args(1), cmd), engine(args(2), cmd)]);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toBe(b.stdout);
    expect(a.stdout).not.toBe(c.stdout);
    // Roughly percent=50 of the disk is data (the seed fixes the layout, so this cannot flap).
    const data = a.stdout
      .split('\n')
      .filter((l) => /\bdata$/.test(l))
      .reduce((n, l) => n + Number(l.trim().split(/\s+/)[1]), 0);
    expect(data).toBeGreaterThan((4 << 20) * 0.25);
    expect(data).toBeLessThan((4 << 20) * 0.75);
    // Writes that match the data are accepted, as nbdkit's: a copy onto itself without -r.
    const w = await engine(['sparse-random', '4M', 'seed=1', 'runlength=65536', 'percent=50'], 'nbdcopy "$uri" "$uri" && echo copied');
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).toContain('copied');
  });
});
