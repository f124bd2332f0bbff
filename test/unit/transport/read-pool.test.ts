/**
 * READ buffers the server lends (Backend.readInto, NbdRequest.readBuffer):
 * the pool, the writer that gives them back only once their bytes are out,
 * the request that says which buffer was lent, the backend path and the
 * filter rule that keeps a filter's reads from being bypassed.
 */
import { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../../src/transport/buffer-pool.js';
import { ReplyWriter } from '../../../src/transport/socket.js';
import { handleWithBackend, layer, NbdRequest, type Backend, type ReplySink } from '../../../src/index.js';
import { CMD } from '../../../src/protocol/constants.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import type { ReadSegment } from '../../../src/protocol/replies.js';
import { backendCapabilities } from '../../../src/api/backend.js';

const KiB = 1024;

describe('BufferPool', () => {
  it('lends a buffer of the exact length, takes it back, lends the same one again; keeps at most maxIdleBytes', () => {
    const pool = new BufferPool(200 * KiB);
    const a = pool.take(64 * KiB);
    const b = pool.take(64 * KiB);
    expect(a).not.toBe(b);
    expect(a.length).toBe(64 * KiB);
    // Its own memory, not a slice of Node's shared pool.
    expect(a.buffer.byteLength).toBe(64 * KiB);
    pool.give(a);
    pool.give(b);
    expect(pool.idleSize).toBe(128 * KiB);
    const c = pool.take(64 * KiB);
    expect(c === a || c === b).toBe(true);
    // Another length is never served from this list.
    expect(pool.take(32 * KiB).length).toBe(32 * KiB);
    pool.give(c);
    const big = pool.take(128 * KiB);
    pool.give(big); // 128 + 128 KiB > 200 KiB: dropped
    expect(pool.idleSize).toBe(128 * KiB);
    expect(pool.counters).toEqual({ allocated: 4, reused: 1, returned: 4 });
  });

  it('a pool of 0 bytes keeps nothing', () => {
    const pool = new BufferPool(0);
    const a = pool.take(4096);
    pool.give(a);
    expect(pool.idleSize).toBe(0);
    expect(pool.take(4096)).not.toBe(a);
  });
});

/** A stream whose writes complete only when `release(err?)` is called. */
function heldStream() {
  const held: Array<(err?: Error | null) => void> = [];
  const written: Buffer[] = [];
  const s = new Duplex({
    read() {},
    highWaterMark: 16 * KiB,
    write(chunk: Buffer, _enc, cb) {
      written.push(Buffer.from(chunk));
      held.push(cb);
    },
    writev(chunks, cb) {
      for (const c of chunks) written.push(Buffer.from(c.chunk as Buffer));
      held.push(cb);
    },
  });
  return { s, written, release: (err?: Error) => held.splice(0).forEach((cb) => cb(err)) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('ReplyWriter and lent READ buffers', () => {
  it('a big lent buffer goes back only after the socket has written it, with its bytes intact', async () => {
    const { s, written, release } = heldStream();
    const pool = new BufferPool(1 << 20);
    const w = new ReplyWriter(s, () => {}, undefined, true);
    const data = pool.take(64 * KiB).fill(0x5a);
    w.writeRead('structured', 9n, 0, data, pool);
    expect(pool.idleSize).toBe(0);
    await tick();
    expect(pool.idleSize).toBe(0); // handed to the stream, not yet written
    expect(written.some((b) => b.length === 64 * KiB && b.every((x) => x === 0x5a))).toBe(true);
    release();
    await tick();
    expect(pool.idleSize).toBe(64 * KiB);
    expect(pool.take(64 * KiB)).toBe(data);
  });

  it('a small lent buffer is copied into the staging chunk and goes back at once', () => {
    const { s } = heldStream();
    const pool = new BufferPool(1 << 20);
    const w = new ReplyWriter(s, () => {});
    const data = pool.take(4 * KiB);
    w.writeRead('simple', 1n, 0, data, pool);
    expect(pool.idleSize).toBe(4 * KiB);
  });

  it('a stream that is not a socket (its callbacks may mean "queued"): big lent buffers never go back, small ones do', async () => {
    const { s, release } = heldStream();
    const pool = new BufferPool(1 << 20);
    const w = new ReplyWriter(s, () => {});
    w.writeRead('simple', 1n, 0, pool.take(64 * KiB), pool);
    w.writeRead('simple', 2n, 0, pool.take(4 * KiB), pool);
    await tick();
    release();
    await tick();
    expect(pool.idleSize).toBe(4 * KiB);
    expect(pool.counters.returned).toBe(1);
  });

  it('never goes back when the write fails or the connection is dropped first, nor when not lent', async () => {
    const failing = heldStream();
    const pool = new BufferPool(1 << 20);
    const w = new ReplyWriter(failing.s, () => {}, undefined, true);
    failing.s.on('error', () => {});
    w.writeRead('simple', 1n, 0, pool.take(64 * KiB), pool);
    await tick();
    failing.release(new Error('EPIPE'));
    await tick();
    expect(pool.idleSize).toBe(0);

    const dropped = heldStream();
    const w2 = new ReplyWriter(dropped.s, () => {}, undefined, true);
    w2.writeRead('simple', 2n, 0, pool.take(64 * KiB), pool);
    w2.destroy(); // queued, never handed to the socket
    await tick();
    expect(pool.idleSize).toBe(0);

    const plain = heldStream();
    const w3 = new ReplyWriter(plain.s, () => {}, undefined, true);
    w3.writeRead('simple', 3n, 0, Buffer.alloc(64 * KiB));
    await tick();
    plain.release();
    await tick();
    expect(pool.counters.returned).toBe(0);
  });
});

function frame(type: number, length: number): RequestFrame {
  return { kind: 'request', extended: false, flags: 0, type, cookie: 5n, offset: 4096, length, huge: false, payloadDiscarded: false };
}

class LendingSink implements ReplySink {
  reads: Array<{ data: Buffer | readonly ReadSegment[]; lent: boolean | undefined }> = [];
  errors: number[] = [];
  readonly pool = new BufferPool(1 << 20);
  ok(): void {}
  read(_c: bigint, _o: number, data: Buffer | readonly ReadSegment[], _df: boolean, _r: number, lent?: boolean): void {
    this.reads.push({ data, lent });
  }
  blockStatus(): void {}
  error(_c: bigint, _cmd: number, errno: number): void {
    this.errors.push(errno);
  }
  lend(length: number): Buffer {
    return this.pool.take(length);
  }
}

const exp = { name: 'e', size: 1 << 20 };
const conn = { id: 1, peer: 'test', tls: false };

describe('NbdRequest.readBuffer', () => {
  it('READ: one lent buffer of the request length, the same on every call; answering with it says so', () => {
    const sink = new LendingSink();
    const req = new NbdRequest(frame(CMD.NBD_CMD_READ, 64 * KiB), sink, exp, conn, []);
    const b = req.readBuffer()!;
    expect(b.length).toBe(64 * KiB);
    expect(req.readBuffer()).toBe(b);
    req.reply(b.fill(1));
    expect(sink.reads).toEqual([{ data: b, lent: true }]);
    expect(req.readBuffer()).toBeUndefined(); // answered
  });

  it('answered with another buffer (or a view of the lent one): not lent; no buffer for other commands or 0 bytes', () => {
    const sink = new LendingSink();
    const req = new NbdRequest(frame(CMD.NBD_CMD_READ, 8), sink, exp, conn, []);
    const b = req.readBuffer()!;
    req.reply(Buffer.from(b));
    expect(sink.reads[0]!.lent).toBe(false);
    expect(new NbdRequest(frame(CMD.NBD_CMD_FLUSH, 0), sink, exp, conn, []).readBuffer()).toBeUndefined();
    expect(new NbdRequest(frame(CMD.NBD_CMD_READ, 0), sink, exp, conn, []).readBuffer()).toBeUndefined();
  });

  it('without a lending sink the buffer is allocated', () => {
    const reads: Array<boolean | undefined> = [];
    const sink: ReplySink = { ok() {}, read: (_c, _o, _d, _df, _r, lent) => void reads.push(lent), blockStatus() {}, error() {} };
    const req = new NbdRequest(frame(CMD.NBD_CMD_READ, 16), sink, exp, conn, []);
    const b = req.readBuffer()!;
    expect(b.length).toBe(16);
    req.reply(b);
    expect(reads).toEqual([true]);
  });
});

describe('the backend path with readInto', () => {
  it('a backend with readInto fills the lent buffer; the reply is that buffer, marked lent; read is not called', async () => {
    const sink = new LendingSink();
    const calls: string[] = [];
    const backend: Backend = {
      read: () => (calls.push('read'), Buffer.alloc(512)),
      readInto: (offset, target) => {
        calls.push(`readInto ${offset} ${target.length}`);
        target.fill(7);
      },
    };
    handleWithBackend(new NbdRequest(frame(CMD.NBD_CMD_READ, 512), sink, exp, conn, []), backend, backendCapabilities(backend));
    const asyncBackend: Backend = { read: () => Buffer.alloc(512), readInto: async (_o, t) => void t.fill(8) };
    await handleWithBackend(new NbdRequest(frame(CMD.NBD_CMD_READ, 512), sink, exp, conn, []), asyncBackend, backendCapabilities(asyncBackend));
    expect(calls).toEqual(['readInto 4096 512']);
    expect(sink.reads.map((r) => [(r.data as Buffer)[0], (r.data as Buffer).length, r.lent])).toEqual([
      [7, 512, true],
      [8, 512, true],
    ]);
  });

  it('a failing readInto (thrown or rejected) is an error reply; the buffer is not taken back', async () => {
    const sink = new LendingSink();
    const eio = Object.assign(new Error('disk'), { code: 'EIO' });
    const b1: Backend = { read: () => Buffer.alloc(1), readInto: () => { throw eio; } };
    const b2: Backend = { read: () => Buffer.alloc(1), readInto: () => Promise.reject(eio) };
    handleWithBackend(new NbdRequest(frame(CMD.NBD_CMD_READ, 512), sink, exp, conn, []), b1, backendCapabilities(b1));
    await handleWithBackend(new NbdRequest(frame(CMD.NBD_CMD_READ, 512), sink, exp, conn, []), b2, backendCapabilities(b2));
    expect(sink.errors).toEqual([5, 5]);
    expect(sink.pool.counters.returned).toBe(0);
  });
});

describe('filters and readInto', () => {
  const base: Backend = { read: () => Buffer.alloc(1), readInto: () => {}, write: () => {} };
  it('forwarded when the filter leaves read alone', () => {
    expect(typeof layer(base, { write: () => {} }).readInto).toBe('function');
  });
  it('dropped when the filter overrides read (its reads must not be bypassed), unless it gives its own', () => {
    expect(layer(base, { read: () => Buffer.alloc(1) }).readInto).toBeUndefined();
    const own = () => {};
    expect(layer(base, { read: () => Buffer.alloc(1), readInto: own }).readInto).toBe(own);
  });
});
