/**
 * The store going away under a running server (its own radosgw, since this
 * file stops it): radosgw paused (SIGSTOP) → each request fails with EIO
 * after the request timeout, never a hang; radosgw killed → EIO at once. One
 * log line per failed request, and the server keeps serving.
 */
import { describe, expect, it } from 'vitest';
import { s3Backend } from '../../../src/index.js';
import { recordingLogger, serverPerTest } from '../harness.js';
import { py } from '../pylibnbd.js';
import { radosgwPerFile, radosgwPid } from './radosgw.js';

const store = radosgwPerFile();
const servers = serverPerTest();

describe('s3: the store stops answering', () => {
  it('radosgw paused, then killed: the client gets EIO (after the timeout, then at once), one log line each; no crash, no hang', async () => {
    const rgw = store.get();
    const logs: string[] = [];
    const backend = await s3Backend({
      endpoint: rgw.endpoint,
      bucket: rgw.bucket,
      prefix: 'outage/',
      size: 1024 * 1024,
      objectSize: 64 * 1024,
      accessKeyId: rgw.accessKeyId,
      secretAccessKey: rgw.secretAccessKey,
      timeout: 1500,
      logger: recordingLogger(logs),
    });
    const running = await servers.serve({ exports: [{ name: 's3', backend }] });
    await backend.write!(0, Buffer.alloc(70000, 7), { fua: false });
    const pid = radosgwPid(rgw);
    process.kill(pid, 'SIGSTOP');
    let paused: { read: string | null; write: string | null };
    try {
      paused = await py(running.uri(), `
        h = connect()
        out['read'] = err(h.pread, 100, 0)
        out['write'] = err(h.pwrite, b'y' * 10, 65530)
      `);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    expect(paused).toEqual({ read: 'EIO', write: 'EIO' });
    const timedOut = logs.filter((l) => l.startsWith('error:'));
    expect(timedOut).toHaveLength(2);
    expect(timedOut[0]).toMatch(/s3: read 0\+100 failed: GET s3:\/\/nbd-engine\/outage\/0000000000000000: no answer in 1500 ms/);

    // Awake again: served as before.
    const again = await py<{ data: boolean }>(running.uri(), `
      h = connect()
      out['data'] = h.pread(100, 0) == bytes([7]) * 100
    `);
    expect(again.data).toBe(true);

    process.kill(pid, 'SIGKILL');
    const gone = await py<{ read: string | null; extents: string | null; size: number }>(running.uri(), `
      h = connect()
      out['read'] = err(h.pread, 100, 0)
      out['extents'] = err(extents, h, 4096, 0)
      out['size'] = h.get_size()
    `);
    expect(gone).toEqual({ read: 'EIO', extents: 'EIO', size: 1024 * 1024 });
    const refused = logs.filter((l) => l.startsWith('error:')).slice(2);
    expect(refused).toHaveLength(2);
    expect(refused[0]).toMatch(/s3: read 0\+100 failed: GET s3:\/\/nbd-engine\/outage\/0000000000000000: fetch failed \(.*(ECONNREFUSED|ECONNRESET|other side closed)/);
    expect(refused[1]).toMatch(/s3: block status 0\+4096 failed: LIST s3:\/\/nbd-engine\/outage\/: fetch failed/);
  });
});
