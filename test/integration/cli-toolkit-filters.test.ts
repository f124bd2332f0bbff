/**
 * Every filter through the real CLI in nbdkit's syntax (`nbd-engine serve -U -
 * --filter=NAME BACKEND key=value --run CMD`), checked with real clients:
 * that the filter acted (bytes, errnos, log lines, the stats file, the base
 * left unchanged), and, where nbdkit defines the result, that `nbdkit` run
 * with the same words gives the same.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { requireTool, tmpDir } from './harness.js';
import { mbrDisk } from '../unit/toolkit/partition-images.js';
import { both, cli, engine, nbdkit, outOf, pyCommand, requestLines } from './cli-toolkit-support.js';

let work: string;
let base: string;
beforeAll(() => {
  for (const t of ['nbdinfo', 'nbdcopy', 'qemu-io', 'nbdkit', 'sfdisk']) requireTool(t);
  work = tmpDir('cli-toolkit-');
  base = path.join(work, 'base.img');
  const bytes = Buffer.alloc(1 << 20);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13 + (i >> 9)) & 0xff;
  fs.writeFileSync(base, bytes);
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const file = (name: string) => path.join(work, name);

describe('filters: nbdkit\'s command lines act as nbdkit\'s', () => {
  it('--filter=cow file base.img: writes are seen, the base is unchanged, the same bytes as nbdkit', async () => {
    const before = fs.readFileSync(base);
    const cmd = 'qemu-io -f raw -c "write -P 0x11 4k 4k" -c "write -z 64k 64k" -c "read -P 0x11 4k 4k" -c "read -P 0 64k 64k" "$uri" >/dev/null && nbdcopy "$uri" - | sha256sum';
    const { ours, kit } = await both(['--filter=cow', 'file', base], cmd);
    expect(ours.code, ours.stderr).toBe(0);
    expect(kit.code, kit.stderr).toBe(0);
    expect(ours.stdout).toBe(kit.stdout);
    expect(fs.readFileSync(base).equals(before)).toBe(true);
  });

  it('--filter=cow (two block sizes) and --filter=cache over a sparse file: the same extents map as nbdkit\'s after writes and a zeroing', async () => {
    /** A 4 MiB sparse file with 3 bytes of data at 1 MiB. */
    const sparseFile = (name: string) => {
      const f = file(name);
      fs.writeFileSync(f, Buffer.alloc(0));
      fs.truncateSync(f, 4 << 20);
      const fd = fs.openSync(f, 'r+');
      fs.writeSync(fd, Buffer.from('abc'), 0, 3, 1 << 20);
      fs.closeSync(fd);
      return f;
    };
    const sparse = sparseFile('sparse.img');
    const before = fs.readFileSync(sparse);
    const cmd = 'qemu-io -f raw -c "write -P 1 2M 64k" -c "write -z 0 4k" "$uri" >/dev/null && nbdinfo --map "$uri"';
    const lines = (r: { stdout: string }) => r.stdout.trimEnd().split('\n');
    const cow = await both(['--filter=cow', 'file', sparse], cmd);
    expect(cow.ours.code, cow.ours.stderr).toBe(0);
    expect(cow.ours.stdout).toBe(cow.kit.stdout);
    expect(cow.ours.stdout).toMatch(/^\s+2097152\s+65536\s+0\s+data$/m);
    const small = await both(['--filter=cow', 'file', sparse, 'cow-block-size=4k'], cmd);
    expect(small.ours.code, small.ours.stderr).toBe(0);
    // A whole overlay block zeroed: ours says "zero" (not a hole), nbdkit's cow "data" (it stores the zeroes). Both are true.
    expect(lines(small.ours)[0]).toMatch(/^\s+0\s+4096\s+2\s+zero$/);
    expect(lines(small.kit)[0]).toMatch(/^\s+0\s+4096\s+0\s+data$/);
    expect(lines(small.ours).slice(1)).toEqual(lines(small.kit).slice(1));
    expect(fs.readFileSync(sparse).equals(before)).toBe(true);
    // cache writes through to a file of its own per server. nbdkit's cache turns the 4k zeroing into a
    // write of its whole 64k block (data); ours passes the zero request on (the file keeps its hole).
    const [ours, kit] = await Promise.all([engine(['--filter=cache', 'file', sparseFile('c1.img')], cmd), nbdkit(['--filter=cache', 'file', sparseFile('c2.img')], cmd)]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(lines(ours)[0]).toMatch(/^\s+0\s+1048576\s+3\s+hole,zero$/);
    expect(lines(kit).slice(0, 2).join('|')).toMatch(/^\s+0\s+65536\s+0\s+data\|\s+65536\s+983040\s+3\s+hole,zero$/);
    expect(lines(ours).slice(1)).toEqual(lines(kit).slice(2));
    expect(fs.readFileSync(file('c1.img')).equals(fs.readFileSync(file('c2.img')))).toBe(true);
  });

  it('--filter=cow cow-on-read=true keeps what it read: the backend below sees one 64k read for three client reads, as under nbdkit', async () => {
    const reads = async (server: typeof engine, name: string, onRead: string) => {
      const log = file(name);
      const r = await server(['--filter=cow', '--filter=log', 'pattern', '1M', `logfile=${log}`, `cow-on-read=${onRead}`], 'qemu-io -r -f raw -c "read 0 4k" -c "read 0 4k" -c "read 8k 4k" "$uri" >/dev/null');
      expect(r.code, r.stderr).toBe(0);
      return requestLines(fs.readFileSync(log, 'utf8'))
        .filter((l) => / Read id=/.test(l))
        .map((l) => l.replace(/ id=\d+/, ''));
    };
    const ours = await reads(engine, 'cor-ours.log', 'true');
    expect(ours).toEqual(['connection=1 Read offset=0x0 count=0x10000 ...']);
    expect(ours).toEqual(await reads(nbdkit, 'cor-kit.log', 'true'));
    // Without it every client read reaches the backend (nbdkit reads whole 64k blocks, ours what was asked).
    expect(await reads(engine, 'cor-off.log', 'false')).toHaveLength(3);
  });

  it('--filter=log logappend=true and --filter=stats statsappend=true keep the earlier runs, as nbdkit\'s logappend', async () => {
    const log = file('append.log');
    const kitLog = file('append-kit.log');
    const stats = file('append.stats');
    for (let i = 0; i < 2; i++) {
      const r = await engine(['--filter=log', '--filter=stats', 'memory', '1M', `logfile=${log}`, 'logappend=true', `statsfile=${stats}`, 'statsappend=true'], 'nbdinfo --size "$uri" >/dev/null');
      expect(r.code, r.stderr).toBe(0);
      await nbdkit(['--filter=log', 'memory', '1M', `logfile=${kitLog}`, 'logappend=true'], 'nbdinfo --size "$uri" >/dev/null');
    }
    const connects = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => / Connect /.test(l)).length;
    expect(connects(log)).toBe(2);
    expect(connects(log)).toBe(connects(kitLog));
    expect(fs.readFileSync(stats, 'utf8').match(/^# nbd-engine stats /gm)).toHaveLength(2);
  });

  it('--filter=cache: the same bytes as nbdkit; a re-read is served from the cache (stats below it count one backend read)', async () => {
    const { ours, kit } = await both(['--filter=cache', 'memory', '1M'], 'qemu-io -f raw -c "write -P 0x22 4k 4k" -c "read -P 0x22 4k 4k" "$uri" >/dev/null && nbdcopy "$uri" - | sha256sum');
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(kit.stdout);
    const stats = file('cache.stats');
    const r = await engine(['--filter=cache', '--filter=stats', 'pattern', '1M', `statsfile=${stats}`], 'qemu-io -r -f raw -c "read 0 64k" -c "read 0 64k" -c "read 0 64k" "$uri" >/dev/null');
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(stats, 'utf8')).toMatch(/^read ops=1 bytes=65536 /m);
  });

  it('--filter=readahead: the same bytes as nbdkit; small sequential reads become fewer, larger backend reads', async () => {
    const { ours, kit } = await both(['--filter=readahead', 'pattern', '1M'], 'nbdcopy "$uri" - | sha256sum');
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(kit.stdout);
    const log = file('readahead.log');
    const reads = Array.from({ length: 16 }, (_, i) => `-c "read ${i * 4096} 4k"`).join(' ');
    const r = await engine(['--filter=readahead', '--filter=log', 'pattern', '1M', `logfile=${log}`], `qemu-io -r -f raw ${reads} "$uri" >/dev/null`);
    expect(r.code, r.stderr).toBe(0);
    const below = requestLines(fs.readFileSync(log, 'utf8')).filter((l) => / Read id=\d+ /.test(l));
    expect(below.length).toBeGreaterThan(0);
    expect(below.length).toBeLessThan(16);
    // Past the first read the filter fetches windows larger than the client's 4k reads.
    expect(below.some((l) => Number(/count=(0x[0-9a-f]+)/.exec(l)![1]) > 0x1000)).toBe(true);
  });

  it('--filter=blocksize minblock=4k maxdata=64k: the backend sees the same aligned, split requests as under nbdkit', async () => {
    const logOf = async (server: typeof engine, name: string) => {
      const log = file(name);
      const r = await server(['--filter=blocksize', '--filter=log', 'memory', '1M', 'minblock=4k', 'maxdata=64k', `logfile=${log}`], 'qemu-io -f raw -c "write -P 0x33 1 3" -c "read -P 0x33 1 3" -c "read 0 256k" "$uri" >/dev/null');
      expect(r.code, r.stderr).toBe(0);
      return requestLines(fs.readFileSync(log, 'utf8'))
        .filter((l) => !/Flush/.test(l))
        .map((l) => l.replace(/ id=\d+/, '').replace(/ (fua|fast|return)=\S+/g, ''));
    };
    const ours = await logOf(engine, 'bs-ours.log');
    const kit = await logOf(nbdkit, 'bs-kit.log');
    // The 3-byte write is a read-modify-write of one 4k block; the 256k read is four 64k reads.
    expect(ours.filter((l) => / Write /.test(l))).toEqual(['connection=1 Write offset=0x0 count=0x1000 ...']);
    expect(ours.filter((l) => / Read .*count=0x10000/.test(l)).length).toBe(4);
    expect(ours).toEqual(kit);
  });

  it('--filter=delay delay-fast-zero=false: a fast zero fails at once with ENOTSUP, as nbdkit; delayed reads still return the bytes', async () => {
    const cmd = pyCommand(
      work,
      `
      h = connect()
      out['fast'] = err(h.zero, 4096, 0, nbd.CMD_FLAG_FAST_ZERO)
      out['slow'] = err(h.zero, 4096, 0)
      out['read'] = h.pread(8, 8).hex()
      `,
    );
    const { ours, kit } = await both(['--filter=delay', 'memory', '1M', 'rdelay=1ms', 'wdelay=1ms', 'delay-fast-zero=false'], cmd);
    expect(ours.code, ours.stderr).toBe(0);
    expect(outOf(ours)).toEqual({ fast: 'ENOTSUP', slow: null, read: '0000000000000000' });
    expect(outOf(ours)).toEqual(outOf(kit));
  });

  it('--filter=error: error-pwrite=ENOSPC fails only writes, error=EPERM error-rate=100% fails reads, error-file gates it — as nbdkit', async () => {
    const cmd = pyCommand(
      work,
      `
      h = connect()
      out['write'] = err(h.pwrite, b'x' * 512, 0)
      out['read'] = err(h.pread, 512, 0)
      `,
    );
    const cases: [string[], Record<string, unknown>][] = [
      [['error-pwrite=ENOSPC', 'error-pwrite-rate=100%'], { write: 'ENOSPC', read: null }],
      [['error-rate=100%', 'error=EPERM'], { write: 'EPERM', read: 'EPERM' }],
      [['error-rate=1', 'error=EIO', `error-file=${file('absent')}`], { write: null, read: null }],
    ];
    for (const [keys, want] of cases) {
      const { ours, kit } = await both(['--filter=error', 'memory', '1M', ...keys], cmd);
      expect(ours.code, `${keys.join(' ')}: ${ours.stderr}`).toBe(0);
      expect(outOf(ours), keys.join(' ')).toEqual(want);
      expect(outOf(kit), keys.join(' ')).toEqual(want);
      // Each injected error is one log line, in nbdkit's words, as many as nbdkit logs.
      const injected = (stderr: string) => stderr.split('\n').filter((l) => /error: (error filter: )?injecting /.test(l)).map((l) => l.replace(/^.* error: (error filter: )?/, ''));
      if (keys[0] === 'error-pwrite=ENOSPC') {
        expect(injected(ours.stderr)).toEqual(['injecting ENOSPC error into pwrite']);
        expect(injected(ours.stderr)).toEqual(injected(kit.stderr));
      }
    }
    fs.writeFileSync(file('present'), '');
    const gated = await engine(['--filter=error', 'memory', '1M', 'error-pread=ESHUTDOWN', 'error-pread-rate=100%', `error-pread-file=${file('present')}`], cmd);
    expect(outOf(gated)).toEqual({ write: null, read: 'ESHUTDOWN' });
  });

  it('--filter=log --filter=stats memory 1M logfile=… statsfile=…: nbdkit\'s log lines, and the stats file counts the requests', async () => {
    const cmd = 'qemu-io -f raw -c "write -P 0x44 0 4k" -c "read -P 0x44 0 4k" -c "read 8k 2k" "$uri" >/dev/null';
    const logs = { ours: file('ours.log'), kit: file('kit.log') };
    const stats = file('ours.stats');
    const [ours, kit] = await Promise.all([
      engine(['--filter=log', '--filter=stats', 'memory', '1M', `logfile=${logs.ours}`, `statsfile=${stats}`], cmd),
      nbdkit(['--filter=log', '--filter=stats', 'memory', '1M', `logfile=${logs.kit}`, `statsfile=${file('kit.stats')}`], cmd),
    ]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(kit.code, kit.stderr).toBe(0);
    const lines = requestLines(fs.readFileSync(logs.ours, 'utf8'));
    expect(lines).toEqual(requestLines(fs.readFileSync(logs.kit, 'utf8')));
    expect(lines).toContain('connection=1 Write id=1 offset=0x0 count=0x1000 fua=1 ...');
    expect(fs.readFileSync(logs.ours, 'utf8')).toMatch(/connection=1 Connect export="" .*size=0x100000 /);
    expect(fs.readFileSync(logs.ours, 'utf8')).toMatch(/connection=1 Disconnect transactions=\d+/);
    const st = fs.readFileSync(stats, 'utf8');
    expect(st).toMatch(/^read ops=2 bytes=6144 errors=0 /m);
    expect(st).toMatch(/^write ops=1 bytes=4096 errors=0 /m);
  });

  it('--filter=rate rate=… connection-rate=…: nbdkit\'s keys are taken and the bytes arrive intact', async () => {
    const { ours, kit } = await both(['--filter=rate', 'pattern', '256k', 'rate=512M', 'connection-rate=256M'], 'nbdcopy "$uri" - | sha256sum');
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(kit.stdout);
    // A rate that does not parse: one line and exit status 1, as nbdkit.
    const bad = await both(['--filter=rate', 'pattern', '256k', 'rate=fast'], 'true');
    expect(bad.ours.code).toBe(bad.kit.code);
    expect(bad.ours.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^nbd-engine: rate: rate=fast: cannot parse rate/)]);
  });

  it('--filter=retry --filter=log --filter=error: a failing read is tried 1 + retries times below the retry filter, then fails', async () => {
    const log = file('retry.log');
    const cmd = pyCommand(
      work,
      `
      h = connect()
      out['read'] = err(h.pread, 512, 0)
      `,
    );
    const r = await engine(['--filter=retry', '--filter=log', '--filter=error', 'memory', '1M', 'retries=2', 'retry-delay=10ms', `logfile=${log}`, 'error-pread=EIO', 'error-pread-rate=100%'], cmd);
    expect(r.code, r.stderr).toBe(0);
    expect(outOf(r)).toEqual({ read: 'EIO' });
    const reads = requestLines(fs.readFileSync(log, 'utf8')).filter((l) => /\.\.\.Read .*return=/.test(l));
    expect(reads).toHaveLength(3);
    // The same words with nbdkit (its retry-delay in whole seconds, so one retry): the same errno, the same reads below.
    const oneRetry = (log: string) => ['--filter=retry', '--filter=log', '--filter=error', 'memory', '1M', 'retries=1', 'retry-delay=1', `logfile=${log}`, 'error-pread=EIO', 'error-pread-rate=100%'];
    const [ours, kit] = await Promise.all([engine(oneRetry(file('retry1-ours.log')), cmd), nbdkit(oneRetry(file('retry1-kit.log')), cmd)]);
    expect(outOf(kit)).toEqual({ read: 'EIO' });
    expect(outOf(ours)).toEqual(outOf(kit));
    const failed = (f: string) => requestLines(fs.readFileSync(f, 'utf8')).filter((l) => /\.\.\.Read .*return=-1 error=EIO/.test(l)).length;
    expect(failed(file('retry1-ours.log'))).toBe(2);
    expect(failed(file('retry1-ours.log'))).toBe(failed(file('retry1-kit.log')));
  });

  it('--filter=partition file disk.img partition=N: the same size and bytes as nbdkit\'s, MBR and GPT', async () => {
    for (const [label, parts] of [['dos', ['start=2048,size=2048,type=83', 'start=4096,size=1024,type=83']], ['gpt', ['start=2048,size=2048', 'start=4096,size=1024']]] as const) {
      const disk = file(`${label}.img`);
      fs.writeFileSync(disk, Buffer.alloc(0));
      fs.truncateSync(disk, 4 << 20);
      const sf = spawnSync('sfdisk', ['-q', disk], { input: `label: ${label}\n${parts.join('\n')}\n` });
      expect(sf.status, String(sf.stderr)).toBe(0);
      // Mark each partition's first bytes so a wrong offset shows.
      const fd = fs.openSync(disk, 'r+');
      fs.writeSync(fd, Buffer.from('first'), 0, 5, 2048 * 512);
      fs.writeSync(fd, Buffer.from('second'), 0, 6, 4096 * 512);
      fs.closeSync(fd);
      for (const n of ['1', '2']) {
        const { ours, kit } = await both(['--filter=partition', 'file', disk, `partition=${n}`], 'nbdinfo --size "$uri" && nbdcopy "$uri" - | head -c 6 && echo && nbdcopy "$uri" - | sha256sum');
        expect(ours.code, `${label} ${n}: ${ours.stderr}`).toBe(0);
        expect(ours.stdout, `${label} ${n}`).toBe(kit.stdout);
        expect(ours.stdout.split('\n')[0], `${label} ${n}`).toBe(n === '1' ? '1048576' : '524288');
      }
    }
  });
});

describe('stacked filters', () => {
  it('--filter=cow --filter=partition and --filter=partition --filter=cow: a write lands in the overlay, the disk is unchanged, nbdkit\'s bytes', async () => {
    const disk = file('stack.img');
    fs.writeFileSync(disk, Buffer.alloc(0));
    fs.truncateSync(disk, 4 << 20);
    const sf = spawnSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048,size=2048,type=83\nstart=4096,size=2048,type=83\n' });
    expect(sf.status, String(sf.stderr)).toBe(0);
    const before = fs.readFileSync(disk);
    for (const order of [['--filter=cow', '--filter=partition'], ['--filter=partition', '--filter=cow']]) {
      const { ours, kit } = await both([...order, 'file', disk, 'partition=2'], 'qemu-io -f raw -c "write -P 7 0 4k" -c "read -P 7 0 4k" "$uri" >/dev/null && nbdinfo --size "$uri" && nbdcopy "$uri" - | sha256sum');
      expect(ours.code, `${order.join(' ')}: ${ours.stderr}`).toBe(0);
      expect(ours.stdout, order.join(' ')).toBe(kit.stdout);
      expect(ours.stdout.split('\n')[0]).toBe('1048576');
    }
    expect(fs.readFileSync(disk).equals(before)).toBe(true);
  });
});

describe('--filter=partition with logical partitions', () => {
  it('MBR logical partitions 5 and 6 of an extended partition: nbdkit\'s sizes and bytes; 3 (the container) and 7 are refused', async () => {
    const disk = file('logical.img');
    const bytes = mbrDisk();
    // Mark each logical partition's first sector so a wrong offset shows.
    bytes.write('five', (8192 + 2048) * 512);
    bytes.write('six', (12288 + 2048) * 512);
    fs.writeFileSync(disk, bytes);
    for (const n of ['5', '6']) {
      const { ours, kit } = await both(['--filter=partition', 'file', disk, `partition=${n}`], 'nbdinfo --size "$uri" && nbdcopy "$uri" - | head -c 4 && echo && nbdcopy "$uri" - | sha256sum');
      expect(ours.code, `${n}: ${ours.stderr}`).toBe(0);
      expect(ours.stdout, n).toBe(kit.stdout);
      expect(ours.stdout.split('\n')[1], n).toBe(n === '5' ? 'five' : 'six\0');
    }
    for (const n of ['3', '7']) {
      const r = await engine(['--filter=partition', 'file', disk, `partition=${n}`], 'echo client-ran');
      expect(r.code, n).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n'), n).toEqual([expect.stringMatching(/^nbd-engine: export "": partition \d/)]);
    }
  });
});

describe('bad values: one line, nbdkit\'s exit status, the client never runs', () => {
  it('each filter and backend refuses a bad value as nbdkit does', async () => {
    const cases = [
      ['--filter=cow', 'memory', '1M', 'cow-block-size=3k'],
      ['--filter=blocksize', 'memory', '1M', 'minblock=3'],
      ['--filter=delay', 'memory', '1M', 'rdelay=abc'],
      ['--filter=error', 'memory', '1M', 'error=EFOO'],
      ['--filter=error', 'memory', '1M', 'error-rate=200%'],
      ['--filter=log', 'memory', '1M', `logfile=${path.join(work, 'no', 'such', 'dir')}`],
      ['--filter=retry', 'memory', '1M', 'retry-delay=x'],
      ['--filter=partition', 'memory', '1M', 'partition=0'],
      ['sparse-random', '1M', 'percent=200'],
      ['data', '(1'],
    ];
    for (const args of cases) {
      const { ours, kit } = await both(args, 'echo client-ran');
      expect(kit.code, `nbdkit ${args.join(' ')}`).not.toBe(0);
      expect(ours.code, args.join(' ')).toBe(kit.code);
      expect(ours.stdout, args.join(' ')).toBe('');
      expect(ours.stderr.trim().split('\n'), args.join(' ')).toEqual([expect.stringMatching(/^nbd-engine: /)]);
    }
  });
});

describe('--help', () => {
  it('lists every backend and filter of the registry with each of its keys', async () => {
    const { BACKENDS, FILTERS } = await import('../../src/plugins/registry.js');
    const r = await cli(['serve', '--help']);
    expect(r.code).toBe(0);
    const text = r.stdout + r.stderr;
    for (const [table, heading] of [[BACKENDS, 'Backends'], [FILTERS, 'Filters']] as const) {
      const section = text.slice(text.indexOf(`\n${heading} (`));
      for (const [name, load] of Object.entries(table)) {
        const plugin = await load();
        expect(section, name).toMatch(new RegExp(`\\n  ${name.replace('-', '\\-')} +\\S`));
        for (const p of plugin.params) expect(section, `${name} ${p.name}`).toContain(`      ${p.name}=`);
      }
    }
  });
});
