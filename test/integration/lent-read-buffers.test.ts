/**
 * READ buffers the server lends (Backend.readInto; the file backend uses it)
 * are reused only once their reply is written: with many READs in flight of
 * many sizes, over plain and TLS sockets, with several connections, every
 * byte a real client gets is the file's, and the pool is in use.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fileBackend } from '../../src/index.js';
import { nbdPython, requirePythonNbd, requireTool, run, startServer, tmpDir, type Running } from './harness.js';
import { makePsk } from './tls-support.js';

const SIZE = 32 * 1024 * 1024;

/**
 * 4 connections, each with up to 64 READs in flight (aio), 600 READs of random offsets and
 * sizes (512 B … 1 MiB, a few sizes repeated so buffers are reused), every one checked against
 * the file's bytes; prints the number checked.
 */
const CHECK_READS = String.raw`
import sys, random, nbd
uri, path = sys.argv[1], sys.argv[2]
psk = sys.argv[3] if len(sys.argv) > 3 else None
data = open(path, 'rb').read()
random.seed(int(sys.argv[4]) if len(sys.argv) > 4 else 7)
sizes = [512, 4096, 20000, 65536, 65536 + 512, 262144, 1048576]
hs = []
for _ in range(4):
    h = nbd.NBD()
    if psk:
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(psk)
        h.set_tls_username('alice')
    h.connect_uri(uri)
    hs.append(h)
bad = []
checked = 0
pending = []
def done(h, buf, off, n):
    global checked
    got = buf.to_bytearray()
    if got != data[off:off + n]:
        bad.append((off, n))
    checked += 1
for i in range(600):
    h = hs[i % 4]
    n = random.choice(sizes)
    off = random.randrange(0, (len(data) - n) // 512) * 512
    buf = nbd.Buffer(n)
    cookie = h.aio_pread(buf, off)
    pending.append((h, cookie, buf, off, n))
    while h.aio_in_flight() >= 64:
        h.poll(-1)
    still = []
    for p in pending:
        if p[0].aio_command_completed(p[1]):
            done(p[0], p[2], p[3], p[4])
        else:
            still.append(p)
    pending = still
for p in pending:
    while not p[0].aio_command_completed(p[1]):
        p[0].poll(-1)
    done(p[0], p[2], p[3], p[4])
for h in hs:
    h.shutdown()
print(checked, len(bad), bad[:3])
`;

let work: string;
let file: string;
let data: Buffer;
let srv: Running | undefined;
beforeAll(() => {
  requirePythonNbd();
  requireTool('nbdcopy');
  work = tmpDir();
  file = path.join(work, 'disk.img');
  data = crypto.randomBytes(SIZE);
  fs.writeFileSync(file, data);
  return () => fs.rmSync(work, { recursive: true, force: true });
});
afterEach(async () => {
  await srv?.close();
  srv = undefined;
});

describe('lent READ buffers (readInto) under real clients', () => {
  it('600 random READs over 4 connections, 64 in flight each: every byte is the file’s, and buffers were reused', async () => {
    srv = await startServer({ exports: [{ name: 'd', backend: await fileBackend({ path: file, readOnly: true }) }] });
    const out = await nbdPython(CHECK_READS, [srv.uri(), file], 120_000);
    expect(out.trim()).toBe('600 0 []');
    const c = srv.server.readPool.counters;
    expect(c.reused).toBeGreaterThan(100);
    expect(c.returned).toBeGreaterThan(500);
  });

  it('the same over TLS (PSK): the encrypted path gives buffers back only once written', async () => {
    const psk = makePsk(path.join(work, 'keys.psk'), ['alice']);
    srv = await startServer({
      exports: [{ name: 'd', backend: await fileBackend({ path: file, readOnly: true }) }],
      tls: { mode: 'require', psk },
    });
    const uri = `nbds+unix:///d?socket=${srv.socket}`;
    const out = await nbdPython(CHECK_READS, [uri, file, psk, '11'], 120_000);
    expect(out.trim()).toBe('600 0 []');
    expect(srv.server.readPool.counters.reused).toBeGreaterThan(100);
  });

  it('nbdcopy (4 connections, 64 requests each) copies the image byte for byte; with readBufferPool 0 too', async () => {
    for (const readBufferPool of [undefined, 0]) {
      srv = await startServer({
        exports: [{ name: 'd', backend: await fileBackend({ path: file }) }],
        limits: readBufferPool === undefined ? {} : { readBufferPool },
      });
      const out = path.join(work, `copy-${readBufferPool ?? 'default'}.img`);
      await run('nbdcopy', ['--connections=4', '--requests=64', srv.uri(), out], { timeout: 120_000 });
      expect(fs.readFileSync(out).equals(data)).toBe(true);
      const c = srv.server.readPool.counters;
      if (readBufferPool === 0) expect([c.reused, srv.server.readPool.idleSize]).toEqual([0, 0]);
      else expect(c.reused).toBeGreaterThan(0);
      await srv.close();
      srv = undefined;
    }
  });
});
