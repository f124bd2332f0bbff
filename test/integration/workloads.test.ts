/**
 * Workloads beyond single commands: fio's nbd engine writing and verifying
 * data at depth on several connections, qemu-img map (qemu's own
 * block-status client), and nbdkit as a reference peer (copying between
 * an nbdkit export and ours, and comparing what nbdinfo reports of both).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryBackend } from '../../src/index.js';
import { requireTool, run, startServer, tmpDir, type Running } from './harness.js';

const MiB = 1024 * 1024;

describe('fio nbd engine', () => {
  let srv: Running;
  beforeAll(async () => {
    requireTool('fio');
    srv = await startServer({ exports: [{ name: 'fio', backend: memoryBackend({ size: 64 * MiB }) }] });
  });
  afterAll(() => srv?.close());

  it('random writes at iodepth 32 on 4 connections, then every block verified (crc32c)', async () => {
    const common = ['--ioengine=nbd', `--uri=${srv.uri()}`, '--size=16M', '--direct=1', '--group_reporting', '--output-format=json'];
    const jobs = (rw: string, extra: string[] = []) => [
      ...common,
      '--name=w',
      `--rw=${rw}`,
      '--bs=4k',
      '--iodepth=32',
      '--numjobs=4',
      '--offset_increment=16M',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--do_verify=1',
      '--verify_state_save=0',
      ...extra,
    ];
    const { stdout } = await run('fio', jobs('randwrite'), { timeout: 90_000 });
    const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> };
    const job = report.jobs[0]!;
    expect(job.error).toBe(0);
    // 4 jobs × 16 MiB written and read back for verification.
    expect(job.write.io_bytes).toBe(64 * MiB);
    expect(job.read.io_bytes).toBe(64 * MiB);
  });

  it('a 50/50 random mix with 1 MiB and 512-byte blocks completes without errors', async () => {
    for (const bs of ['1m', '512']) {
      const { stdout } = await run(
        'fio',
        ['--ioengine=nbd', `--uri=${srv.uri()}`, '--name=m', '--rw=randrw', `--bs=${bs}`, '--iodepth=8', '--size=8M', '--io_size=8M', '--output-format=json'],
        { timeout: 60_000 },
      );
      const job = (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number }> }).jobs[0]!;
      expect(job.error).toBe(0);
    }
  });
});

describe('qemu-img map: qemu reads base:allocation', () => {
  let srv: Running;
  beforeAll(async () => {
    requireTool('qemu-img');
    srv = await startServer({ exports: [{ name: 'sparse', backend: memoryBackend({ size: 8 * MiB }) }] });
  });
  afterAll(() => srv?.close());

  it('reports data exactly where it was written and zero holes elsewhere', async () => {
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 1M 64k', '-c', 'write -P 0x22 5M 128k', srv.uri()]);
    const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'raw', srv.uri()]);
    const map = JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
    const data = map.filter((m) => m.data).map((m) => [m.start, m.length]);
    expect(data).toEqual([
      [1 * MiB, 64 * 1024],
      [5 * MiB, 128 * 1024],
    ]);
    // Everything else reads as zero.
    for (const m of map.filter((x) => !x.data)) expect(m.zero).toBe(true);
    expect(map.reduce((n, m) => n + m.length, 0)).toBe(8 * MiB);
  });
});

describe('nbdkit as a reference peer', () => {
  let srv: Running;
  let kit: ChildProcess;
  let dir: string;
  let kitSock: string;
  beforeAll(async () => {
    requireTool('nbdkit');
    requireTool('nbdcopy');
    dir = tmpDir();
    kitSock = path.join(dir, 'kit.sock');
    kit = spawn('nbdkit', ['-f', '-U', kitSock, 'memory', '32M'], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !fs.existsSync(kitSock); i++) await new Promise((r) => setTimeout(r, 50));
    srv = await startServer({ exports: [{ name: 'copy', backend: memoryBackend({ size: 32 * MiB }) }] });
  });
  afterAll(async () => {
    kit?.kill();
    await srv?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('nbdcopy between an nbdkit export and ours, both ways, keeps the bytes', async () => {
    const kitUri = `nbd+unix:///?socket=${kitSock}`;
    const data = crypto.randomBytes(32 * MiB);
    data.fill(0, 4 * MiB, 12 * MiB);
    const src = path.join(dir, 'src.img');
    fs.writeFileSync(src, data);
    await run('nbdcopy', [src, kitUri]);
    await run('nbdcopy', ['--connections=2', kitUri, srv.uri()]);
    // Ours → a file, and nbdkit → ours compared by qemu-img.
    const back = path.join(dir, 'back.img');
    await run('nbdcopy', [srv.uri(), back]);
    expect(crypto.createHash('sha256').update(fs.readFileSync(back)).digest('hex')).toBe(crypto.createHash('sha256').update(data).digest('hex'));
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', kitUri, srv.uri()]);
  });

  it('nbdinfo reports the same protocol and size for equivalent exports', async () => {
    const ours = JSON.parse((await run('nbdinfo', ['--json', srv.uri()])).stdout);
    const theirs = JSON.parse((await run('nbdinfo', ['--json', `nbd+unix:///?socket=${kitSock}`])).stdout);
    expect(ours.protocol).toBe(theirs.protocol);
    expect(ours.exports[0]['export-size']).toBe(theirs.exports[0]['export-size']);
    for (const flag of ['is_read_only', 'can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_df']) {
      expect([flag, ours.exports[0][flag]]).toEqual([flag, theirs.exports[0][flag]]);
    }
    expect(ours.exports[0].contexts).toEqual(theirs.exports[0].contexts);
  });
});

describe('IPv6 loopback', () => {
  it('listens on [::1], prints a bracketed URI, and nbdinfo / qemu-io work through it', async () => {
    const { createServer } = await import('../../src/index.js');
    const server = createServer({ exports: [{ name: 'v6', backend: memoryBackend({ size: 4 * MiB }) }], logger: { warn: () => {}, error: () => {} } });
    try {
      const [r] = await server.listen({ port: 0, host: '::1' });
      const uri = r!.uris[0]!;
      expect(uri).toMatch(/^nbd:\/\/\[::1\]:\d+\/v6$/);
      const info = JSON.parse((await run('nbdinfo', ['--json', uri])).stdout);
      expect(info.exports[0]['export-size']).toBe(4 * MiB);
      const { stdout } = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6 0 64k', '-c', 'read -P 0x6 0 64k', uri]);
      expect(stdout).toMatch(/read 65536\/65536 bytes/);
    } finally {
      await server.close({ timeout: 1000 });
    }
  });
});
