/**
 * serveRequests, the operator alone (no sockets): completion, source
 * errors, a long queue of synchronous handlers, and what happens to
 * waiting requests on unsubscribe. The socket-level behaviour (replies,
 * concurrency, errors as errno replies) is in
 * test/integration/serve-requests.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { Subject, lastValueFrom, from, toArray } from 'rxjs';
import { NbdError, NbdRequest, serveRequests, type ReplySink } from '../../../src/index.js';
import { CMD, MAGIC } from '../../../src/protocol/constants.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';

/**
 * Keeps the errno of every answer it is given (0 for success). It takes
 * answers both as encoded frames (reply) and as calls per outcome (ok /
 * read / error), so it does not depend on which of the two a session uses.
 */
class Sink {
  readonly replyMode = 'simple' as const;
  readonly errors: number[] = [];
  reply(frame: readonly Buffer[]): void {
    const h = frame[0]!;
    if (h.readUInt32BE(0) !== MAGIC.NBD_SIMPLE_REPLY_MAGIC) throw new Error('not a simple reply');
    this.errors.push(h.readUInt32BE(4));
  }
  ok(): void {
    this.errors.push(0);
  }
  read(): void {
    this.errors.push(0);
  }
  error(_cookie: bigint, _command: number, errno: number): void {
    this.errors.push(errno);
  }
}

const exp = { name: 'e', size: 1 << 20 };
const conn = { id: 1, peer: 'test', tls: false };
const flushReq = (cookie: number, sink: Sink) => {
  const f: RequestFrame = { kind: 'request', extended: false, flags: 0, type: CMD.NBD_CMD_FLUSH, cookie: BigInt(cookie), offset: 0, length: 0, huge: false, payloadDiscarded: false };
  return new NbdRequest(f, sink as unknown as ReplySink, exp, conn, []);
};

describe('serveRequests operator', () => {
  it('emits each request once its handler has finished, in that order, and completes after the last one', async () => {
    const sink = new Sink();
    const reqs = Array.from({ length: 5 }, (_, i) => flushReq(i, sink));
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    const emitted: number[] = [];
    let completed = false;
    const done = new Promise<void>((resolve, reject) =>
      from(reqs)
        .pipe(
          serveRequests(
            async (req) => {
              // Request 0 finishes only once the four after it have been emitted.
              if (req.cookie === 0n) await slow;
              req.reply();
            },
            { concurrency: 2 },
          ),
        )
        .subscribe({
          next: (req) => {
            emitted.push(Number(req.cookie));
            if (emitted.length === 4) release();
          },
          error: reject,
          complete: () => {
            completed = true;
            resolve();
          },
        }),
    );
    await done;
    expect(completed).toBe(true);
    expect(emitted).toEqual([1, 2, 3, 4, 0]);
    expect(sink.errors).toEqual([0, 0, 0, 0, 0]);
  });

  it('serves a long queue of synchronous handlers without recursing once per waiting request', async () => {
    const sink = new Sink();
    const source = new Subject<NbdRequest>();
    let release!: () => void;
    const first = new Promise<void>((r) => (release = r));
    let served = 0;
    const out = lastValueFrom(
      source.pipe(
        serveRequests(
          (req) => {
            served++;
            req.reply();
            // The first handler holds the only slot, so everything after it waits in the queue.
            if (req.cookie === 0n) return first;
          },
          { concurrency: 1 },
        ),
        toArray(),
      ),
    );
    const n = 200_000;
    for (let i = 0; i < n; i++) source.next(flushReq(i, sink));
    source.complete();
    expect(served).toBe(1);
    release();
    expect(await out).toHaveLength(n);
    expect(served).toBe(n);
  });

  it('passes a source error on', async () => {
    const source = new Subject<NbdRequest>();
    const out = lastValueFrom(source.pipe(serveRequests((req) => req.reply())));
    source.error(new Error('source broke'));
    await expect(out).rejects.toThrow('source broke');
  });

  it('fails the requests still waiting when unsubscribed, and leaves running ones to their handler', async () => {
    const sink = new Sink();
    const source = new Subject<NbdRequest>();
    const held: NbdRequest[] = [];
    const sub = source.pipe(serveRequests((req) => new Promise<void>(() => void held.push(req)), { concurrency: 2 })).subscribe();
    for (let i = 0; i < 5; i++) source.next(flushReq(i, sink));
    expect(held).toHaveLength(2);
    sub.unsubscribe();
    // Three waited: each got EIO (5); the two running are not answered by the operator.
    expect(sink.errors).toEqual([5, 5, 5]);
    expect(held.every((r) => !r.isAnswered)).toBe(true);
  });

  it('refuses a concurrency below 1', () => {
    expect(() => serveRequests(() => {}, { concurrency: 0 })).toThrow(NbdError);
  });
});
