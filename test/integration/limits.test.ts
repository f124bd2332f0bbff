/**
 * Per-connection limits at the transport: requests and WRITE payload bytes
 * with the application at once. Past either cap the server stops reading
 * the socket (it never buffers more), and resumes as requests complete;
 * every request still gets its answer and the data lands.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/index.js';
import { nbdPython, startServer, type Running } from './harness.js';

const MiB = 1024 * 1024;

/** A backend whose writes take a while, recording how many run at once. */
function slowBackend(size: number) {
  const bytes = Buffer.alloc(size);
  const stats = { running: 0, peak: 0, peakBytes: 0, runningBytes: 0, writes: 0 };
  const backend: Backend = {
    size,
    read: (o, l) => bytes.subarray(o, o + l),
    write: async (o, data) => {
      stats.running++;
      stats.runningBytes += data.length;
      stats.peak = Math.max(stats.peak, stats.running);
      stats.peakBytes = Math.max(stats.peakBytes, stats.runningBytes);
      await new Promise((r) => setTimeout(r, 40));
      data.copy(bytes, o);
      stats.writes++;
      stats.running--;
      stats.runningBytes -= data.length;
    },
  };
  return { backend, stats };
}

const SCRIPT = String.raw`
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = int(sys.argv[2]); size = int(sys.argv[3])
bufs = [bytes([i + 1]) * size for i in range(n)]
cookies = [h.aio_pwrite(bufs[i], i * size) for i in range(n)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(n):
    assert h.pread(size, i * size) == bufs[i], i
print('ok')
`;

describe('in-flight limits', () => {
  let srv: Running | undefined;
  afterEach(async () => {
    await srv?.close();
    srv = undefined;
  });

  it('maxInFlightBytes bounds the WRITE payload bytes with the backend', async () => {
    const { backend, stats } = slowBackend(32 * MiB);
    srv = await startServer({ exports: [{ name: 'w', backend }], limits: { maxInFlightBytes: 2 * MiB } });
    expect((await nbdPython(SCRIPT, [srv.uri(), '12', String(MiB)])).trim()).toBe('ok');
    expect(stats.writes).toBe(12);
    expect(stats.peakBytes).toBeLessThanOrEqual(2 * MiB);
    expect(stats.peak).toBe(2);
  });

  it('maxInFlight bounds the number of requests with the backend', async () => {
    const { backend, stats } = slowBackend(8 * MiB);
    srv = await startServer({ exports: [{ name: 'w', backend }], limits: { maxInFlight: 3 } });
    expect((await nbdPython(SCRIPT, [srv.uri(), '40', '4096'])).trim()).toBe('ok');
    expect(stats.writes).toBe(40);
    expect(stats.peak).toBe(3);
  });
});
