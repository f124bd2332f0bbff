/**
 * The s3 backend's object layout and its configuration checks (no store
 * needed: these fail before any request is sent). The behaviour against a
 * real store is in test/integration/s3/.
 */
import { describe, expect, it } from 'vitest';
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
