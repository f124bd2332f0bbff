/**
 * The in-flight cap never stalls a pipelining client. A client sends a
 * whole burst of requests in one go (more than the cap) and then only
 * reads: every request must be answered without the client sending
 * another byte. Matrix: caps 1, 16, 64, 128, 1024; request sizes 8 B,
 * 1 KiB, 64 KiB; READ, WRITE + FLUSH and mixed bursts; UNIX, TCP and TLS;
 * memory (synchronous), file (asynchronous) and `requests$` servers.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, fileBackend, memoryBackend, type ExportConfig, type NbdServer } from '../../src/index.js';
import { nbdPython, recordingLogger, tmpDir } from './harness.js';
import { makePki } from './tls-support.js';
import { RawClient, requestBytes, type Request, type Target } from './raw-client.js';

const READ = 0;
const WRITE = 1;
const FLUSH = 3;
const MiB = 1024 * 1024;
const EXPORT_SIZE = 65 * MiB;

const CAPS = [1, 16, 64, 128, 1024];
const SIZES = [8, 1024, 64 * 1024];
const MIXES = ['read', 'write+flush', 'mixed'] as const;
type Mix = (typeof MIXES)[number];
const SERVERS = ['memory', 'file', 'requests$'] as const;
const TRANSPORTS = ['unix', 'tcp', 'tls'] as const;

/** More requests than the cap (at least twice, bounded to 64 MiB of payload), never fewer than 129. */
function burstLength(cap: number, size: number): number {
  return Math.max(129, Math.min(2 * cap + 1, Math.max(cap + 1, Math.floor((64 * MiB) / size))));
}

/** A burst: request i covers its own region [i·size, (i+1)·size), so answers never depend on order. */
function burst(mix: Mix, n: number, size: number, seed: number): Request[] {
  const out: Request[] = [];
  let cookie = BigInt(seed) << 32n;
  for (let i = 0; i < n; i++) {
    const write = mix === 'write+flush' || (mix === 'mixed' && i % 2 === 1);
    const offset = i * size;
    if (write) {
      const payload = Buffer.alloc(size, (seed + i) & 0xff);
      payload.writeUInt32LE(i, 0);
      out.push({ type: WRITE, offset, length: size, cookie: cookie++, payload });
    } else {
      out.push({ type: READ, offset, length: size, cookie: cookie++ });
    }
    if (mix !== 'read' && i % 8 === 7) out.push({ type: FLUSH, offset: 0, length: 0, cookie: cookie++ });
  }
  return out;
}

interface Fixture {
  server: NbdServer;
  target: Target;
  /** What the export holds after every burst so far (updated once a burst is fully answered). */
  model: Buffer;
  logs: string[];
  close(): Promise<void>;
}

async function startFixture(kind: (typeof SERVERS)[number], transport: (typeof TRANSPORTS)[number], cap: number, dir: string, pki: string): Promise<Fixture> {
  const logs: string[] = [];
  const model = Buffer.alloc(EXPORT_SIZE);
  let exp: ExportConfig;
  let bytes: Buffer | undefined;
  if (kind === 'memory') exp = { name: '', backend: memoryBackend({ size: EXPORT_SIZE }) };
  else if (kind === 'file') {
    const file = path.join(dir, `disk-${transport}-${cap}.img`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, EXPORT_SIZE);
    exp = { name: '', backend: await fileBackend({ path: file }) };
  } else {
    bytes = Buffer.alloc(EXPORT_SIZE);
    exp = { name: '', size: EXPORT_SIZE, flags: { flush: true } };
  }
  const server = createServer({
    exports: [exp],
    logger: recordingLogger(logs),
    limits: { maxInFlight: cap },
    tls: transport === 'tls' ? { mode: 'require', cert: path.join(pki, 'server-cert.pem'), key: path.join(pki, 'server-key.pem') } : undefined,
  });
  if (bytes) {
    const b = bytes;
    // Answered synchronously, inside the request's delivery: the path that stalled.
    server.requests$.subscribe((req) => {
      if (req.type === 'read') req.reply(b.subarray(req.offset, req.offset + req.length));
      else if (req.type === 'write') {
        req.data!.copy(b, req.offset);
        req.reply();
      } else req.reply();
    });
  }
  let target: Target;
  if (transport === 'tcp') {
    const [l] = await server.listen({ port: 0, host: '127.0.0.1' });
    target = { port: l!.address.port!, host: '127.0.0.1' };
  } else {
    const sock = path.join(dir, `s-${kind.replace('$', '')}-${transport}-${cap}.sock`);
    await server.listen({ path: sock });
    target = transport === 'tls' ? { path: sock, tls: { ca: fs.readFileSync(path.join(pki, 'ca-cert.pem'), 'utf8') } } : { path: sock };
  }
  return { server, target, model, logs, close: () => server.close({ timeout: 2000 }) };
}

/** A hang detector, not a timing assertion: no reply at all for this long means the server stalled. */
const STALL_MS = 10_000;

async function stallGuard<T>(p: Promise<T>, what: () => string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(what())), STALL_MS)))]);
  } finally {
    clearTimeout(t);
  }
}

/** Send the whole burst in one write, then read every reply; check each cookie once and READ data. */
async function runBurst(f: Fixture, requests: Request[]): Promise<void> {
  const c = await RawClient.open(f.target);
  try {
    const byCookie = new Map(requests.map((r) => [r.cookie, r]));
    c.send(Buffer.concat(requests.map(requestBytes)));
    const seen = new Set<bigint>();
    for (let i = 0; i < requests.length; i++) {
      const r = await stallGuard(
        c.readSimpleReply((cookie) => {
          const q = byCookie.get(cookie);
          return q && q.type === READ ? q.length : 0;
        }),
        () => `stalled: ${i} of ${requests.length} replies received, none for ${STALL_MS / 1000} s`,
      );
      const q = byCookie.get(r.cookie);
      expect(q, `reply for unknown cookie ${r.cookie}`).toBeDefined();
      expect(seen.has(r.cookie), `cookie ${r.cookie} answered twice`).toBe(false);
      seen.add(r.cookie);
      expect(r.error, `request ${q!.type}@${q!.offset} failed`).toBe(0);
      if (q!.type === READ) expect(r.data!.equals(f.model.subarray(q!.offset, q!.offset + q!.length))).toBe(true);
    }
    expect(seen.size).toBe(requests.length);
    for (const q of requests) if (q.type === WRITE) q.payload!.copy(f.model, q.offset);
  } finally {
    c.destroy();
  }
}

describe('a burst past the in-flight cap is answered in full', () => {
  const dir = tmpDir();
  let pki: string;
  beforeAll(() => {
    pki = makePki(path.join(dir, 'pki'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const transport of TRANSPORTS) {
    for (const kind of SERVERS) {
      describe(`${kind} over ${transport}`, () => {
        for (const cap of CAPS) {
          it(`cap ${cap}: ${MIXES.join(', ')} × ${SIZES.join(', ')} B`, async () => {
            const f = await startFixture(kind, transport, cap, dir, pki);
            try {
              let seed = 1;
              for (const size of SIZES) {
                const n = burstLength(cap, size);
                for (const mix of MIXES) await runBurst(f, burst(mix, n, size, seed++));
              }
              expect(f.logs.filter((l) => l.startsWith('error:') || l.startsWith('warn:'))).toEqual([]);
            } finally {
              await f.close();
            }
          });
        }
      });
    }
  }
});

describe('real clients pipelining past the cap', () => {
  /**
   * python3-libnbd: issue `count` aio reads of `size` bytes at once (libnbd
   * queues them all), then run the event loop until every one completed.
   * A hang detector stops it when nothing completes for 10 s.
   */
  const AIO = String.raw`
import sys, time, nbd
uri, count, size, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
exp = h.get_size()
done = 0
def cb(*args):
    global done
    done += 1
    return 1
issued = 0
last, last_done = time.monotonic(), 0
span = exp // size
while done < count:
    while issued < count and issued - done < inflight:
        h.aio_pread(nbd.Buffer(size), (issued % span) * size, completion=cb)
        issued += 1
    h.poll(1)
    if done != last_done:
        last, last_done = time.monotonic(), done
    elif time.monotonic() - last > 10:
        print("STALLED", done, "of", count)
        sys.exit(1)
print("OK", done)
`;

  it('libnbd: 1000 aio reads issued at once all complete (cap 64)', async () => {
    const logs: string[] = [];
    const server = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 64 * MiB }) }], logger: recordingLogger(logs), limits: { maxInFlight: 64 } });
    const sock = path.join(tmpDir(), 'aio.sock');
    await server.listen({ path: sock });
    try {
      const out = await nbdPython(AIO, [`nbd+unix:///?socket=${sock}`, '1000', '1024', '1000']);
      expect(out.trim()).toBe('OK 1000');
    } finally {
      await server.close({ timeout: 2000 });
    }
  });

  it('a read-throughput tester pipelining 1 KiB READs across a 64 MiB export over TCP finishes', async () => {
    const server = createServer({ exports: [{ name: '', backend: memoryBackend({ size: 64 * MiB }) }], logger: recordingLogger([]) });
    const [l] = await server.listen({ port: 0, host: '127.0.0.1' });
    try {
      // 65,536 reads cover the export once, 256 at a time, each reply read only when it is ready.
      const out = await nbdPython(AIO, [`nbd://127.0.0.1:${l!.address.port}/`, String((64 * MiB) / 1024), '1024', '256'], 120_000);
      expect(out.trim()).toBe(`OK ${(64 * MiB) / 1024}`);
    } finally {
      await server.close({ timeout: 2000 });
    }
  });
});
