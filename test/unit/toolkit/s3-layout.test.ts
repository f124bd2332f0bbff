/**
 * The s3 backend's object layout and its configuration checks (no store
 * needed: these fail before any request is sent). The behaviour against a
 * real store is in test/integration/s3/.
 */
import { describe, expect, it, vi } from 'vitest';
import { s3Backend, S3ConfigError } from '../../../src/index.js';
import { S3Client } from '../../../src/backends/s3/client.js';
import { ObjectStore } from '../../../src/backends/s3/objects.js';
import { backendPlugin } from '../../../src/plugins/registry.js';
import { ParamError, readParams } from '../../../src/plugins/params.js';

const client = new S3Client({ endpoint: 'http://127.0.0.1:9', bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 1, timeout: 1000 });

describe('s3 object layout', () => {
  it('keys are the prefix and a 16-digit object number, so key order is offset order', () => {
    const store = new ObjectStore(client, 'vm/', 10 * 4096 + 100, 4096, 3);
    expect(store.key(0)).toBe('vm/0000000000000000');
    expect(store.key(42)).toBe('vm/0000000000000042');
    expect(store.key(9) < store.key(10)).toBe(true);
  });

  it('a request is cut at object boundaries; the last object is short', () => {
    const store = new ObjectStore(client, '', 10 * 4096 + 100, 4096, 3);
    expect(store.pieces(4000, 5000)).toEqual([
      { n: 0, within: 4000, length: 96, at: 0 },
      { n: 1, within: 0, length: 4096, at: 96 },
      { n: 2, within: 0, length: 808, at: 4192 },
    ]);
    expect(store.objectLength(10)).toBe(100);
    expect(store.pieces(10 * 4096, 100)).toEqual([{ n: 10, within: 0, length: 100, at: 0 }]);
  });
});

describe('s3Backend configuration', () => {
  const base = { endpoint: 'http://127.0.0.1:9', bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', size: 1 << 20 };
  it.each([
    [{ objectSize: 3000 }, /object size must be a power of 2 from 4K to 32M \(got 3000\)/],
    [{ objectSize: 64 * 1024 * 1024 }, /object size must be a power of 2/],
    [{ endpoint: 'ftp://x' }, /endpoint must be an http/],
    [{ bucket: '' }, /bucket is required/],
    [{ concurrency: 0 }, /concurrency must be a positive integer/],
    [{ size: -1 }, /bad size -1/],
    // Node fires a timer of more than 2^31 − 1 ms after 1 ms: every request failed at once with
    // "no answer in 3000000000 ms".
    [{ timeout: 3_000_000_000 }, /s3: timeout must be a positive integer of at most 2147483647 \(got 3000000000\)/],
    [{ timeout: 2 ** 31 }, /timeout must be a positive integer of at most 2147483647/],
  ])('%o is refused before any request', async (extra, message) => {
    await expect(s3Backend({ ...base, ...extra })).rejects.toThrow(S3ConfigError);
    await expect(s3Backend({ ...base, ...extra })).rejects.toThrow(message);
  });

  it('on the command line a timeout past 2^31 − 1 ms is a parameter error naming it, before any request', async () => {
    const plugin = await backendPlugin('s3');
    const args = ['endpoint=http://127.0.0.1:9', 'bucket=b', 'access-key=k', 'secret-key=s', 'size=1M', 'timeout=3000000000'];
    const create = plugin.create(readParams('s3', plugin.params, args, plugin.magic), { logger: { warn: () => {}, error: () => {} }, readOnly: false });
    await expect(create).rejects.toThrow(ParamError);
    await expect(create).rejects.toThrow(/timeout must be a positive integer of at most 2147483647 \(got 3000000000\)/);
  });

  it('no credentials in the options nor in the environment: refused', async () => {
    const saved = [process.env.AWS_ACCESS_KEY_ID, process.env.AWS_SECRET_ACCESS_KEY];
    delete process.env.AWS_ACCESS_KEY_ID;
    delete process.env.AWS_SECRET_ACCESS_KEY;
    try {
      await expect(s3Backend({ endpoint: 'http://127.0.0.1:9', bucket: 'b', size: 4096 })).rejects.toThrow(/no credentials: give access-key and secret-key, or set AWS_ACCESS_KEY_ID/);
    } finally {
      if (saved[0] !== undefined) process.env.AWS_ACCESS_KEY_ID = saved[0];
      if (saved[1] !== undefined) process.env.AWS_SECRET_ACCESS_KEY = saved[1];
    }
  });
});

describe('s3 BLOCK_STATUS: the cost follows the objects listed, not the range', () => {
  const K4 = 4096;
  const GiB = 2 ** 30;
  const HZ = 3; // HOLE | ZERO

  it('holes are the runs between listed objects (neighbours merged; an empty object is a hole; the last object is short)', () => {
    const store = new ObjectStore(client, 'vm/', 10 * K4 + 100, K4, 3);
    const listed = [0, 1, 3, 4, 6, 10].map((n) => ({ n, size: n === 3 ? 0 : K4 }));
    expect(store.extentsOf(0, 10 * K4 + 100, listed, true)).toEqual([
      { length: 2 * K4, flags: 0 },
      { length: 2 * K4, flags: HZ },
      { length: K4, flags: 0 },
      { length: K4, flags: HZ },
      { length: K4, flags: 0 },
      { length: 3 * K4, flags: HZ },
      { length: 100, flags: 0 },
    ]);
    // Unaligned ends are clipped to the range.
    expect(store.extentsOf(100, 2 * K4, listed, true)).toEqual([
      { length: 2 * K4 - 100, flags: 0 },
      { length: 100, flags: HZ },
    ]);
    // A listing that stopped short: the answer ends with the last object listed.
    expect(store.extentsOf(0, 10 * K4 + 100, listed.slice(0, 4), false)).toEqual([
      { length: 2 * K4, flags: 0 },
      { length: 2 * K4, flags: HZ },
      { length: K4, flags: 0 },
    ]);
    // At most `max` extents.
    expect(store.extentsOf(0, 10 * K4 + 100, listed, true, 3)).toEqual([
      { length: 2 * K4, flags: 0 },
      { length: 2 * K4, flags: HZ },
      { length: K4, flags: 0 },
    ]);
  });

  it('a 4 GiB BLOCK_STATUS of an empty export of 4 KiB objects computes no per-object piece: one LIST, one extent', async () => {
    const c = new S3Client({ endpoint: 'http://127.0.0.1:9', bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 1, timeout: 1000 });
    const store = new ObjectStore(c, 'vm/', 64 * GiB, K4, 3);
    const list = vi.spyOn(c, 'list').mockResolvedValue([]);
    let pieces = 0;
    const cut = store.pieces.bind(store);
    vi.spyOn(store, 'pieces').mockImplementation((o, l) => {
      const p = cut(o, l);
      pieces += p.length;
      return p;
    });
    expect(await store.extents(GiB, 4 * GiB)).toEqual([{ length: 4 * GiB, flags: HZ }]);
    expect(pieces).toBe(0); // before: one piece per object in the range, 1 048 576 of them (2.4 s, +130 MB)
    expect(list).toHaveBeenCalledTimes(1);
  });

  it('one reply lists at most listKeys keys (and no more than the extents it may carry): it ends with the last object listed', async () => {
    const c = new S3Client({ endpoint: 'http://127.0.0.1:9', bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 1, timeout: 1000 });
    const store = new ObjectStore(c, 'vm/', 64 * GiB, K4, 3, undefined, 65_536, 1000);
    // Every other object has data: the store would list 8M keys for the whole export.
    const list = vi.spyOn(c, 'list').mockImplementation(async (_prefix, after, _last, _call, maxKeys = Infinity) => {
      const from = after === undefined ? 0 : Number(after.slice(3)) + 1;
      const keys = [];
      for (let n = from + (from % 2); keys.length < Math.min(maxKeys, 100_000); n += 2) keys.push({ key: store.key(n), size: K4 });
      return keys;
    });
    const ext = await store.extents(0, 64 * GiB);
    expect(list.mock.calls[0]![4]).toBe(1000);
    expect(ext.length).toBe(1999); // 1000 objects and the 999 holes between them
    expect(ext.reduce((sum, e) => sum + e.length, 0)).toBe(1999 * K4);
    const few = await store.extents(0, 64 * GiB, 10);
    expect(list.mock.calls[1]![4]).toBe(10);
    expect(few.length).toBe(10);
  });
});
