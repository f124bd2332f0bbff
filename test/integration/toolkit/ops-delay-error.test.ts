/**
 * The delay and error filters with real clients (python3-libnbd, qemu-io),
 * made from their command-line parameters: a delayed READ does not hold
 * up other commands; injected errors reach the client with the chosen
 * errno, by operation, rate (seeded, reproducible), file and byte range.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorInjector, memoryBackend } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest, tmpDir } from '../harness.js';
import { filterFromArgs } from './ops-plugin.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

/** Python: a READ sent first, then a FLUSH and a WRITE; prints the order they completed in. */
const RACE = `
h = connect()
order = []
def done(tag):
    def cb(error):
        order.append(tag if error.value == 0 else tag + ':err')
        return 1
    return cb
buf = nbd.Buffer(4096)
h.aio_pread(buf, 0, done('read'))
h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b'w' * 4096)), 8192, done('write'))
h.aio_flush(done('flush'))
while h.aio_in_flight() > 0:
    h.poll(-1)
out = {'order': order}
`;

describe('delay filter', () => {
  it('a delayed READ does not hold up a WRITE and a FLUSH sent after it (timers, not a blocked server)', async () => {
    const delay = await filterFromArgs('delay', ['delay-read=1500ms']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [delay] }] });
    const out = await py<{ order: string[] }>(srv.uri(), RACE);
    expect(out.order).toHaveLength(3);
    expect(out.order[2]).toBe('read');
    expect(out.order.slice(0, 2).sort()).toEqual(['flush', 'write']);
  });

  it('wdelay delays writes, not reads: the READ sent first now finishes first', async () => {
    const delay = await filterFromArgs('delay', ['wdelay=1', 'delay-flush=1']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [delay] }] });
    const out = await py<{ order: string[] }>(srv.uri(), RACE);
    expect(out.order[0]).toBe('read');
    expect(out.order.slice(1).sort()).toEqual(['flush', 'write']);
  });

  it('delay-fast-zero=false fails fast-zero requests with ENOTSUP at once; plain zeroes still work', async () => {
    const delay = await filterFromArgs('delay', ['delay-zero=10ms', 'delay-fast-zero=false']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [delay] }] });
    const out = await py(srv.uri(), `
      h = connect()
      out = {'fast': err(h.zero, 4096, 0, nbd.CMD_FLAG_FAST_ZERO), 'plain': err(h.zero, 4096, 0), 'can_fast': h.can_fast_zero()}
    `);
    expect(out).toEqual({ fast: 'ENOTSUP', plain: null, can_fast: true });
  });

  it('bad durations are refused with the key named', async () => {
    await expect(filterFromArgs('delay', ['rdelay=soon'])).rejects.toThrow(/delay: rdelay=soon/);
  });
});

describe('error filter', () => {
  it('error-pwrite=ENOSPC at 100%: writes fail with ENOSPC, reads are untouched (libnbd and qemu-io)', async () => {
    const error = await filterFromArgs('error', ['error-pwrite=ENOSPC', 'error-pwrite-rate=100%']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [error] }] });
    const out = await py(srv.uri(), `
      h = connect()
      out = {'write': err(h.pwrite, b'x' * 512, 0), 'read': err(h.pread, 512, 0), 'trim': err(h.trim, 512, 0)}
    `);
    expect(out).toEqual({ write: 'ENOSPC', read: null, trim: null });
    const q = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', srv.uri()]).then((r) => r.stdout + r.stderr, (e: { stdout: string; stderr: string }) => e.stdout + e.stderr);
    expect(q).toMatch(/write failed: No space left on device/);
  });

  it('error-rate with error-seed is reproducible: the same seed gives the same errors, as ErrorInjector predicts', async () => {
    const args = ['error-rate=40%', 'error-seed=1234', 'error=EPERM'];
    const script = `
      h = connect()
      out = {'errs': [err(h.pread, 512, i * 512) for i in range(40)]}
    `;
    const runOnce = async () => {
      const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [await filterFromArgs('error', args)] }] });
      const out = await py<{ errs: Array<string | null> }>(srv.uri(), script);
      await srv.close();
      return out.errs;
    };
    const first = await runOnce();
    const second = await runOnce();
    expect(second).toEqual(first);
    const model = new ErrorInjector({ rate: 0.4, seed: 1234, error: 'EPERM' });
    const predicted = Array.from({ length: 40 }, (_, i) => model.decide({ op: 'read', offset: i * 512, count: 512 }) ?? null);
    expect(first).toEqual(predicted);
    const failures = first.filter((e) => e !== null).length;
    expect(failures).toBeGreaterThan(0);
    expect(failures).toBeLessThan(40);
  });

  it('error-file: errors only while the file exists', async () => {
    const dir = tmpDir();
    const flag = path.join(dir, 'inject');
    const error = await filterFromArgs('error', ['error-rate=1', `error-file=${flag}`]);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [error] }] });
    const out = await py(srv.uri(), `
      import os
      h = connect()
      a = err(h.pread, 512, 0)
      open(ARGS[0], 'w').close()
      b = err(h.pread, 512, 0)
      os.unlink(ARGS[0])
      c = err(h.pread, 512, 0)
      out = {'before': a, 'while': b, 'after': c}
    `, [flag]);
    expect(out).toEqual({ before: null, while: 'EIO', after: null });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('error-offset / error-length: only requests touching the range fail; FLUSH is outside any range', async () => {
    const error = await filterFromArgs('error', ['error-rate=1', 'error=ENOMEM', 'error-offset=1M', 'error-length=4K']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: 2 * MiB }), filters: [error] }] });
    const out = await py(srv.uri(), `
      h = connect()
      M = 1 << 20
      out = {
        'before': err(h.pread, 512, M - 512),
        'overlapping': err(h.pread, 1024, M - 512),
        'inside': err(h.pwrite, b'a' * 512, M + 512),
        'last_byte': err(h.pread, 1, M + 4095),
        'after': err(h.pread, 512, M + 4096),
        'flush': err(h.flush),
      }
    `);
    expect(out).toEqual({ before: null, overlapping: 'ENOMEM', inside: 'ENOMEM', last_byte: 'ENOMEM', after: null, flush: null });
  });

  it('per-operation settings fall back to the general ones (error-extents-rate with error=ESHUTDOWN)', async () => {
    const error = await filterFromArgs('error', ['error=ESHUTDOWN', 'error-extents-rate=1']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [error] }] });
    const out = await py(srv.uri(), `
      h = connect()
      out = {'extents': err(extents, h, 4096, 0), 'read': err(h.pread, 512, 0)}
    `);
    expect(out).toEqual({ extents: 'ESHUTDOWN', read: null });
  });

  it("as nbdkit's: error-rate=100% fails every request but FLUSH, and CACHE too on a backend with no cache of its own", async () => {
    const error = await filterFromArgs('error', ['error-rate=100%']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [error] }] });
    const out = await py(srv.uri(), `
      h = connect()
      out = {'read': err(h.pread, 512, 0), 'write': err(h.pwrite, b'x' * 512, 0), 'cache': err(h.cache, 512, 0), 'flush': err(h.flush)}
    `);
    expect(out).toEqual({ read: 'EIO', write: 'EIO', cache: 'EIO', flush: null });
    // FLUSH fails only by its own rate; CACHE by its own errno.
    const own = await filterFromArgs('error', ['error-flush-rate=1', 'error-cache=ENOSPC', 'error-cache-rate=1']);
    const srv2 = await serve({ exports: [{ name: '', backend: memoryBackend({ size: MiB }), filters: [own] }] });
    const out2 = await py(srv2.uri(), `
      h = connect()
      out = {'read': err(h.pread, 512, 0), 'cache': err(h.cache, 512, 0), 'flush': err(h.flush)}
    `);
    expect(out2).toEqual({ read: null, cache: 'ENOSPC', flush: 'EIO' });
  });

  it('bad parameters are refused with the key named', async () => {
    await expect(filterFromArgs('error', ['error=EBANANA'])).rejects.toThrow(/error: error=EBANANA: unknown errno/);
    await expect(filterFromArgs('error', ['error-rate=150%'])).rejects.toThrow(/error-rate=150%/);
  });
});
