/**
 * The blocksize filter in front of a backend that refuses (EINVAL) any
 * request breaking its limits, driven by qemu-io and libnbd with
 * misaligned and oversized I/O: the backend never sees a bad request, the
 * client's bytes are right (checked in the backend and against nbdkit's
 * blocksize filter), concurrent unaligned writes to one block lose nothing.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { blocksizeFilter, layer, memoryBackend, NbdRequestError, type Backend, type Filter, type ReadSegment } from '../../../src/index.js';
import { FILTERS } from '../../../src/plugins/registry.js';
import { readParams } from '../../../src/plugins/params.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { interleavedBytes, py } from '../pylibnbd.js';
import { run, serverPerTest, tmpDir } from '../harness.js';
import { withNbdkit } from './nbdkit-peer.js';

const KiB = 1024;
const MiB = 1 << 20;
const { serve } = serverPerTest();

/** A read result (a buffer, or segments with holes) as one buffer. */
function toBuffer(r: Buffer | readonly ReadSegment[], length: number): Buffer {
  if (Buffer.isBuffer(r)) return r;
  const out = Buffer.alloc(length);
  let at = 0;
  for (const s of r) at += 'data' in s ? s.data.copy(out, at) : s.hole;
  return out;
}

interface Seen { op: string; offset: number; length: number }

/** A filter standing for a fussy backend: EINVAL for requests not aligned to `align` or longer than `maxdata` / `maxlen`; records what it gets. */
function strict(align: number, maxdata: number, maxlen: number, seen: Seen[], bad: Seen[], advertise = true): Filter {
  const guard = (op: string, offset: number, length: number, max: number) => {
    const s = { op, offset, length };
    seen.push(s);
    if (offset % align !== 0 || length % align !== 0 || length > max) {
      bad.push(s);
      throw new NbdRequestError('EINVAL', `${op} ${offset}+${length} breaks the limits`);
    }
  };
  return {
    name: 'strict',
    scope: 'shared',
    wrap: (next: Backend) =>
      layer(next, {
        read: (o, l) => (guard('read', o, l, maxdata), next.read(o, l)),
        write: (o, d, opts) => (guard('write', o, d.length, maxdata), next.write!(o, d, opts)),
        zero: (o, l, opts) => (guard('zero', o, l, maxlen), next.zero!(o, l, opts)),
        trim: (o, l, opts) => (guard('trim', o, l, maxlen), next.trim!(o, l, opts)),
        cache: (o, l) => guard('cache', o, l, maxlen),
        extents: (o, l, opts) => (guard('extents', o, l, maxlen), next.extents!(o, l, opts)),
        // Unadvertised, clients such as qemu do not align for it: what a backend with undeclared limits gets.
        blockSizes: advertise ? { minimum: align, preferred: Math.max(align, 4096), maximum: maxdata } : next.blockSizes,
      }),
  };
}

const QEMU_IO = [
  ['write -P 0x55 1000 70000'],
  ['read -P 0x55 1000 70000'],
  ['write -z 3000 100000'],
  ['read -P 0 3000 100000'],
  ['write -P 0x66 200001 300'],
  ['read -P 0x66 200001 300'],
  ['discard 300000 10000'],
].flatMap(([c]) => ['-c', c!]);

function model(): Buffer {
  const d = Buffer.alloc(MiB);
  d.fill(0x55, 1000, 71000);
  d.fill(0, 3000, 103000);
  d.fill(0x66, 200001, 200301);
  return d;
}

describe('blocksize filter', () => {
  it('misaligned qemu-io I/O reaches a 4 KiB-aligned, 64 KiB-max backend only as requests it accepts; bytes as a model', async () => {
    const mem = memoryBackend({ size: MiB });
    const seen: Seen[] = [];
    const bad: Seen[] = [];
    const plugin = await FILTERS.blocksize!();
    const bs = await plugin.create(readParams('blocksize', plugin.params, ['minblock=4k', 'maxdata=64k', 'maxlen=128k']), { logger: silentLogger, readOnly: false });
    const srv = await serve({ exports: [{ name: 'f', backend: mem, filters: [bs, strict(4 * KiB, 64 * KiB, 128 * KiB, seen, bad)] }, { name: 'bare', backend: memoryBackend({ size: MiB }), filters: [strict(4 * KiB, 64 * KiB, 128 * KiB, [], [], false)] }] });
    const { stdout } = await run('qemu-io', ['-f', 'raw', srv.uri('f'), ...QEMU_IO]);
    expect(stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(bad).toEqual([]);
    expect(seen.some((s) => s.op === 'write' && s.length === 4 * KiB)).toBe(true); // a read-modify-write of an edge block
    expect(Math.max(...seen.filter((s) => s.op === 'read' || s.op === 'write').map((s) => s.length))).toBeLessThanOrEqual(64 * KiB);
    const bytes = toBuffer(await mem.read(0, MiB), MiB);
    expect(bytes.equals(model())).toBe(true);
    // The control: the same fussy backend without the filter refuses qemu-io's first misaligned write.
    const bare = await run('qemu-io', ['-f', 'raw', srv.uri('bare'), '-c', 'write -P 0x55 1000 70000']).then((r) => r.stdout + r.stderr, (e: { stdout: string; stderr: string }) => e.stdout + e.stderr);
    expect(bare).toMatch(/Invalid argument/);
  });

  it('advertises minimum 1 and splits a 1 MiB read and a 1 MiB zero and block status to the limits (libnbd)', async () => {
    const seen: Seen[] = [];
    const bad: Seen[] = [];
    const mem = memoryBackend({ size: MiB + 1000 });
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [blocksizeFilter({ minblock: 4096, maxdata: 65536, maxlen: 131072 }), strict(4096, 65536, 131072, seen, bad)] }] });
    const out = await py<{ flags: { size: number; block_size: number[] }; ext: unknown; first: string; cached: null }>(srv.uri(), `
      h = connect()
      h.pwrite(b'\\x07' * 5, 4095)
      h.zero(1 << 20, 0)
      h.pwrite(b'\\x09' * 3, 1)
      out = {'flags': flags(h), 'first': h.pread(1 << 20, 0)[0:5].hex(), 'ext': extents(h, 5000, 100), 'cached': h.cache(1, 10000)}
    `);
    expect(bad).toEqual([]);
    expect(out.flags.size).toBe(MiB); // rounded down to minblock
    expect(out.flags.block_size.slice(0, 2)).toEqual([1, 4096]);
    expect(out.first).toBe('0009090900');
    expect(seen.filter((s) => s.op === 'zero').map((s) => s.length)).toEqual(Array(8).fill(131072));
    expect(seen.filter((s) => s.op === 'read').every((s) => s.length <= 65536)).toBe(true);
    expect(seen.filter((s) => s.op === 'read').length).toBeGreaterThanOrEqual(16);
    expect((out.ext as { offset: number }).offset).toBe(100);
    expect(seen.some((s) => s.op === 'cache' && s.offset === 8192 && s.length === 4096)).toBe(true);
  });

  it('drops the unaligned head and tail of a trim, and refuses an unaligned fast zero with ENOTSUP', async () => {
    const seen: Seen[] = [];
    const bad: Seen[] = [];
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [blocksizeFilter({ minblock: 4096 }), strict(4096, 1 << 30, 1 << 30, seen, bad)] }] });
    const out = await py<{ fast: string | null; aligned: string | null }>(srv.uri(), `
      h = connect()
      h.trim(20000, 1000)
      out = {'fast': err(h.zero, 5000, 100, nbd.CMD_FLAG_FAST_ZERO), 'aligned': err(h.zero, 8192, 4096, nbd.CMD_FLAG_FAST_ZERO) if h.can_fast_zero() else 'no fast zero'}
    `);
    expect(bad).toEqual([]);
    expect(seen.filter((s) => s.op === 'trim')).toEqual([{ op: 'trim', offset: 4096, length: 16384 }]);
    expect(out.fast).toBe('ENOTSUP');
  });

  it('gives the same bytes as nbdkit --filter=blocksize for the same misaligned qemu-io session', async () => {
    const script = `import hashlib\nh = connect()\nout = {'sha': hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest(), 'bs': flags(h)['block_size'][0:2]}`;
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [blocksizeFilter({ minblock: 4096, maxdata: 65536 })] }] });
    await run('qemu-io', ['-f', 'raw', srv.uri(), ...QEMU_IO]);
    const ours = await py<{ sha: string; bs: number[] }>(srv.uri(), script);
    const kit = await withNbdkit(['--filter=blocksize', 'memory', '1M', 'minblock=4k', 'maxdata=64k'], async (uri) => {
      await run('qemu-io', ['-f', 'raw', uri, ...QEMU_IO]);
      return py<{ sha: string; bs: number[] }>(uri, script);
    });
    expect(ours.sha).toBe(crypto.createHash('sha256').update(model()).digest('hex'));
    expect(kit).toEqual(ours);
  });

  it('serializes read-modify-writes: two connections writing unaligned pieces of the same blocks lose nothing', async () => {
    const mem = memoryBackend({ size: MiB });
    // Reads that take their bytes, then yield to the event loop before answering (a backend with latency),
    // so other requests run between a read-modify-write's read and its write.
    const yielding: Filter = {
      name: 'yield',
      scope: 'shared',
      wrap: (next) => layer(next, { read: async (o, l) => {
        const data = Buffer.from(toBuffer(await next.read(o, l), l));
        await new Promise((r) => setImmediate(r));
        return data;
      } }),
    };
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [blocksizeFilter({ minblock: 65536 }), yielding] }] });
    const dir = tmpDir();
    // Both connect, then wait for each other (a file each), so their writes overlap in time.
    const writer = (k: number) => py(srv.uri(), `
      import os, time
      h = connect()
      open('${dir}/ready${k}', 'w').close()
      while not os.path.exists('${dir}/ready${1 - k}'):
          time.sleep(0.001)
      aio_writes(h, interleaved(${k}, 300), 16)
      out = {}
    `);
    await Promise.all([writer(0), writer(1)]);
    const bytes = toBuffer(await mem.read(0, 1400 * 300), 1400 * 300);
    expect(bytes.equals(interleavedBytes(300))).toBe(true);
  });

  it('refuses bad parameters with a clear error', async () => {
    const plugin = await FILTERS.blocksize!();
    await expect(plugin.create(readParams('blocksize', plugin.params, ['minblock=3000']), { logger: silentLogger, readOnly: false })).rejects.toThrow(/blocksize: minblock=3000: must be a power of 2/);
    await expect(plugin.create(readParams('blocksize', plugin.params, ['minblock=4k', 'maxdata=5000']), { logger: silentLogger, readOnly: false })).rejects.toThrow(/maxdata=5000: must be a multiple of minblock/);
  });
});
