/**
 * serveRequests: the request stream served by a handler of your own, on a
 * real socket with libnbd (Python) as the client. Replies are right,
 * concurrency is bounded, handler errors become errno replies without
 * ending the stream, and requests finish in whatever order their handlers
 * do.
 */
import { describe, expect, it } from 'vitest';
import { NbdRequestError, serveRequests, type NbdRequest } from '../../src/index.js';
import { nbdPython, recordingLogger, serverPerTest } from './harness.js';

const BLOCK = 4096;
const N = 32;

/** Python: N concurrent writes of distinct patterns, then N concurrent reads; prints JSON. */
const WRITE_THEN_READ = String.raw`
import sys, json, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = int(sys.argv[2]); size = int(sys.argv[3])
pattern = lambda i: bytes([(i * 7 + j) % 251 for j in range(size)])
order, errors = [], []
def done(tag):
    def cb(error):
        order.append(tag)
        if error.value != 0:
            errors.append(tag)
        return 1
    return cb
for i in range(n):
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(pattern(i))), i * size, done('w%d' % i))
while h.aio_in_flight() > 0:
    h.poll(-1)
bufs = [nbd.Buffer(size) for i in range(n)]
for i in range(n):
    h.aio_pread(bufs[i], i * size, done('r%d' % i))
while h.aio_in_flight() > 0:
    h.poll(-1)
reads_ok = [bufs[i].to_bytearray() == pattern(i) for i in range(n)]
h.shutdown()
print(json.dumps({'order': order, 'errors': errors, 'reads_ok': reads_ok}))
`;

/** Python: one read at each offset given; prints the errno of each (0 = success). */
const READ_EACH = String.raw`
import sys, json, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
out = []
for off in [int(x) for x in sys.argv[2].split(',')]:
    try:
        h.pread(512, off)
        out.append(0)
    except nbd.Error as e:
        out.append(e.errnum)
h.shutdown()
print(json.dumps(out))
`;

const pattern = (i: number) => Buffer.from(Array.from({ length: BLOCK }, (_, j) => (i * 7 + j) % 251));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('serveRequests (the request stream with a handler of your own)', () => {
  const { serve, track } = serverPerTest();

  it('answers reads and writes correctly with at most `concurrency` handlers running, finishing out of arrival order', async () => {
    const bytes = Buffer.alloc(1 << 20);
    const srv = await serve({ exports: [{ name: 'mem', size: bytes.length, flags: { flush: true } }] });
    let arrived = 0;
    let running = 0;
    let peak = 0;
    const arrival = new Map<NbdRequest, number>();
    const emitted: number[] = [];
    track(
      srv.server.requests$
        .pipe(
          serveRequests(
            async (req) => {
              const k = arrived++;
              arrival.set(req, k);
              running++;
              peak = Math.max(peak, running);
              // Every third request takes longest, so later ones finish before it.
              await sleep(k % 3 === 0 ? 20 : k % 3 === 1 ? 5 : 0);
              running--;
              if (req.type === 'read') return req.reply(bytes.subarray(req.offset, req.offset + req.length));
              if (req.type === 'write') {
                req.data!.copy(bytes, req.offset);
                return req.reply();
              }
              return req.fail('EINVAL');
            },
            { concurrency: 4 },
          ),
        )
        .subscribe((req) => emitted.push(arrival.get(req)!)),
    );
    const out = JSON.parse(await nbdPython(WRITE_THEN_READ, [srv.uri(), String(N), String(BLOCK)])) as { order: string[]; errors: string[]; reads_ok: boolean[] };
    expect(out.errors).toEqual([]);
    expect(out.order).toHaveLength(2 * N);
    expect(out.reads_ok).toEqual(Array.from({ length: N }, () => true));
    for (let i = 0; i < N; i++) expect(bytes.subarray(i * BLOCK, (i + 1) * BLOCK).equals(pattern(i))).toBe(true);
    // Bounded, and the bound was reached (the client had 32 requests in flight).
    expect(peak).toBe(4);
    // Every request was emitted once, in the order the handlers finished, which is not arrival order.
    expect([...emitted].sort((a, b) => a - b)).toEqual(Array.from({ length: 2 * N }, (_, i) => i));
    expect(emitted).not.toEqual(Array.from({ length: 2 * N }, (_, i) => i));
  });

  it('a handler that throws or rejects gives the client EIO (or the errno it carries), and the stream goes on serving', async () => {
    const srv = await serve({ exports: [{ name: 'mem', size: 1 << 20 }] });
    const lines: string[] = [];
    const zero = Buffer.alloc(512);
    track(
      srv.server.requests$
        .pipe(
          serveRequests(
            async (req) => {
              switch (req.offset) {
                case 0:
                  throw new Error('sync-looking throw in an async handler');
                case 4096:
                  await sleep(5);
                  throw new Error('rejected later');
                case 8192:
                  throw new NbdRequestError('ENOSPC');
                case 12288:
                  req.reply(zero);
                  throw new Error('thrown after answering');
                default:
                  return req.reply(zero);
              }
            },
            { logger: recordingLogger(lines) },
          ),
        )
        .subscribe(),
    );
    // A plain (non-async) handler that throws is served the same way.
    const out = JSON.parse(await nbdPython(READ_EACH, [srv.uri(), '0,4096,8192,12288,16384'])) as number[];
    // EIO = 5, ENOSPC = 28; the request answered before its handler threw keeps its success.
    expect(out).toEqual([5, 5, 28, 0, 0]);
    const errors = lines.filter((l) => l.startsWith('error: '));
    expect(errors).toHaveLength(3);
    expect(errors[0]).toContain('sync-looking throw in an async handler');
    expect(errors[1]).toContain('rejected later');
    expect(errors[2]).toContain('thrown after answering');
    expect(lines.some((l) => l.startsWith('debug: ') && l.includes('ENOSPC'))).toBe(true);
  });

  it('a synchronous handler that throws gives EIO and the next request is served', async () => {
    const srv = await serve({ exports: [{ name: 'mem', size: 1 << 20 }] });
    const lines: string[] = [];
    track(
      srv.server.requests$
        .pipe(
          serveRequests(
            (req) => {
              if (req.offset === 0) throw new TypeError('handler bug');
              req.reply(Buffer.alloc(req.length, 1));
            },
            { logger: recordingLogger(lines) },
          ),
        )
        .subscribe(),
    );
    expect(JSON.parse(await nbdPython(READ_EACH, [srv.uri(), '0,512,0,1024']))).toEqual([5, 0, 5, 0]);
    expect(lines.filter((l) => l.startsWith('error: ') && l.includes('handler bug'))).toHaveLength(2);
  });
});
