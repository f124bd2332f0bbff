/**
 * The live view's memory with pages that do not read (real WebSocket clients on a loopback port,
 * their sockets paused). Each page may fall `maxBufferedBytes` behind; the records themselves are
 * encoded once for all pages, so 8 pages do not hold 8 copies of each message. Before, each page
 * encoded (JSON string, then buffer) every record itself: with 8 pages that were not reading, a
 * connection flood took the server's peak RSS 176 MiB over the same flood without pages, against a
 * documented "8 × 8 MiB of backlog". Memory is measured after forced collections (heap plus array
 * buffers): the test asserts bytes, not times.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startLiveInspector } from '../../../src/inspect/live.js';
import type { TraceRecord, TraceSink } from '../../../src/inspect/trace-format.js';
import { describeRecord } from '../../../src/inspect/transcript.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function used(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const PORT = 47711;
const PAGES = 8;

describe('live view: pages that do not read', () => {
  it('a record is held once for all pages, not once per page: what 8 pages keep per record is its bytes plus a queue entry each', async () => {
    const sinks: TraceSink[] = [];
    const live = await startLiveInspector({ tap: (s) => (sinks.push(s), { unsubscribe: () => {} }) }, { port: PORT, maxBufferedBytes: 2 ** 40 });
    const clients: WebSocket[] = [];
    try {
      for (let i = 0; i < PAGES; i++) {
        const ws = new WebSocket(`ws://127.0.0.1:${PORT}/events`);
        await new Promise((r) => ws.once('open', r));
        (ws as unknown as { _socket: { pause(): void } })._socket.pause();
        clients.push(ws);
      }
      while (sinks.length < PAGES) await new Promise((r) => setImmediate(r));
      const record = (i: number): TraceRecord => ({ type: 'close', t: 1, conn: i, outcome: 'ok', code: 'x', reason: 'r'.repeat(200) });
      const bytes = Buffer.byteLength(JSON.stringify({ record: record(100_000), line: describeRecord(record(100_000)) }));
      const before = used();
      const N = 60_000;
      for (let i = 0; i < N; i++) {
        const r = record(100_000 + i);
        for (const s of sinks) s.write(r);
        if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
      }
      const perRecord = (used() - before) / N;
      // Before: each page its own copy, about 8 × (bytes + 150) = 5.5 KB here.
      expect(perRecord).toBeLessThan(bytes + PAGES * 256); // 256: MESSAGE_OVERHEAD, what a queued message is counted as besides its bytes
    } finally {
      for (const ws of clients) ws.terminate();
      await live.close();
    }
  }, 120_000);
});
