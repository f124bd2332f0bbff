/**
 * The s3 backend against a real Ceph radosgw (one per file, radosgw.ts):
 * nbdcopy and qemu-img in and out, unaligned writes and zeroes checked
 * against a model, holes in BLOCK_STATUS, the metadata object, and the
 * store failing (bucket gone, suspended credentials) → EIO and one log line.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { AwsClient } from 'aws4fetch';
import { describe, expect, it } from 'vitest';
import { s3Backend, S3ConfigError, type ReadSegment, type S3BackendOptions } from '../../../src/index.js';
import { recordingLogger, run, serverPerTest, spawnCli, tmpDir } from '../harness.js';
import { py } from '../pylibnbd.js';
import { radosgwAdmin, radosgwPerFile, type Radosgw } from './radosgw.js';

const store = radosgwPerFile();
const servers = serverPerTest();
const MiB = 1024 * 1024;

function opts(rgw: Radosgw, prefix: string, extra: Partial<S3BackendOptions> = {}): S3BackendOptions {
  return { endpoint: rgw.endpoint, bucket: rgw.bucket, prefix, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, region: rgw.region, ...extra };
}

async function serveS3(prefix: string, extra: Partial<S3BackendOptions> = {}) {
  const logs: string[] = [];
  const backend = await s3Backend(opts(store.get(), prefix, { logger: recordingLogger(logs), ...extra }));
  const running = await servers.serve({ exports: [{ name: 's3', backend }] });
  return { running, backend, logs };
}

const sha256 = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** An image with data and zero runs, so holes are exercised too. */
function makeImage(file: string, size: number, seed: number): void {
  const buf = Buffer.alloc(size);
  let x = seed;
  for (let off = 0; off < size; off += 65536) {
    x = (x * 1103515245 + 12345) >>> 0;
    if (x % 3 !== 0) crypto.randomFillSync(buf, off, Math.min(65536, size - off) - (x % 5000));
  }
  fs.writeFileSync(file, buf);
}

describe('s3 backend on radosgw', () => {
  it('nbdcopy in and out: same sha256; unwritten objects are holes in BLOCK_STATUS; flags and block sizes', async () => {
    const { running } = await serveS3('copy/', { size: 8 * MiB, objectSize: 256 * 1024 });
    const dir = tmpDir();
    const src = path.join(dir, 'src.img');
    makeImage(src, 8 * MiB, 7);
    await run('nbdcopy', [src, running.uri()]);
    await run('nbdcopy', [running.uri(), path.join(dir, 'back.img')]);
    expect(sha256(path.join(dir, 'back.img'))).toBe(sha256(src));

    // Trim whole objects 4 and 5 (1M..1.5M): they become holes and read as zeroes.
    const out = await py<{ flags: Record<string, unknown>; map: { extents: number[][] }; zero: boolean }>(running.uri(), `
      h = connect()
      out['flags'] = flags(h)
      h.trim(512 * 1024, 1024 * 1024)
      out['zero'] = h.pread(512 * 1024, 1024 * 1024) == bytes(512 * 1024)
      out['map'] = extents(h, 2 * 1024 * 1024, 0)
    `);
    expect(out.flags).toMatchObject({ size: 8 * MiB, multi_conn: true, flush: true, fua: true, trim: true, zero: true, block_size: [1, 256 * 1024, 32 * MiB] });
    expect(out.zero).toBe(true);
    const ext = out.map.extents;
    const at = (offset: number) => {
      let pos = 0;
      for (const [len, flags] of ext) {
        if (offset < pos + len!) return flags;
        pos += len!;
      }
      return undefined;
    };
    expect(at(1024 * 1024)).toBe(3);
    expect(at(1024 * 1024 + 256 * 1024)).toBe(3);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('qemu-img convert in and out, compared by qemu-img compare', async () => {
    const { running } = await serveS3('qemu/', { size: 6 * MiB });
    const dir = tmpDir();
    const src = path.join(dir, 'src.img');
    makeImage(src, 6 * MiB, 3);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, running.uri()]);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', running.uri(), path.join(dir, 'back.qcow2')]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, path.join(dir, 'back.qcow2')]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('unaligned writes, write-zeroes and reads across object edges match a model (several requests in flight)', async () => {
    const { running } = await serveS3('model/', { size: 1 * MiB, objectSize: 64 * 1024 });
    const out = await py<{ same: boolean; ops: number }>(running.uri(), `
      import random
      rnd = random.Random(11)
      SIZE = 1024 * 1024
      model = bytearray(SIZE)
      h = connect()
      ops = 0
      for rnd_i in range(60):
          off = rnd.randrange(SIZE - 1)
          ln = rnd.randrange(1, min(200000, SIZE - off) + 1)
          if rnd.random() < 0.75:
              data = bytes(rnd.getrandbits(8) for _ in range(min(ln, 4096))) * (ln // 4096 + 1)
              data = data[:ln]
              h.pwrite(data, off)
              model[off:off + ln] = data
          else:
              h.zero(ln, off)
              model[off:off + ln] = bytes(ln)
          ops += 1
      got = h.pread(SIZE, 0)
      out['same'] = got == bytes(model)
      out['ops'] = ops
    `);
    expect(out.ops).toBe(60);
    expect(out.same).toBe(true);
  });

  it('WRITE_ZEROES: whole objects become holes (kept as zero data with NO_HOLE), partial edges are zeroed; FUA writes and FLUSH succeed', async () => {
    const { running } = await serveS3('zero/', { size: 1 * MiB, objectSize: 64 * 1024 });
    const K = 64 * 1024;
    const out = await py<{ zeroed: boolean; kept: boolean; map: number[][]; flush: string | null }>(running.uri(), `
      K = ${K}
      h = connect()
      h.pwrite(b'\x5a' * (8 * K), 0, nbd.CMD_FLAG_FUA)
      out['flush'] = err(h.flush)
      h.zero(2 * K + 200, K - 100)                            # part of 0, all of 1 and 2, part of 3
      h.zero(2 * K, 5 * K, nbd.CMD_FLAG_NO_HOLE)              # all of 5 and 6, as zero data
      data = h.pread(8 * K, 0)
      out['zeroed'] = data[:K - 100] == b'\x5a' * (K - 100) and data[K - 100:3 * K + 100] == bytes(2 * K + 200) and data[3 * K + 100:5 * K] == b'\x5a' * (2 * K - 100)
      out['kept'] = data[5 * K:7 * K] == bytes(2 * K) and data[7 * K:] == b'\x5a' * K
      out['map'] = extents(h, 8 * K, 0)['extents']
    `);
    expect(out.flush).toBeNull();
    expect(out.zeroed).toBe(true);
    expect(out.kept).toBe(true);
    // Objects 1 and 2 deleted (holes); 0, 3, 4 hold data; 5 and 6 are zero-filled data (NO_HOLE); 7 data.
    expect(out.map).toEqual([
      [K, 0],
      [2 * K, 3],
      [5 * K, 0],
    ]);
  });

  it('BLOCK_STATUS of a big sparse export (64 GiB of 4 KiB objects): the map is right, and a reply ends with the last object listed (list-keys)', async () => {
    const K = 4096;
    const GiB = 2 ** 30;
    // Before: one piece per object in the range (a 4 GiB request of an empty export took 2.4 s and +130 MB).
    const { running } = await serveS3('sparse64/', { size: 64 * GiB, objectSize: K, listKeys: 3 });
    const out = await py<{ data: number[][]; replies: number; first: number[][]; short: number[][] }>(running.uri(), `
      K = ${K}
      SIZE = 64 << 30
      h = connect()
      out['first'] = extents(h, 1 << 31, 0)['extents']                   # an empty export: one hole
      for off in [0, K, 5 * K, (1 << 30) + 3 * K, (17 << 30) + 12345, SIZE - K, SIZE - 2 * K]:
          h.pwrite(b'\x01' * 100, off)
      h.trim(K, 5 * K)                                                   # object 5: an empty object, a hole
      out['short'] = extents(h, 1 << 31, 0)['extents']                   # lists objects 0, 1 and 5 only
      data = []
      pos = 0
      replies = 0
      while pos < SIZE:
          e = extents(h, min(SIZE - pos, 1 << 31), pos)['extents']
          replies += 1
          for ln, fl in e:
              if fl & 1 == 0:
                  if data and data[-1][0] + data[-1][1] == pos: data[-1][1] += ln
                  else: data.append([pos, ln])
              pos += ln
      out['data'] = data
      out['replies'] = replies
    `);
    expect(out.first).toEqual([[2 ** 31, 3]]);
    // The first reply lists 3 keys (objects 0, 1 and the empty 5) and ends with object 5.
    expect(out.short).toEqual([
      [2 * K, 0],
      [4 * K, 3],
    ]);
    expect(out.data).toEqual([
      [0, 2 * K],
      [GiB + 3 * K, K],
      [17 * GiB + 12288, K],
      [64 * GiB - 2 * K, 2 * K],
    ]);
    // 7 objects listed at most 3 per reply: the replies end early, the client asks again; holes of GiBs cost nothing.
    expect(out.replies).toBeGreaterThan(3);
    expect(out.replies).toBeLessThan(3 + 32 + 5);
  });

  it('reopening an export: its size comes from the metadata object; other settings are refused with a clear error', async () => {
    const rgw = store.get();
    const first = await s3Backend(opts(rgw, 'meta/', { size: 3 * MiB, objectSize: 128 * 1024 }));
    await first.write!(100, Buffer.from('kept'), { fua: false });
    const again = await s3Backend(opts(rgw, 'meta/'));
    expect([again.size, again.objectSize]).toEqual([3 * MiB, 128 * 1024]);
    const segs = (await again.read(100, 4)) as { data: Buffer }[];
    expect(Buffer.concat(segs.map((s) => s.data)).toString()).toBe('kept');
    await expect(s3Backend(opts(rgw, 'meta/', { size: 4 * MiB }))).rejects.toThrow(/already exists with size 3145728 \(asked for 4194304\)/);
    await expect(s3Backend(opts(rgw, 'meta/', { objectSize: 1 * MiB }))).rejects.toThrow(S3ConfigError);
    await expect(s3Backend(opts(rgw, 'absent/'))).rejects.toThrow(/no export at s3:\/\/nbd-engine\/absent\/meta: give its size/);
  });

  it('whole-object overwrites with a one-object ETag cache (etag-cache=1, max-attempts=3 on the command line): the data is right', async () => {
    const rgw = store.get();
    const dir = tmpDir();
    const sock = path.join(dir, 'sock');
    const server = await spawnCli(['serve', '-U', sock, 's3', `endpoint=${rgw.endpoint}`, `bucket=${rgw.bucket}`, 'prefix=etag1/', 'size=1M', 'object-size=64K', 'etag-cache=1', 'max-attempts=3'], rgw.env);
    try {
      const out = await py<{ same: boolean }>(`nbd+unix:///?socket=${sock}`, `
        K = 64 * 1024
        h = connect()
        for rnd in range(3):
            for i in range(16):
                h.pwrite(bytes([rnd * 16 + i + 1]) * K, i * K)
        h.trim(4 * K, 0)
        got = h.pread(16 * K, 0)
        out['same'] = got == bytes(4 * K) + b''.join(bytes([32 + i + 1]) * K for i in range(4, 16))
      `);
      expect(out.same).toBe(true);
    } finally {
      server.child.kill('SIGTERM');
      await new Promise((r) => server.child.once('exit', r));
    }
    const refused = await spawnCli(['serve', '-U', path.join(dir, 'sock2'), 's3', `endpoint=${rgw.endpoint}`, `bucket=${rgw.bucket}`, 'prefix=etag1/', 'etag-cache=0'], rgw.env).then(
      () => 'started',
      (e: Error) => e.message,
    );
    expect(refused).toMatch(/etagCache must be a positive integer \(got 0\)/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the bucket disappearing: the client gets EIO, the server logs one line and keeps serving', async () => {
    const rgw = store.get();
    const aws = new AwsClient({ accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, region: rgw.region, service: 's3', retries: 0 });
    const bucketUrl = `${rgw.endpoint}/doomed`;
    expect((await aws.fetch(bucketUrl, { method: 'PUT' })).status).toBe(200);
    const { running, logs } = await serveS3('', { bucket: 'doomed', size: 1 * MiB });
    expect((await aws.fetch(`${bucketUrl}/meta`, { method: 'DELETE' })).status).toBe(204);
    expect((await aws.fetch(bucketUrl, { method: 'DELETE' })).status).toBe(204);
    const out = await py<{ read: string | null; write: string | null; size: number }>(running.uri(), `
      h = connect()
      out['read'] = err(h.pread, 4096, 0)
      out['write'] = err(h.pwrite, b'x' * 100, 10)
      out['size'] = h.get_size()
    `);
    expect(out).toEqual({ read: 'EIO', write: 'EIO', size: MiB });
    const errors = logs.filter((l) => l.startsWith('error:'));
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/s3: read 0\+4096 failed: GET s3:\/\/doomed\/0000000000000000: HTTP 404 NoSuchBucket/);
    expect(errors[1]).toMatch(/s3: write 10\+100 failed: GET s3:\/\/doomed\/0000000000000000: HTTP 404 NoSuchBucket/);
  });

  it('credentials refused while serving (user suspended): EIO and one log line per request; at start: the CLI exits with one clear line', async () => {
    const rgw = store.get();
    const access = 'SUSPENDME0000000000';
    const secret = 'suspendme-secret-0000000000000000000000';
    await radosgwAdmin(rgw, ['user', 'create', '--uid=suspended', '--display-name=suspended', `--access-key=${access}`, `--secret-key=${secret}`]);
    // The user's own bucket (another user's would be refused from the start).
    const aws = new AwsClient({ accessKeyId: access, secretAccessKey: secret, region: rgw.region, service: 's3', retries: 0 });
    expect((await aws.fetch(`${rgw.endpoint}/creds`, { method: 'PUT' })).status).toBe(200);
    const { running, logs } = await serveS3('', { bucket: 'creds', accessKeyId: access, secretAccessKey: secret, size: 1 * MiB });
    await radosgwAdmin(rgw, ['user', 'suspend', '--uid=suspended']);
    const out = await py<{ read: string | null; zero: string | null }>(running.uri(), `
      h = connect()
      out['read'] = err(h.pread, 512, 0)
      out['zero'] = err(h.zero, 4096, 1000)
    `);
    expect(out).toEqual({ read: 'EIO', zero: 'EIO' });
    const errors = logs.filter((l) => l.startsWith('error:'));
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/s3: read 0\+512 failed: GET s3:\/\/creds\/0000000000000000: HTTP 403/);

    const dir = tmpDir();
    const started = spawnCli(['serve', '-U', path.join(dir, 'sock'), 's3', `endpoint=${rgw.endpoint}`, 'bucket=creds'], {
      AWS_ACCESS_KEY_ID: access,
      AWS_SECRET_ACCESS_KEY: secret,
    });
    const failure = await started.then(
      () => 'started',
      (e: Error) => e.message,
    );
    expect(failure).toMatch(/exited 1 before listening/);
    const lines = failure.split('\n').filter((l) => /s3/.test(l));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/cannot open the export: GET s3:\/\/creds\/meta: HTTP 403/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

/**
 * A TCP proxy in front of the store that can hold what the client sends for `delayMs`, as a slow
 * network or an overloaded store would: a request the client gave up on still reaches the store,
 * later.
 */
async function slowLink(target: string): Promise<{ endpoint: string; delayMs: number; close(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<net.Socket>();
  const link = { endpoint: '', delayMs: 0, close: async () => {} };
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    const later = (fn: () => void) => (link.delayMs ? setTimeout(fn, link.delayMs) : fn());
    client.on('data', (d) => later(() => upstream.write(d)));
    // The client giving up does not reach the store (a FIN right behind the request would make
    // radosgw drop it): the store answers a request nobody waits for any more.
    upstream.on('data', (d) => client.destroyed || client.write(d));
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  link.endpoint = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  link.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return link;
}

describe('s3: a request that timed out but reaches the store later', () => {
  // Every PUT is conditional on the ETag the object had, so the late one is refused by the store
  // once anything was written after it: an unconditional PUT (or DELETE) replaced the acknowledged
  // write that came in between.
  for (const late of ['write', 'trim'] as const) {
    it(`a late ${late.toUpperCase()} does not replace the write acknowledged after it`, async () => {
      const rgw = store.get();
      const link = await slowLink(rgw.endpoint);
      try {
        const K = 64 * 1024;
        const logs: string[] = [];
        const backend = await s3Backend(opts(rgw, `late-${late}/`, { endpoint: link.endpoint, size: 4 * K, objectSize: K, timeout: 1000, logger: recordingLogger(logs) }));
        await backend.write!(0, Buffer.alloc(K, 0x58), { fua: false });
        link.delayMs = 2500;
        const failed = await Promise.resolve(late === 'write' ? backend.write!(0, Buffer.alloc(K, 0x59), { fua: false }) : backend.trim!(0, K, { fua: false })).then(
          () => 'acknowledged',
          (e: Error) => e.message,
        );
        expect(failed).toMatch(/no answer in 1000 ms/);
        link.delayMs = 0;
        await backend.write!(0, Buffer.alloc(K, 0x5a), { fua: false });
        // The late request reaches the store now.
        await new Promise((r) => setTimeout(r, 3000));
        const segments = (await backend.read(0, K)) as readonly ReadSegment[];
        const back = Buffer.concat(segments.map((seg) => ('data' in seg ? seg.data : Buffer.alloc(seg.hole))));
        expect(back.length).toBe(K);
        expect(back.every((b) => b === 0x5a)).toBe(true);
      } finally {
        await link.close();
      }
    });
  }
});
