/**
 * The log and stats filters with real clients: the log has nbdkit's lines
 * for a scripted sequence (python3-libnbd), including a failing request;
 * stats count what fio and nbdcopy sent, and are written at close and on
 * SIGUSR1.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { backendCapabilities, memoryBackend, type StatsFilter } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { spawn } from 'node:child_process';
import { requireTool, run, serverPerTest, tmpDir } from '../harness.js';
import { filterFromArgs } from './ops-plugin.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();
const TS = String.raw`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}`;

describe('log filter', () => {
  it('writes one line per request and per reply, nbdkit-style, with the errno of a failing request', async () => {
    const dir = tmpDir();
    const logfile = path.join(dir, 'nbd.log');
    fs.writeFileSync(logfile, 'old contents\n');
    const log = await filterFromArgs('log', [`logfile=${logfile}`]);
    // The error filter below the log: the log sees the injected failure as the client will.
    const error = await filterFromArgs('error', ['error-pread=ENOSPC', 'error-pread-rate=1', 'error-offset=1M', 'error-length=512']);
    const srv = await serve({ exports: [{ name: 'disk', backend: memoryBackend({ size: 2 * MiB }), filters: [log, error] }] });
    await py(srv.uri(), `
      h = connect()
      h.pread(512, 0)
      h.pwrite(b'x' * 512, 4096, nbd.CMD_FLAG_FUA)
      h.trim(4096, 8192)
      h.flush()
      e = err(h.pread, 512, 1 << 20)
      assert e == 'ENOSPC', e
      h.shutdown()
    `);
    await srv.close();
    const all = fs.readFileSync(logfile, 'utf8').trimEnd().split('\n');
    for (const l of all) expect(l).toMatch(new RegExp(`^${TS} `));
    // The server's own FLUSH when it closes has no connection; everything else is the client's.
    const own = all.filter((l) => !l.includes(' connection='));
    expect(own.map((l) => l.replace(new RegExp(`^${TS} `), '').replace(/elapsed=\d+\.\d{6}$/, 'elapsed=T'))).toEqual(['Flush id=1 ...', '...Flush id=1 return=0 elapsed=T']);
    const lines = all.filter((l) => l.includes(' connection='));
    const body = lines.map((l) => l.replace(new RegExp(`^${TS} connection=\\d+ `), '').replace(/elapsed=\d+\.\d{6}$/, 'elapsed=T'));
    expect(body[0]).toMatch(/^Connect export="disk" peer="[^"]*" tls=0 size=0x200000 write=1 flush=1 rotational=0 trim=1 zero=native fua=native extents=1 cache=(native|noop) fast_zero=[01]$/);
    // The capability fields are what the export advertises (backendCapabilities of the backend).
    const caps = backendCapabilities(memoryBackend({ size: 2 * MiB }));
    // Except cache: the memory backend has none (the server would answer CACHE itself), but below the log is
    // the error filter, which takes every CACHE (as nbdkit's does) and passes it on to a no-op.
    expect(caps.cache).toBe('noop');
    expect(body[0]).toContain(`cache=native fast_zero=${caps.fastZero ? 1 : 0}`);
    expect(body.slice(1)).toEqual([
      'Read id=1 offset=0x0 count=0x200 ...',
      '...Read id=1 return=0 elapsed=T',
      'Write id=2 offset=0x1000 count=0x200 fua=1 ...',
      '...Write id=2 return=0 elapsed=T',
      'Trim id=3 offset=0x2000 count=0x1000 fua=0 ...',
      '...Trim id=3 return=0 elapsed=T',
      'Flush id=4 ...',
      '...Flush id=4 return=0 elapsed=T',
      'Read id=5 offset=0x100000 count=0x200 ...',
      '...Read id=5 return=-1 error=ENOSPC elapsed=T',
      'Disconnect transactions=5',
    ]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('for the same requests, the lines match what nbdkit --filter=log --filter=error writes (ours add elapsed=)', async () => {
    requireTool('nbdkit');
    const dir = tmpDir();
    const flag = path.join(dir, 'inject');
    const script = `
      import os
      h = connect()
      h.pread(512, 0)
      h.pwrite(b'x' * 512, 4096, nbd.CMD_FLAG_FUA)
      h.trim(4096, 8192)
      h.zero(4096, 65536)
      h.zero(4096, 65536, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
      h.cache(512, 0)
      h.block_status(65536, 1 << 20, lambda *a: 0)
      h.flush()
      open(ARGS[0], 'w').close()
      e = err(h.pread, 512, 1 << 20)
      os.unlink(ARGS[0])
      assert e == 'ENOSPC', e
      h.pread(1024, 2048)
      h.shutdown()
    `;
    const errorArgs = ['error-pread=ENOSPC', 'error-pread-rate=1', `error-pread-file=${flag}`];
    // Theirs.
    const kitLog = path.join(dir, 'nbdkit.log');
    const kitSock = path.join(dir, 'nbdkit.sock');
    const kit = spawn('nbdkit', ['-f', '-U', kitSock, '--filter=log', '--filter=error', 'memory', '2M', `logfile=${kitLog}`, ...errorArgs], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && !fs.existsSync(kitSock); i++) await new Promise((r) => setTimeout(r, 25));
      await py(`nbd+unix:///?socket=${kitSock}`, script, [flag]);
    } finally {
      kit.kill('SIGTERM');
      await new Promise((r) => kit.once('exit', r));
    }
    // Ours, made from the same parameters.
    const ourLog = path.join(dir, 'ours.log');
    const log = await filterFromArgs('log', [`logfile=${ourLog}`]);
    const error = await filterFromArgs('error', errorArgs);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: 2 * MiB }), filters: [log, error] }] });
    await py(srv.uri(), script, [flag]);
    await srv.close();
    // The client's requests: lines with connection=, without the Connect line (its fields differ), stripped of time and our elapsed=.
    const norm = (file: string) =>
      fs.readFileSync(file, 'utf8').trimEnd().split('\n')
        .filter((l) => / connection=\d+ /.test(l) && !/ Connect /.test(l))
        .map((l) => l.replace(new RegExp(`^${TS} connection=\\d+ `), '').replace(/ elapsed=\d+\.\d+$/, ''));
    const theirs = norm(kitLog);
    expect(theirs.length).toBeGreaterThanOrEqual(21);
    // The lines nbdkit's format differs most on: the Zero fields, CACHE (the memory backend has no cache of
    // its own: the request still passes through the filters) and the Extents reply's list.
    expect(theirs).toContain('Zero id=4 offset=0x10000 count=0x1000 trim=1 fua=0 fast=0 ...');
    expect(theirs).toContain('Cache id=6 offset=0x0 count=0x200 ...');
    expect(theirs.some((l) => /^\.\.\.Extents id=7 extents=\(0x100000 0x10000 "hole,zero"\) return=0$/.test(l))).toBe(true);
    expect(norm(ourLog)).toEqual(theirs);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('logappend=true keeps what the file had; connections are told apart', async () => {
    const dir = tmpDir();
    const logfile = path.join(dir, 'nbd.log');
    fs.writeFileSync(logfile, 'old contents\n');
    const log = await filterFromArgs('log', [`logfile=${logfile}`, 'logappend=true']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [log] }] });
    await py(srv.uri(), `h = connect(); h.pread(512, 0); h.shutdown()`);
    await py(srv.uri(), `h = connect(); h.pread(512, 0); h.pread(512, 512); h.shutdown()`);
    await srv.close();
    const text = fs.readFileSync(logfile, 'utf8');
    expect(text.startsWith('old contents\n')).toBe(true);
    const conns = [...text.matchAll(/connection=(\d+) Disconnect transactions=(\d+)/g)].map((m) => [m[1], Number(m[2])] as const);
    expect(conns.map((c) => c[1]).sort()).toEqual([1, 2]);
    expect(new Set(conns.map((c) => c[0])).size).toBe(2);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('an unwritable logfile is a clean error naming the key', async () => {
    await expect(filterFromArgs('log', ['logfile=/nonexistent-dir/x.log'])).rejects.toThrow(/log: logfile=\/nonexistent-dir\/x.log: ENOENT/);
  });
});

describe('stats filter', () => {
  it('counts what fio wrote and nbdcopy read back: ops and bytes match the workload; file written at close', async () => {
    const dir = tmpDir();
    const statsfile = path.join(dir, 'stats.txt');
    const stats = (await filterFromArgs('stats', [`statsfile=${statsfile}`, 'statssignal=none'])) as StatsFilter;
    const size = 4 * MiB;
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size }), filters: [stats] }] });
    // fio: exactly size / bs sequential 4 KiB writes.
    await run('fio', ['--name=w', '--ioengine=nbd', `--uri=${srv.uri()}`, '--rw=write', '--bs=4k', `--size=${size}`, '--iodepth=8', '--output=/dev/null']);
    let snap = stats.snapshot();
    expect(snap.ops.write.ops).toBe(size / 4096);
    expect(snap.ops.write.bytes).toBe(size);
    expect(snap.ops.write.errors).toBe(0);
    expect(snap.ops.read.ops).toBe(0);
    expect(snap.ops.write.max).toBeGreaterThan(0);
    expect(snap.ops.write.p50).toBeLessThanOrEqual(snap.ops.write.p99);
    expect(snap.ops.write.p99).toBeLessThanOrEqual(snap.ops.write.max);
    // nbdcopy reads the whole export (fio wrote data everywhere, so no hole is skipped).
    await run('nbdcopy', [srv.uri(), 'null:']);
    snap = stats.snapshot();
    expect(snap.ops.read.bytes).toBe(size);
    expect(snap.ops.read.errors).toBe(0);
    await srv.close();
    const text = fs.readFileSync(statsfile, 'utf8');
    expect(text).toMatch(new RegExp(`^write ops=${size / 4096} bytes=${size} errors=0 p50=\\d+\\.\\d+ p90=\\d+\\.\\d+ p99=\\d+\\.\\d+ max=\\d+\\.\\d+$`, 'm'));
    expect(text).toMatch(new RegExp(`^read ops=${snap.ops.read.ops} bytes=${size} errors=0 `, 'm'));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('counts errors, and SIGUSR1 writes the stats while serving', async () => {
    const dir = tmpDir();
    const statsfile = path.join(dir, 'stats.txt');
    const stats = (await filterFromArgs('stats', [`statsfile=${statsfile}`])) as StatsFilter;
    const error = await filterFromArgs('error', ['error-pwrite-rate=1', 'error-offset=0', 'error-length=512']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [stats, error] }] });
    const data = crypto.randomBytes(1024).toString('hex');
    await py(srv.uri(), `
      h = connect()
      assert err(h.pwrite, bytes.fromhex(ARGS[0]), 0) == 'EIO'
      h.pwrite(bytes.fromhex(ARGS[0]), 4096)
      h.shutdown()
    `, [data]);
    expect(fs.existsSync(statsfile)).toBe(false);
    process.kill(process.pid, 'SIGUSR1');
    for (let i = 0; i < 100 && !fs.existsSync(statsfile); i++) await new Promise((r) => setTimeout(r, 20));
    expect(fs.readFileSync(statsfile, 'utf8')).toMatch(/^write ops=2 bytes=2048 errors=1 /m);
    expect(stats.snapshot().ops.write).toMatchObject({ ops: 2, bytes: 2048, errors: 1 });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('stats filter above a per-connection filter', () => {
  it('is made per connection then, yet counts for the export and writes once, at server close', async () => {
    const dir = tmpDir();
    const statsfile = path.join(dir, 'stats.txt');
    const stats = (await filterFromArgs('stats', [`statsfile=${statsfile}`, 'statssignal=none'])) as StatsFilter;
    const log = await filterFromArgs('log', [`logfile=${path.join(dir, 'log')}`]);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [stats, log] }] });
    await py(srv.uri(), `h = connect(); h.pread(512, 0); h.shutdown()`);
    await py(srv.uri(), `h = connect(); h.pread(1024, 0); h.shutdown()`);
    await new Promise((r) => setTimeout(r, 100));
    expect(fs.existsSync(statsfile)).toBe(false);
    await srv.close();
    expect(fs.readFileSync(statsfile, 'utf8')).toMatch(/^read ops=2 bytes=1536 errors=0 /m);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('stats filter parameters', () => {
  it('an unwritable statsfile place is refused at start, naming the key', async () => {
    await expect(filterFromArgs('stats', ['statsfile=/nonexistent-dir/stats.txt'])).rejects.toThrow(/stats: statsfile=\/nonexistent-dir\/stats.txt: ENOENT/);
    await expect(filterFromArgs('stats', ['statsfile=/tmp/x', 'statssignal=usr1'])).rejects.toThrow(/statssignal=usr1/);
  });
});
