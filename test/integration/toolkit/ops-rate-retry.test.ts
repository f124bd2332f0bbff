/**
 * The rate and retry filters with real clients: a rate-limited transfer
 * takes at least the time its bits need (a generous lower bound only),
 * shared across connections, and metadata requests are not limited;
 * failed requests are retried until they succeed, or fail with the
 * backend's errno once the retries are spent, never hanging.
 */
import { describe, expect, it } from 'vitest';
import { layer, memoryBackend, NbdRequestError, retryFilter, type Backend, type ReopenableBackend } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { run, serverPerTest } from '../harness.js';
import { filterFromArgs } from './ops-plugin.js';

const MiB = 1 << 20;
const { serve } = serverPerTest();

describe('rate filter', () => {
  it('rate=8M: 6 MiB read by two nbdcopy connections at once takes at least 3 s (one bucket for the export), and nothing fails', async () => {
    const rate = await filterFromArgs('rate', ['rate=8M']);
    // Data everywhere: nbdcopy skips what extents call holes, and a fresh memory backend is all hole.
    const mem = memoryBackend({ size: 3 * MiB });
    mem.write!(0, Buffer.alloc(3 * MiB, 0x5a), { fua: false });
    const srv = await serve({ exports: [{ name: '', backend: mem, filters: [rate] }] });
    const started = performance.now();
    // 2 × 3 MiB = 48 Mibit at 8 Mibit/s, less the bucket's first 2 s (it starts full): 4 s when the
    // bucket is shared, 1 s if each connection had its own.
    const copies = await Promise.all([run('nbdcopy', [srv.uri(), 'null:']), run('nbdcopy', [srv.uri(), 'null:'])]);
    expect(copies.map((c) => c.stderr.includes('error'))).toEqual([false, false]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(3000);
  });

  it('connection-rate limits writes too; zeroing and trimming are metadata and pass freely', async () => {
    const rate = await filterFromArgs('rate', ['connection-rate=4M']);
    const srv = await serve({ exports: [{ name: '', backend: memoryBackend({ size: 256 * MiB }), filters: [rate] }] });
    const started = performance.now();
    // 2.5 MiB = 20 Mibit at 4 Mibit/s, less the bucket's first 2 s: 3 s.
    const out = await py(srv.uri(), `
      h = connect()
      for i in range(5):
          h.pwrite(b'r' * (512 * 1024), i * 512 * 1024)
      # 256 MiB of zeroes and trims: hours at 4 Mibit/s if they were counted.
      h.zero(256 * 1024 * 1024, 0)
      h.trim(256 * 1024 * 1024, 0)
      out = {'read_back': err(h.pread, 4096, 0)}
    `);
    expect(out.read_back).toBeNull();
    expect(performance.now() - started).toBeGreaterThanOrEqual(2500);
  });

  it('bad rates are refused with the key named', async () => {
    await expect(filterFromArgs('rate', ['rate=fast'])).rejects.toThrow(/rate: rate=fast/);
  });
});

/** A memory backend whose first `failures` reads throw `errno`. */
function flaky(failures: number, errno: 'EIO' | 'ENOSPC' = 'EIO'): { backend: Backend; calls: () => number } {
  const mem = memoryBackend({ size: MiB });
  let calls = 0;
  const backend = layer(mem, {
    read: (o, l) => {
      calls++;
      if (calls <= failures) throw new NbdRequestError(errno, `flaky read ${calls}`);
      return mem.read(o, l);
    },
  });
  return { backend, calls: () => calls };
}

describe('retry filter', () => {
  it('a backend that fails 3 times then succeeds: the client sees success', async () => {
    const { backend, calls } = flaky(3);
    const retry = await filterFromArgs('retry', ['retries=5', 'retry-delay=10ms']);
    const srv = await serve({ exports: [{ name: '', backend, filters: [retry] }] });
    const out = await py(srv.uri(), `h = connect(); out = {'read': err(h.pread, 512, 0)}`);
    expect(out.read).toBeNull();
    expect(calls()).toBe(4);
    expect(srv.logs.filter((l) => l.includes('retry filter')).length).toBe(3);
  });

  it('a backend that always fails: the client gets its errno after retries + 1 tries, no hang', async () => {
    const { backend, calls } = flaky(Infinity, 'ENOSPC');
    const retry = await filterFromArgs('retry', ['retries=2', 'retry-delay=10ms', 'retry-exponential=no']);
    const srv = await serve({ exports: [{ name: '', backend, filters: [retry] }] });
    const out = await py(srv.uri(), `h = connect(); out = {'read': err(h.pread, 512, 0), 'again': err(h.pread, 512, 0)}`);
    expect(out).toEqual({ read: 'ENOSPC', again: 'ENOSPC' });
    expect(calls()).toBe(6);
  });

  it('nbdsh: a read retried past two failures returns the data; one that keeps failing exits with the errno', async () => {
    const mem = memoryBackend({ size: MiB });
    mem.write!(0, Buffer.from('retried!'), { fua: false });
    let calls = 0;
    // Reads at offset 0 fail twice, reads at 4096 always.
    const backend = layer(mem, {
      read: (o, l) => {
        calls++;
        if (o === 4096 || calls <= 2) throw new NbdRequestError('EIO', 'flaky');
        return mem.read(o, l);
      },
    });
    const retry = await filterFromArgs('retry', ['retries=3', 'retry-delay=5ms']);
    const srv = await serve({ exports: [{ name: '', backend, filters: [retry] }] });
    // nbdsh runs the first python3 on PATH: Debian's has the libnbd binding.
    const env = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };
    const ok = await run('nbdsh', ['-u', srv.uri(), '-c', 'print(h.pread(8, 0).decode())'], { env });
    expect(ok.stdout.trim()).toBe('retried!');
    const failed = await run('nbdsh', ['-u', srv.uri(), '-c', 'h.pread(8, 4096)'], { env }).then(
      () => 'succeeded',
      (e: { stderr: string }) => e.stderr,
    );
    expect(failed).toMatch(/EIO|Input\/output error/);
  });

  it('reopens a backend that offers reopen(), and uses the fresh one', async () => {
    const good = memoryBackend({ size: MiB });
    good.write!(0, Buffer.alloc(512, 0x42), { fua: false });
    let reopened = 0;
    const broken: ReopenableBackend = {
      size: MiB,
      read: () => {
        throw new NbdRequestError('EIO', 'connection below is broken');
      },
      reopen: () => (reopened++, good),
    };
    const srv = await serve({ exports: [{ name: '', backend: broken, filters: [retryFilter({ retries: 3, delay: 10 })] }] });
    const out = await py<{ head: string }>(srv.uri(), `h = connect(); out = {'head': h.pread(2, 0).hex()}`);
    expect(out.head).toBe('4242');
    expect(reopened).toBe(1);
  });

  it('retry-readonly: after a failure, the connection refuses writes at once with EPERM; a new connection may write', async () => {
    const { backend } = flaky(1);
    const retry = await filterFromArgs('retry', ['retries=1', 'retry-delay=10ms', 'retry-readonly=yes']);
    const srv = await serve({ exports: [{ name: '', backend, filters: [retry] }] });
    const out = await py(srv.uri(), `
      h = connect()
      before = err(h.pwrite, b'a' * 512, 0)
      read = err(h.pread, 512, 0)
      after = err(h.pwrite, b'a' * 512, 0)
      h2 = connect()
      out = {'before': before, 'read': read, 'after': after, 'other': err(h2.pwrite, b'b' * 512, 0)}
    `);
    expect(out).toEqual({ before: null, read: null, after: 'EPERM', other: null });
  });
});
