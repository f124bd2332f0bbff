/**
 * Strict mode (issue 14): well-behaved real clients commit no protocol
 * violation. One strict server (memory export with block status, one with
 * TRIM / WRITE_ZEROES / FUA), `violations$` subscribed for the whole file;
 * after each client the list must still be empty, and nothing is logged as
 * a strict violation.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend, type Violation } from '../../src/index.js';
import { execFileP, requireTool, run, startServer, tmpDir, type Running } from './harness.js';
import { py } from './pylibnbd.js';

const MiB = 1 << 20;

describe('strict mode: well-behaved real clients commit no violation', () => {
  let srv: Running;
  const violations: Violation[] = [];
  const dir = tmpDir();
  beforeAll(async () => {
    for (const tool of ['nbdinfo', 'nbdcopy', 'nbdsh', 'qemu-img', 'qemu-io', 'qemu-nbd', 'nbd-client', 'fio']) requireTool(tool);
    srv = await startServer({ strict: true, exports: [{ name: 'disk', backend: memoryBackend({ size: 32 * MiB }) }] });
    srv.server.violations$.subscribe((v) => violations.push(v));
  });
  afterAll(async () => {
    await srv?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    // Violations of a closing connection are reported before it closes.
    while (srv.server.connectionCount > 0) await new Promise((r) => setTimeout(r, 10));
    expect(violations).toEqual([]);
    expect(srv.logs.filter((l) => l.includes(': strict: '))).toEqual([]);
  });

  it('nbdinfo: default, --list, --size, --map', async () => {
    expect((await run('nbdinfo', [srv.uri()])).stdout).toContain('export-size: 33554432');
    expect((await run('nbdinfo', ['--list', srv.uri()])).stdout).toContain('export="disk"');
    expect((await run('nbdinfo', ['--size', srv.uri()])).stdout.trim()).toBe(String(32 * MiB));
    expect((await run('nbdinfo', ['--map', srv.uri()])).stdout).toMatch(/^\s*0\s+33554432\s+\d+\s+/m);
  });

  it('nbdcopy in and out', async () => {
    const src = path.join(dir, 'src.img');
    const back = path.join(dir, 'back.img');
    const data = Buffer.alloc(4 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32BE(i, i);
    fs.writeFileSync(src, data);
    await run('nbdcopy', [src, srv.uri()]);
    await run('nbdcopy', [srv.uri(), back]);
    expect(fs.readFileSync(back).subarray(0, data.length).equals(data)).toBe(true);
  });

  it('python3-libnbd: reads, writes, flush, trim, zero, block status with structured replies', async () => {
    const out = await py<{ sr: boolean; read: boolean; extents: number }>(
      srv.uri(),
      `
      h = connect()
      out['sr'] = h.get_structured_replies_negotiated()
      h.pwrite(b'\\x5a' * 65536, 65536, nbd.CMD_FLAG_FUA)
      out['read'] = h.pread(65536, 65536) == b'\\x5a' * 65536
      h.flush()
      h.trim(65536, 0)
      h.zero(65536, 131072)
      out['extents'] = len(extents(h, MiB, 0)['extents'])
      h.shutdown()
      `.replace(/MiB/g, String(MiB)),
    );
    expect(out.sr).toBe(true);
    expect(out.read).toBe(true);
    expect(out.extents).toBeGreaterThan(0);
  });

  it('nbdsh', async () => {
    const { stdout } = await run('nbdsh', ['-u', srv.uri(), '-c', 'h.pwrite(b"ab" * 256, 0); print(h.pread(4, 0))'], {
      // nbdsh runs the first python3 on PATH: Debian's has the binding.
      env: { PATH: `/usr/bin:${process.env.PATH ?? ''}` },
    });
    expect(stdout.trim()).toBe("bytearray(b'abab')");
  });

  it('qemu-img info and convert both ways, qemu-io', async () => {
    expect((await run('qemu-img', ['info', '-f', 'raw', srv.uri()])).stdout).toContain('virtual size: 32 MiB');
    const img = path.join(dir, 'q.img');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri(), img]);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, srv.uri()]);
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 1M 64k', '-c', 'read -P 0x42 1M 64k', '-c', 'flush', srv.uri()]);
    expect(io.stdout).toContain('read 65536/65536 bytes');
  });

  it('more clients: qemu-img map, qemu-nbd -L, nbd-client -l', async () => {
    expect(JSON.parse((await run('qemu-img', ['map', '--output=json', srv.uri()])).stdout)).not.toHaveLength(0);
    expect((await run('qemu-nbd', ['-L', '-k', srv.socket])).stdout).toContain("export: 'disk'");
    const { stdout } = await execFileP(requireTool('nbd-client'), ['-l', '-unix', srv.socket], { timeout: 30_000 });
    expect(stdout).toContain('disk');
  });

  it('fio nbd engine: a short 4k randrw run', async () => {
    const { stdout } = await run(
      'fio',
      ['--ioengine=nbd', `--uri=${srv.uri()}`, '--name=s', '--rw=randrw', '--bs=4k', '--iodepth=8', '--size=4M', '--io_size=4M', '--output-format=json'],
      { timeout: 60_000 },
    );
    expect((JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number }> }).jobs[0]!.error).toBe(0);
  });
});
