/**
 * fileBackend: writes through qemu-io land in the file; read-only exports
 * refuse writes with EPERM (checked on the wire, with libnbd's client-side
 * checks off) and leave the file untouched.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fileBackend } from '../../src/index.js';
import { nbdPython, requirePythonNbd, requireTool, run, startServer, tmpDir, type Running } from './harness.js';

const SIZE = 4 * 1024 * 1024;

/** Try WRITE, WRITE_ZEROES and TRIM with libnbd's strict checks off, so the server must answer. */
const TRY_WRITES = `
import errno, sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
print('read_only', h.is_read_only())
for name, op in (('pwrite', lambda: h.pwrite(b'\\x01' * 4096, 8192)),
                 ('zero', lambda: h.zero(4096, 0)),
                 ('trim', lambda: h.trim(4096, 0))):
    try:
        op()
        print(name, 'OK')
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
# The connection is still usable after the refusals.
print('read', h.pread(16, 0).hex())
h.shutdown()
`;

let work: string;
let srv: Running | undefined;
beforeAll(() => {
  requireTool('qemu-io');
  requirePythonNbd();
  work = tmpDir();
  return () => fs.rmSync(work, { recursive: true, force: true });
});
afterEach(async () => {
  await srv?.close();
  srv = undefined;
});

function freshFile(name: string): { file: string; data: Buffer } {
  const file = path.join(work, name);
  const data = crypto.randomBytes(SIZE);
  fs.writeFileSync(file, data);
  return { file, data };
}

describe('file backend', () => {
  it('qemu-io writes land in the file', async () => {
    const { file, data } = freshFile('rw.img');
    srv = await startServer({ exports: [{ name: 'f', backend: await fileBackend({ path: file }) }] });
    const info = await run('nbdinfo', ['--size', srv.uri()]);
    expect(info.stdout.trim()).toBe(String(SIZE));
    const { stdout } = await run('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 1M 64k',
      '-c', 'write -P 0x3c 12345 777',
      '-c', 'write -f -P 0x99 2M 4k', // FUA
      '-c', 'flush',
      '-c', 'read -P 0xab 1M 64k',
      srv.uri(),
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    // After qemu-io disconnected, the file holds exactly those bytes.
    const expected = Buffer.from(data);
    expected.fill(0xab, 1024 * 1024, 1024 * 1024 + 65536);
    expected.fill(0x3c, 12345, 12345 + 777);
    expected.fill(0x99, 2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
    const onDisk = fs.readFileSync(file);
    expect(onDisk.length).toBe(SIZE);
    expect(onDisk.equals(expected)).toBe(true);
    // And the server reads back what is in the file (untouched areas too).
    const py = await nbdPython(`
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
print(h.pread(32, 12340).hex()); print(h.pread(32, 3 * 1024 * 1024).hex())
h.shutdown()`, [srv.uri()]);
    const [a, b] = py.trim().split('\n');
    expect(a).toBe(expected.subarray(12340, 12372).toString('hex'));
    expect(b).toBe(expected.subarray(3 * 1024 * 1024, 3 * 1024 * 1024 + 32).toString('hex'));
    await srv.close();
    srv = undefined;
    expect(fs.readFileSync(file).equals(expected)).toBe(true);
  });

  for (const variant of ['fileBackend({ readOnly: true })', 'export readOnly: true'] as const) {
    it(`a read-only export refuses writes with EPERM and the file is unchanged (${variant})`, async () => {
      const { file, data } = freshFile(`ro-${variant.length}.img`);
      const backend = await fileBackend({ path: file, readOnly: variant.startsWith('fileBackend') });
      srv = await startServer({ exports: [{ name: 'ro', backend, readOnly: true }] });
      const out = await nbdPython(TRY_WRITES, [srv.uri()]);
      expect(out).toContain('read_only True');
      expect(out).toContain('pwrite EPERM');
      expect(out).toContain('zero EPERM');
      expect(out).toContain('trim EPERM');
      expect(out).toContain(`read ${data.subarray(0, 16).toString('hex')}`);
      // qemu-io: opening read-write or writing fails.
      const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 64k', srv.uri()]).then(
        (r) => ({ ok: true, text: r.stdout + r.stderr }),
        (e: { stdout?: string; stderr?: string }) => ({ ok: false, text: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
      );
      expect(io.ok).toBe(false);
      expect(io.text).toMatch(/Operation not permitted|read-only|Permission denied/i);
      expect(io.text).not.toMatch(/wrote 65536/);
      expect(fs.readFileSync(file).equals(data)).toBe(true);
    });
  }
});
