/**
 * maxReplyBytes bounds what one call keeps in real memory, within the factor docs/client.md states
 * (1.5 ×). Each kept chunk is counted as its data plus REPLY_OVERHEAD; that overhead must cover
 * what a kept chunk really costs besides its data (its record, header, views, content). With 256
 * counted per chunk, a server sending 12-byte OFFSET_HOLE chunks without DONE drove the client to
 * 550 MiB before a 128 MiB maxReplyBytes tripped (each chunk cost about 1 KiB).
 *
 * The hostile server is a real UNIX socket (fake-server.ts) writing crafted chunks; memory is
 * measured after forced collections (heap plus array buffers), so the test asserts bytes and counts,
 * not times.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { REPLY_TYPE } from '../../../src/client/index.js';
import { REPLY_OVERHEAD } from '../../../src/client/transmission.js';
import { at, chunk, goWith, scripted, serveUntilGo } from './fake-server.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** A 12-byte OFFSET_HOLE payload (offset, length): the smallest chunk that carries anything. */
const HOLE_PAYLOAD = 12;

/** Heap and buffers in use after full collections. */
function used(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** A server that answers the first request with `count` (or endless, until the client gives up) tiny hole chunks and no DONE. */
async function tinyChunks(count: number, maxReplyBytes: number) {
  let sent = 0;
  const { client } = await scripted(
    async (s) => {
      await serveUntilGo(s);
      const r = await s.request();
      const len = Buffer.alloc(4);
      len.writeUInt32BE(512);
      const one = chunk(r.cookie, REPLY_TYPE.NBD_REPLY_TYPE_OFFSET_HOLE, at(0, len));
      while (sent < count && !s.reader.ended) {
        const n = Math.min(1000, count - sent);
        s.write(Buffer.concat(Array.from({ length: n }, () => one)));
        sent += n;
        await new Promise((r) => setImmediate(r));
      }
      if (s.reader.ended) return;
      // A second request, answered after all those chunks: once its answer is in, they were all read.
      const second = await s.request();
      s.write(chunk(second.cookie, REPLY_TYPE.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), { done: true }));
    },
    { maxReplyBytes, timeoutMs: 120_000 },
  );
  await goWith(client, 'structured');
  return { client, sent: () => sent };
}

describe('maxReplyBytes and what a kept chunk really costs', () => {
  it('a kept 12-byte chunk costs less than what it is counted as (its data + REPLY_OVERHEAD)', async () => {
    const N = 20_000;
    const { client, sent } = await tinyChunks(N, 2 ** 40);
    const before = used();
    const call = client.read(0, 512).catch((e: unknown) => e);
    // Replies are read in order: once the second request is answered, every chunk of the first is kept.
    await client.flush();
    expect(sent()).toBe(N);
    const perChunk = (used() - before) / N;
    expect(perChunk).toBeGreaterThan(HOLE_PAYLOAD);
    // Before: counted as 12 + 256 bytes, cost about 1 KiB.
    expect(perChunk).toBeLessThanOrEqual(HOLE_PAYLOAD + REPLY_OVERHEAD);
    client.destroy();
    await call;
  }, 120_000);

  it('a server sending endless tiny chunks: the call fails with `limit` before what it keeps passes 1.5 × maxReplyBytes', async () => {
    const max = 4 * 1024 * 1024;
    const { client } = await tinyChunks(Infinity, max);
    const before = used();
    const err = await client.read(0, 512).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'limit' });
    const m = /: (\d+) chunks \((\d+) bytes counted\) and no DONE: more than maxReplyBytes \(4194304\)/.exec(String((err as Error).message));
    expect(m).not.toBeNull();
    const chunks = Number(m![1]);
    // The chunks kept at the limit, at what each really costs (about 1 KiB measured): within the bound.
    expect(chunks).toBe(Math.floor(max / (HOLE_PAYLOAD + REPLY_OVERHEAD)) + 1);
    expect(chunks * 1024).toBeLessThan(1.5 * max); // before: 15 650 chunks, about 16 MB
    expect(used() - before).toBeLessThan(1.5 * max);
  }, 120_000);
});
