/**
 * The operator forms (delayRequests, injectErrors, logRequests,
 * collectStats) on a request-stream export, with python3-libnbd as the
 * client: a delayed READ is overtaken by a WRITE, an injected error reaches
 * the client, and the log and the stats see every request with its answer.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { collectStats, delayRequests, injectErrors, logRequests, serveRequests, StatsCollector } from '../../../src/index.js';
import { py } from '../pylibnbd.js';
import { serverPerTest, tmpDir } from '../harness.js';

const MiB = 1 << 20;

describe('operators on the request stream', () => {
  const { serve, track } = serverPerTest();

  it('delay, inject, log and count requests served by a handler', async () => {
    const dir = tmpDir();
    const logfile = path.join(dir, 'requests.log');
    const bytes = Buffer.alloc(MiB);
    const srv = await serve({ exports: [{ name: 'stream', size: MiB, flags: { flush: true } }] });
    const stats = new StatsCollector();
    track(
      srv.server.requests$
        .pipe(
          logRequests({ file: logfile }),
          collectStats(stats),
          injectErrors({ read: { rate: 1, error: 'ENOSPC' }, offset: 65536, length: 4096 }),
          delayRequests({ read: 800 }),
          serveRequests((req) => {
            if (req.type === 'read') return req.reply(bytes.subarray(req.offset, req.offset + req.length));
            if (req.type === 'write') {
              req.data!.copy(bytes, req.offset);
              return req.reply();
            }
            return req.reply();
          }),
        )
        .subscribe(),
    );
    const out = await py<{ order: string[]; injected: string | null; data: string }>(srv.uri(), `
      h = connect()
      order = []
      def done(tag):
          def cb(error):
              order.append(tag)
              return 1
          return cb
      h.aio_pread(nbd.Buffer(4096), 0, done('read'))
      h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b'z' * 4096)), 8192, done('write'))
      while h.aio_in_flight() > 0:
          h.poll(-1)
      injected = err(h.pread, 512, 65536 + 1024)
      h.flush()
      out = {'order': order, 'injected': injected, 'data': h.pread(4, 8192).hex()}
      h.shutdown()
    `);
    expect(out).toEqual({ order: ['write', 'read'], injected: 'ENOSPC', data: '7a7a7a7a' });
    const snap = stats.snapshot();
    expect(snap.ops.read).toMatchObject({ ops: 3, bytes: 4096 + 512 + 4, errors: 1 });
    expect(snap.ops.write).toMatchObject({ ops: 1, bytes: 4096, errors: 0 });
    expect(snap.ops.flush).toMatchObject({ ops: 1, errors: 0 });
    const lines = fs.readFileSync(logfile, 'utf8').trimEnd().split('\n');
    // Each request: a call line with its cookie, and a reply line with the same id.
    expect(lines).toHaveLength(10);
    const calls = lines.filter((l) => !l.includes(' ...'));
    for (const l of calls) expect(l).toMatch(/connection=\d+ (Read|Write|Flush) id=\d+ cookie=\d+/);
    expect(lines.some((l) => /\.\.\.Read id=\d+ return=-1 error=ENOSPC elapsed=/.test(l))).toBe(true);
    expect(lines.filter((l) => / return=0 /.test(l))).toHaveLength(4);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
