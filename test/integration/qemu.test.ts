/**
 * qemu-img / qemu-io against our server over UNIX and TCP sockets.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, memoryBackend, type NbdServer } from '../../src/index.js';
import { recordingLogger, requireTool, run, startServer, tmpDir, type Running } from './harness.js';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 8 * MiB;

/** Random data with zero regions (a whole MiB, a sub-page hole, the tail). */
function makeImage(file: string): Buffer {
  const data = crypto.randomBytes(IMAGE_SIZE);
  data.fill(0, 1 * MiB, 2 * MiB);
  data.fill(0, 3 * MiB + 4096, 3 * MiB + 12288);
  data.fill(0, 5 * MiB + 17, 5 * MiB + 70000);
  data.fill(0, IMAGE_SIZE - 512 * 1024);
  fs.writeFileSync(file, data);
  return data;
}

describe('qemu over a UNIX socket', () => {
  let srv: Running;
  let work: string;
  beforeAll(async () => {
    requireTool('qemu-img');
    requireTool('qemu-io');
    work = tmpDir();
    srv = await startServer({
      exports: [
        { name: 'disk', size: IMAGE_SIZE, backend: memoryBackend({ size: IMAGE_SIZE }) },
        { name: 'scratch', size: 4 * MiB, backend: memoryBackend({ size: 4 * MiB }) },
      ],
    });
  });
  afterAll(async () => {
    await srv?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('qemu-img info reports the virtual size', async () => {
    const { stdout } = await run('qemu-img', ['info', '--output=json', srv.uri('disk')]);
    const info = JSON.parse(stdout) as { 'virtual-size': number; format: string };
    expect(info['virtual-size']).toBe(IMAGE_SIZE);
    expect(info.format).toBe('raw');
  });

  it('qemu-img convert in and out is byte-identical', async () => {
    const src = path.join(work, 'src.img');
    const back = path.join(work, 'back.img');
    makeImage(src);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, srv.uri('disk')]);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri('disk'), back]);
    expect(fs.statSync(back).size).toBe(IMAGE_SIZE);
    await run('cmp', [src, back]);
    const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, srv.uri('disk')]);
    expect(stdout).toContain('Images are identical');
  });

  it('qemu-io write/read patterns, and never-written areas read as zero', async () => {
    const uri = srv.uri('scratch');
    const { stdout } = await run('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 0 64k',
      '-c', 'read -P 0xab 0 64k',
      '-c', 'write -P 0x5c 100000 3000',
      '-c', 'read -P 0x5c 100000 3000',
      '-c', 'read -P 0 1M 64k',
      '-c', 'read -P 0 4032k 64k',
      uri,
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(stdout.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(4);
    // A mismatching pattern is detected (the check can fail).
    const bad = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xcd 0 64k', uri]).then(
      () => 'exited 0',
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    expect(bad).toMatch(/Pattern verification failed/);
  });

  it('qemu-io write zeroes and discard', async () => {
    const uri = srv.uri('scratch');
    const { stdout, stderr } = await run('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0x11 2M 256k',
      '-c', 'write -z 2M 64k',
      '-c', 'read -P 0 2M 64k',
      '-c', 'read -P 0x11 2112k 192k',
      '-c', 'discard 2112k 64k',
      '-c', 'read -P 0x11 2176k 128k',
      uri,
    ]);
    expect(stdout + stderr).not.toMatch(/Pattern verification failed|failed/i);
  });
});

describe('qemu over TCP', () => {
  let server: NbdServer;
  let port: number;
  let work: string;
  const logs: string[] = [];
  beforeAll(async () => {
    requireTool('qemu-img');
    work = tmpDir();
    server = createServer({
      exports: [{ name: 'tcpdisk', size: IMAGE_SIZE, backend: memoryBackend({ size: IMAGE_SIZE }) }],
      logger: recordingLogger(logs),
    });
    const [r] = await server.listen({ port: 0, host: '127.0.0.1' });
    port = r!.address.port!;
    expect(port).toBeGreaterThan(0);
    expect(r!.uris).toContain(`nbd://127.0.0.1:${port}/tcpdisk`);
  });
  afterAll(async () => {
    await server?.close({ timeout: 2000 });
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('qemu-img info, convert in/out and qemu-io patterns', async () => {
    const uri = `nbd://127.0.0.1:${port}/tcpdisk`;
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', uri])).stdout) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(IMAGE_SIZE);
    const src = path.join(work, 'src.img');
    const back = path.join(work, 'back.img');
    makeImage(src);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, back]);
    await run('cmp', [src, back]);
    const { stdout } = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 64k', '-c', 'read -P 0xab 0 64k', uri]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    expect(stdout).toMatch(/read 65536\/65536 bytes at offset 0/);
    expect(logs.filter((l) => l.startsWith('error'))).toEqual([]);
  });
});
