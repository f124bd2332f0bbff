/**
 * Several writers on one export in a real radosgw (one per file): two
 * nbd-engine processes (the CLI) on the same bucket and prefix taking
 * interleaved unaligned writes from two clients, `kill -9` of a server in
 * the middle of a write stream, nbdcopy with 4 connections, fio verify.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { requirePythonNbd, run, spawnCli, tmpDir } from '../harness.js';
import { PRELUDE, py } from '../pylibnbd.js';
import { radosgwPerFile } from './radosgw.js';

const store = radosgwPerFile();
const MiB = 1024 * 1024;

let children: ChildProcess[] = [];
let dirs: string[] = [];
afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  children = [];
  dirs = [];
});

/** One nbd-engine process serving the s3 export; -v so its debug lines (conflicts) are on stderr. */
async function serveCli(prefix: string, extra: string[] = [], dashed = false) {
  const rgw = store.get();
  const dir = tmpDir();
  dirs.push(dir);
  const sock = path.join(dir, 'sock');
  // `dashed`: the option form of the same keys (`s3 --endpoint URL --bucket B --prefix P`).
  const keys = dashed
    ? ['--endpoint', rgw.endpoint, '--bucket', rgw.bucket, '--prefix', prefix]
    : [`endpoint=${rgw.endpoint}`, `bucket=${rgw.bucket}`, `prefix=${prefix}`];
  const started = await spawnCli(['serve', '-v', '-U', sock, 's3', ...keys, ...extra], rgw.env);
  children.push(started.child);
  return { ...started, uri: `nbd+unix:///?socket=${sock}` };
}

/** The bytes slot `slot` gets from writer `who` (unaligned 1000-byte slots). */
const SLOT = 1000;
const SLOT_DATA = String.raw`
def slot_data(who, slot):
    return (('%s%07d' % (who, slot)) * (SLOT // 8 + 1)).encode()[:SLOT]
`;

describe('s3: several servers and connections on one export', () => {
  it('two nbd-engine processes, two clients, interleaved unaligned writes to the same objects: no lost update', async () => {
    const a = await serveCli('two/', ['size=1M', 'object-size=64K']);
    const b = await serveCli('two/', ['size=1M', 'object-size=64K']);
    // Client A writes the even 1000-byte slots of the first 256 KiB (4 objects), B the odd ones,
    // each in its own random order with 16 requests in flight: every object is rewritten by both
    // servers at once, so their read-modify-writes collide.
    const writer = (who: string, parity: number) => `
      import random
      SLOT = ${SLOT}
      ${SLOT_DATA.trim().split('\n').join('\n      ')}
      slots = [s for s in range(262) if s % 2 == ${parity}]
      random.Random(${parity + 5}).shuffle(slots)
      h = connect()
      errors = []
      def done(s, err):
          if err.value != 0:
              errors.append([s, err.value])
          return 1
      aio_writes(h, ((s, s * SLOT, slot_data('${who}', s)) for s in slots), 16, done)
      out['n'] = len(slots)
      out['errors'] = errors
    `;
    type W = { n: number; errors: number[][] };
    const [wa, wb] = await Promise.all([py<W>(a.uri, writer('A', 0)), py<W>(b.uri, writer('B', 1))]);
    expect(wa.n + wb.n).toBe(262);
    expect([wa.errors, wb.errors]).toEqual([[], []]);
    const check = `
      SLOT = ${SLOT}
      ${SLOT_DATA.trim().split('\n').join('\n      ')}
      h = connect()
      got = h.pread(262 * SLOT, 0)
      want = b''.join(slot_data('A' if s % 2 == 0 else 'B', s) for s in range(262))
      out['bad'] = [s for s in range(262) if got[s * SLOT:(s + 1) * SLOT] != want[s * SLOT:(s + 1) * SLOT]]
    `;
    const [ca, cb] = await Promise.all([py<{ bad: number[] }>(a.uri, check), py<{ bad: number[] }>(b.uri, check)]);
    expect(ca.bad).toEqual([]);
    expect(cb.bad).toEqual([]);
    // The collisions did happen (and were redone): at least one conditional PUT was refused.
    const conflicts = (a.stderr() + b.stderr()).split('\n').filter((l) => l.includes('was changed by another writer')).length;
    expect(conflicts).toBeGreaterThan(0);
  });

  it('writes through one server racing TRIM and WRITE_ZEROES of the same objects through another: no error, every slot whole', async () => {
    const a = await serveCli('race/', ['size=1M', 'object-size=64K']);
    const b = await serveCli('race/', ['size=1M', 'object-size=64K']);
    const writer = `
      SLOT = ${SLOT}
      ${SLOT_DATA.trim().split('\n').join('\n      ')}
      h = connect()
      errors = []
      def done(s, err):
          if err.value != 0:
              errors.append([s, err.value])
          return 1
      aio_writes(h, ((s, s * SLOT, slot_data('A', s)) for s in range(262)), 8, done)
      out['errors'] = errors
    `;
    const trimmer = `
      K = 64 * 1024
      h = connect()
      errors = []
      for i in range(60):
          for fn in (h.trim, h.zero):
              e = err(fn, K, (i % 4) * K)
              if e:
                  errors.append(e)
      out['errors'] = errors
    `;
    type E = { errors: unknown[] };
    const [wa, tb] = await Promise.all([py<E>(a.uri, writer), py<E>(b.uri, trimmer)]);
    expect(wa.errors).toEqual([]);
    expect(tb.errors).toEqual([]);
    const check = await py<{ torn: number[] }>(a.uri, `
      SLOT = ${SLOT}
      ${SLOT_DATA.trim().split('\n').join('\n      ')}
      h = connect()
      got = h.pread(262 * SLOT, 0)
      # A slot is A's bytes or zeroes in each 64K object it touches (a trim may come after the write).
      K = 64 * 1024
      torn = []
      for s in range(262):
          lo, hi = s * SLOT, (s + 1) * SLOT
          want = slot_data('A', s)
          cut = lo
          while cut < hi:
              end = min(hi, (cut // K + 1) * K)
              part = got[cut:end]
              if part != want[cut - lo:end - lo] and part != bytes(end - cut):
                  torn.append(s)
                  break
              cut = end
      out['torn'] = torn
    `);
    expect(check.torn).toEqual([]);
  });

  it('kill -9 of a server in the middle of a write stream: every acknowledged write is in the store', async () => {
    const a = await serveCli('kill/', ['size=4M', 'object-size=64K']);
    // A client streams unaligned 3000-byte writes (8 in flight) and prints each acknowledged one.
    const script = `${PRELUDE}
SLOT = 3000
h = connect()
acked = []
def done(s, err):
    if err.value == 0:
        print('ack', s, flush=True)
    return 1
try:
    aio_writes(h, ((s, s * SLOT, (('K%07d' % s) * 375).encode()) for s in range(1390)), 8, done)
except nbd.Error as e:
    print('error', e, flush=True)
`;
    const child = spawn(requirePythonNbd(), ['-c', script, a.uri], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    const acked = new Set<number>();
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        for (const m of out.matchAll(/^ack (\d+)$/gm)) acked.add(Number(m[1]));
        // Kill the server once the stream is well under way (and still going).
        if (acked.size >= 100 && a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
      child.on('error', reject);
    });
    expect(a.child.signalCode).toBe('SIGKILL');
    expect(out).toMatch(/^error /m); // the stream was cut short by the kill
    expect(acked.size).toBeGreaterThanOrEqual(100);
    expect(acked.size).toBeLessThan(1390);
    // A new server on the same prefix (no size: taken from the metadata object), started with the option form.
    const b = await serveCli('kill/', [], true);
    const res = await py<{ missing: number[] }>(
      b.uri,
      `
      h = connect()
      got = h.pread(1390 * 3000, 0)
      acked = [int(x) for x in ARGS[0].split(',')]
      out['missing'] = [s for s in acked if got[s * 3000:(s + 1) * 3000] != (('K%07d' % s) * 375).encode()]
    `,
      [[...acked].join(',')],
    );
    expect(res.missing).toEqual([]);
  });

  it('nbdcopy with 4 connections in and out (multi-conn): same sha256', async () => {
    const a = await serveCli('four/', ['size=16M', 'object-size=256K']);
    const dir = tmpDir();
    dirs.push(dir);
    const src = path.join(dir, 'src.img');
    const buf = crypto.randomBytes(16 * MiB);
    buf.fill(0, 5 * MiB, 9 * MiB);
    fs.writeFileSync(src, buf);
    await run('nbdcopy', ['--connections=4', '--requests=8', src, a.uri], { timeout: 120_000 });
    await run('nbdcopy', ['--connections=4', '--requests=8', a.uri, path.join(dir, 'back.img')], { timeout: 120_000 });
    const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    expect(sha(path.join(dir, 'back.img'))).toBe(sha(src));
  });

  it('fio verify: random unaligned writes, 4 jobs, checked by crc32c', async () => {
    const a = await serveCli('fio/', ['size=16M', 'object-size=64K']);
    const { stdout } = await run(
      'fio',
      ['--ioengine=nbd', `--uri=${a.uri}`, '--name=v', '--rw=randwrite', '--bs=1536', '--iodepth=8', '--numjobs=4', '--size=1M', '--offset_increment=4M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json'],
      { timeout: 180_000 },
    );
    const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] };
    expect(report.jobs).toHaveLength(4);
    for (const j of report.jobs) {
      expect(j.error).toBe(0);
      // Every 1536-byte block that fits in the job's 1 MiB, written then read back and checked.
      expect(j.write.io_bytes).toBe(MiB - (MiB % 1536));
      expect(j.read.io_bytes).toBe(j.write.io_bytes);
    }
  });
});
