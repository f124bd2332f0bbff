/**
 * The s3 client's request timeout holds when the garbage collector runs while
 * the store is silent. A store that accepts connections and never answers (a
 * radosgw stopped with SIGSTOP, as test/integration/s3/s3-outage.test.ts
 * does) must fail each request after `timeout` ms. An AbortSignal handed to
 * fetch() inside a Request object loses its link once the collector has run
 * (nodejs/undici#4068), and the request then hung for good: seen as that
 * outage test's client killed after 60 s on a loaded host.
 *
 * The silent store here is a real HTTP server on a loopback socket that reads
 * requests and never answers.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Client, S3Error } from '../../../src/backends/s3/client.js';
import { ObjectStore } from '../../../src/backends/s3/objects.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

let server: http.Server;
const sockets = new Set<Socket>();
let endpoint = '';

beforeAll(async () => {
  server = http.createServer(() => {
    // never answers
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

/** How the call settled, or 'hung' if it had not after `limit` ms; the collector runs every 10 ms meanwhile. */
async function settle(call: Promise<unknown>, limit: number): Promise<{ outcome: string; ms: number }> {
  const t0 = performance.now();
  const collect = setInterval(gc, 10);
  try {
    const outcome = await Promise.race([
      call.then(
        () => 'answered',
        (e: unknown) => (e instanceof S3Error ? `S3Error: ${e.message}` : `other: ${String(e)}`),
      ),
      new Promise<string>((resolve) => setTimeout(() => resolve('hung'), limit)),
    ]);
    return { outcome, ms: performance.now() - t0 };
  } finally {
    clearInterval(collect);
  }
}

describe('s3 client: a store that never answers', () => {
  it('each request fails after its timeout even when the garbage collector runs meanwhile, and its connection is closed', async () => {
    const client = new S3Client({ endpoint, bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 2, timeout: 300 });
    const calls = [
      () => client.get('disk/0000000000000000'),
      () => client.put('disk/0000000000000001', Buffer.alloc(4096, 1), { ifNoneMatch: '*' }),
      () => client.head('disk/0000000000000002'),
      () => client.list('disk/', undefined, 'disk/0000000000000009'),
    ];
    for (const call of calls) {
      const r = await settle(call(), 5000);
      expect(r.outcome).toMatch(/^S3Error: (GET|PUT|HEAD|LIST) s3:\/\/b\/.*: no answer in 300 ms$/);
      expect(r.ms).toBeLessThan(3000);
    }
    // The aborts reached the sockets: the timed-out requests' connections do not pile up (undici
    // may keep a connection or two of its pool open; before the fix every one stayed, waiting).
    for (let i = 0; i < 50 && sockets.size > 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(sockets.size).toBeLessThan(calls.length);
  });

  it('more requests than slots: the waiting ones get their turn and their own timeout', async () => {
    const client = new S3Client({ endpoint, bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 1, timeout: 200 });
    const results = await Promise.all([1, 2, 3].map((n) => settle(client.get(`k${n}`), 5000)));
    expect(results.map((r) => r.outcome)).toEqual([1, 2, 3].map((n) => `S3Error: GET s3://b/k${n}: no answer in 200 ms`));
    // One slot: one after the other, about 200 ms each.
    expect(Math.max(...results.map((r) => r.ms))).toBeGreaterThanOrEqual(550);
  });
});

describe('s3 objects: one NBD request over many objects, to a store that never answers', () => {
  // 16 objects, 2 slots, 300 ms: the request's pieces share one deadline (slot waits included) and
  // the ones not yet sent are dropped once one failed, so the request fails after about 300 ms —
  // not 16 / 2 × 300 ms, each wave of pieces waiting for its own timeout.
  for (const op of ['read', 'write', 'zero'] as const) {
    it(`a ${op} fails within about the timeout, not the timeout per wave of objects`, async () => {
      const client = new S3Client({ endpoint, bucket: 'b', accessKeyId: 'k', secretAccessKey: 's', region: 'us-east-1', concurrency: 2, timeout: 300 });
      const objects = new ObjectStore(client, 'disk/', 16 * 4096, 4096, 100);
      const call = op === 'read' ? objects.read(0, 16 * 4096) : op === 'write' ? objects.write(0, Buffer.alloc(16 * 4096, 1)) : objects.zero(0, 16 * 4096, true);
      const r = await settle(call, 10_000);
      expect(r.outcome).toMatch(/^S3Error: (GET|PUT) s3:\/\/b\/disk\/00000000000000\d\d: no answer in 300 ms$/);
      expect(r.ms).toBeLessThan(1200);
    });
  }
});
