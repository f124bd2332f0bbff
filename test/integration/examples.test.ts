/**
 * The examples (examples/*.ts) export start(): run them in-process and hit
 * them with real clients.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as simple from '../../examples/simple-in-memory.js';
import * as fileServer from '../../examples/file-server.js';
import { nbdPython, requirePythonNbd, requireTool, run, tmpDir } from './harness.js';

type Server = Awaited<ReturnType<typeof fileServer.start>>;

let work: string;
let server: Server | undefined;
beforeAll(() => {
  requireTool('nbdinfo');
  requireTool('qemu-io');
  requirePythonNbd();
  work = tmpDir();
});
afterEach(async () => {
  await server?.close({ timeout: 2000 });
  server = undefined;
});
afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('examples/simple-in-memory', () => {
  it('nbdinfo, qemu-io patterns and libnbd I/O against the request-stream server', async () => {
    server = simple.start();
    const sock = path.join(work, 'simple.sock');
    const [r] = await server.listen({ path: sock });
    const uri = `nbd+unix:///test?socket=${sock}`;
    expect(r!.uris).toContain(uri);
    const { stdout } = await run('nbdinfo', ['--json', uri]);
    const info = JSON.parse(stdout) as { exports: Array<Record<string, unknown>> };
    expect(info.exports[0]).toMatchObject({
      'export-name': 'test',
      'export-size': simple.SIZE,
      description: '100 MB in memory',
      is_read_only: false,
      can_flush: true,
      can_trim: true,
      can_zero: true,
      can_fua: true,
    });
    const io = await run('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 0 64k',
      '-c', 'read -P 0xab 0 64k',
      '-c', 'write -P 0x12 50M 1M',
      '-c', 'read -P 0x12 50M 1M',
      '-c', 'write -z 50M 4k',
      '-c', 'read -P 0 50M 4k',
      '-c', 'read -P 0 90M 64k',
      '-c', 'flush',
      uri,
    ]);
    expect(io.stdout).not.toMatch(/Pattern verification failed/);
    // Unaligned I/O and the unaligned end of the 100 000 000-byte export, through libnbd.
    const out = await nbdPython(`
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
size = h.get_size(); print(size)
data = bytes(range(256)) * 3 + b'xyz'
h.pwrite(data, size - len(data))
print(h.pread(len(data), size - len(data)) == data)
h.trim(65536, 0)
print(h.pread(16, 0).hex())
h.shutdown()`, [uri]);
    expect(out.trim().split('\n')).toEqual([String(simple.SIZE), 'True', '00'.repeat(16)]);
  });
});

describe('examples/file-server', () => {
  it('serves a file writable: qemu-io writes land in the file', async () => {
    const file = path.join(work, 'disk.img');
    const data = crypto.randomBytes(2 * 1024 * 1024);
    fs.writeFileSync(file, data);
    server = await fileServer.start(file);
    const sock = path.join(work, 'file.sock');
    await server.listen({ path: sock });
    const uri = `nbd+unix:///disk?socket=${sock}`;
    const size = await run('nbdinfo', ['--size', uri]);
    expect(size.stdout.trim()).toBe(String(data.length));
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xcd 1M 128k', '-c', 'read -P 0xcd 1M 128k', uri]);
    const expected = Buffer.from(data);
    expected.fill(0xcd, 1024 * 1024, 1024 * 1024 + 128 * 1024);
    expect(fs.readFileSync(file).equals(expected)).toBe(true);
  });

  it('read-only: writes fail with EPERM, the file is unchanged', async () => {
    const file = path.join(work, 'ro.img');
    const data = crypto.randomBytes(1024 * 1024);
    fs.writeFileSync(file, data);
    server = await fileServer.start(file, { readOnly: true, name: 'ro' });
    const sock = path.join(work, 'ro.sock');
    await server.listen({ path: sock });
    const uri = `nbd+unix:///ro?socket=${sock}`;
    const out = await nbdPython(`
import errno, sys, nbd
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1])
print(h.is_read_only())
try:
    h.pwrite(b'x' * 512, 0); print('wrote')
except nbd.Error as e:
    print(errno.errorcode.get(e.errno, e.errno))
print(h.pread(8, 0).hex())
h.shutdown()`, [uri]);
    expect(out.trim().split('\n')).toEqual(['True', 'EPERM', data.subarray(0, 8).toString('hex')]);
    expect(fs.readFileSync(file).equals(data)).toBe(true);
  });
});
