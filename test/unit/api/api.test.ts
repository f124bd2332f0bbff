import { describe, expect, it } from 'vitest';
import { lastValueFrom, from, toArray } from 'rxjs';
import {
  backendCapabilities,
  flagCapabilities,
  memoryBackend,
  NbdError,
  NbdRequest,
  NbdRequestError,
  normalizeExtents,
  parseSize,
  serveBackend,
  handleWithBackend,
  transmissionFlags,
  createServer,
  type Backend,
  type ReplySink,
} from '../../../src/index.js';
import { CMD, CMD_FLAG, ERRNO, FLAG, MAGIC, STATE } from '../../../src/protocol/constants.js';
import type { RequestFrame } from '../../../src/protocol/frames.js';
import { ReplyEncoder, replyReadBuffer, type ReadSegment, type ReplyMode } from '../../../src/protocol/replies.js';
import { encodeSimpleReply, type Extent } from '../../../src/protocol/encoder.js';
import { silentLogger } from '../../../src/transport/logger.js';

function frame(type: number, over: Partial<RequestFrame> = {}): RequestFrame {
  return { kind: 'request', extended: false, flags: 0, type, cookie: 7n, offset: 0, length: 512, huge: false, payloadDiscarded: false, ...over };
}

/** A ReplySink that encodes as a connection does (ReplyEncoder) and keeps the frames. */
class Sink implements ReplySink {
  frames: Buffer[][] = [];
  private readonly encoder = new ReplyEncoder({
    write: (frame) => void this.frames.push([...frame]),
    writeSimple: (cookie, error) => void this.frames.push([...encodeSimpleReply(cookie, error)]),
    writeRead: (mode, cookie, offset, data) => void this.frames.push([...replyReadBuffer(mode, cookie, offset, data)]),
  });
  constructor(replyMode: ReplyMode = 'simple') {
    this.encoder.mode = replyMode;
  }
  ok(cookie: bigint, offset: number): void {
    this.encoder.ok(cookie, offset);
  }
  read(cookie: bigint, offset: number, data: Buffer | readonly ReadSegment[], df: boolean): void {
    this.encoder.read(cookie, offset, data, df);
  }
  blockStatus(cookie: bigint, offset: number, contexts: ReadonlyArray<{ readonly id: number; readonly extents: readonly Extent[] }>): void {
    this.encoder.blockStatus(cookie, offset, contexts);
  }
  error(cookie: bigint, command: number, errno: number, message: string | undefined, offset: number): void {
    this.encoder.error(cookie, command, errno, message, offset);
  }
  /** error field of the simple reply n. */
  simpleError(n = 0): number {
    const h = this.frames[n]![0]!;
    expect(h.readUInt32BE(0)).toBe(MAGIC.NBD_SIMPLE_REPLY_MAGIC);
    return h.readUInt32BE(4);
  }
}

const exp = { name: 'e', size: 1 << 20 };
const conn = { id: 1, peer: 'test', tls: false };
const request = (f: RequestFrame, sink = new Sink()) => ({ req: new NbdRequest(f, sink, exp, conn, [{ id: 1, name: 'base:allocation' }]), sink });

describe('flag derivation from a backend (as nbdkit from a plugin; transmission.flags-advertised)', () => {
  it('a read-only backend (no write) advertises READ_ONLY and nothing writable', () => {
    const f = transmissionFlags(backendCapabilities({ read: () => Buffer.alloc(0) }));
    expect(f & FLAG.NBD_FLAG_READ_ONLY).toBeTruthy();
    expect(f & (FLAG.NBD_FLAG_SEND_WRITE_ZEROES | FLAG.NBD_FLAG_SEND_TRIM | FLAG.NBD_FLAG_SEND_FUA | FLAG.NBD_FLAG_SEND_FAST_ZERO)).toBe(0);
    expect(f & FLAG.NBD_FLAG_SEND_CACHE).toBeTruthy();
  });
  it('write without flush: zero emulated (with fast zero), no FUA, no FLUSH', () => {
    const c = backendCapabilities({ read: () => Buffer.alloc(0), write: () => {} });
    expect(c).toMatchObject({ write: true, zero: 'emulate', fastZero: true, fua: 'none', flush: false });
  });
  it('write + flush: FUA emulated by flush', () => {
    const c = backendCapabilities({ read: () => Buffer.alloc(0), write: () => {}, flush: () => {} });
    expect(c.fua).toBe('emulate');
    expect(transmissionFlags(c) & FLAG.NBD_FLAG_SEND_FUA).toBeTruthy();
  });
  it('native zero without canFastZero does not advertise fast zero', () => {
    const c = backendCapabilities({ read: () => Buffer.alloc(0), write: () => {}, zero: () => {} });
    expect(c.zero).toBe('native');
    expect(c.fastZero).toBe(false);
  });
  it('readOnly export config overrides a writable backend', () => {
    const c = backendCapabilities(memoryBackend(4096), true);
    expect(c.write).toBe(false);
    expect(c.trim).toBe(false);
  });
  it('request-stream flags', () => {
    const f = transmissionFlags(flagCapabilities({ flush: true, trim: true, zero: true, fastZero: true, fua: true, multiConn: true, rotational: true }));
    for (const bit of [FLAG.NBD_FLAG_SEND_FLUSH, FLAG.NBD_FLAG_SEND_TRIM, FLAG.NBD_FLAG_SEND_WRITE_ZEROES, FLAG.NBD_FLAG_SEND_FAST_ZERO, FLAG.NBD_FLAG_SEND_FUA, FLAG.NBD_FLAG_CAN_MULTI_CONN, FLAG.NBD_FLAG_ROTATIONAL]) {
      expect(f & bit).toBe(bit);
    }
    expect(transmissionFlags(flagCapabilities({}, true)) & FLAG.NBD_FLAG_READ_ONLY).toBeTruthy();
  });
});

describe('normalizeExtents (reply.block-status-chunks)', () => {
  it('merges equal neighbours, clips to the request, drops empty extents', () => {
    expect(normalizeExtents([{ length: 0, flags: 0 }, { length: 100, flags: 3 }, { length: 100, flags: 3 }, { length: 1000, flags: 0 }], 500, false)).toEqual([
      { length: 200, flags: 3 },
      { length: 300, flags: 0 },
    ]);
  });
  it('REQ_ONE returns exactly one extent no longer than the request', () => {
    expect(normalizeExtents([{ length: 4096, flags: 0 }, { length: 10, flags: 3 }], 100, true)).toEqual([{ length: 100, flags: 0 }]);
  });
  it('an empty answer becomes one extent with status 0 (always safe)', () => {
    expect(normalizeExtents([], 512, false)).toEqual([{ length: 512, flags: 0 }]);
  });
});

describe('parseSize (nbdkit suffixes)', () => {
  it.each([
    ['1048576', 1048576],
    ['512M', 512 * 2 ** 20],
    ['1G', 2 ** 30],
    ['16T', 16 * 2 ** 40],
    ['2048s', 2048 * 512],
    ['4k', 4096],
    ['1GiB', 2 ** 30],
  ])('%s', (text, n) => expect(parseSize(text)).toBe(n));
  it('rejects garbage and sizes over 2^53', () => {
    expect(() => parseSize('12Q')).toThrow(/cannot parse/);
    expect(() => parseSize('16E')).toThrow(/2\^53/);
  });
});

describe('NbdRequest', () => {
  it('carries the seed callback fields: type, flags, handle, offset, length', () => {
    const { req } = request(frame(CMD.NBD_CMD_WRITE, { flags: CMD_FLAG.NBD_CMD_FLAG_FUA, offset: 4096, length: 3, payload: Buffer.from('abc') }));
    expect(req.type).toBe('write');
    expect(req.flags).toEqual({ fua: true, noHole: false, df: false, reqOne: false, fastZero: false });
    expect(req.handle).toBe(7n);
    expect(req.offset).toBe(4096);
    expect(req.length).toBe(3);
    expect(req.data!.toString()).toBe('abc');
    expect(req.export.name).toBe('e');
  });
  it('a second answer is a programming error and writes nothing', () => {
    const { req, sink } = request(frame(CMD.NBD_CMD_FLUSH, { length: 0 }));
    req.reply();
    expect(() => req.fail('EIO')).toThrow(NbdError);
    expect(() => req.reply()).toThrow(/answered twice/);
    expect(sink.frames).toHaveLength(1);
  });
  it('a read reply of the wrong length becomes EIO, not a desynchronised stream', () => {
    const { req, sink } = request(frame(CMD.NBD_CMD_READ, { length: 512 }));
    expect(() => req.reply(Buffer.alloc(100))).toThrow(/100 bytes/);
    expect(sink.frames).toHaveLength(1);
    expect(sink.simpleError()).toBe(ERRNO.NBD_EIO);
  });
  it.each([
    ['a negative hole', [{ hole: -5 }, { data: Buffer.alloc(517) }], /invalid segment \(hole -5\)/],
    ['a fractional hole', [{ hole: 0.5 }, { data: Buffer.alloc(511) }, { hole: 0.5 }], /invalid segment \(hole 0.5\)/],
    ['a hole past 2^53', [{ hole: 2 ** 60 }], /invalid segment \(hole 1152921504606847000\)/],
    ['data that is a string', [{ data: 'x'.repeat(512) }], /invalid segment \(data that is string\)/],
    ['a number among the segments', [512], /invalid segment \(512\)/],
    ['neither data nor hole', [{ length: 512 }], /neither data nor hole/],
    ['a plain object', { data: Buffer.alloc(512) }, /not a Buffer or a list of segments/],
  ])('a read reply with %s becomes EIO before anything of it reaches the wire', (_what, data, message) => {
    for (const mode of ['simple', 'structured'] as const) {
      const sink = new Sink(mode);
      const { req } = request(frame(CMD.NBD_CMD_READ, { length: 512 }), sink);
      expect(() => req.reply(data as never)).toThrow(message);
      expect(sink.frames).toHaveLength(1);
      if (mode === 'simple') expect(sink.simpleError()).toBe(ERRNO.NBD_EIO);
    }
  });
  it('a read reply given as a Uint8Array is taken as its bytes', () => {
    const { req, sink } = request(frame(CMD.NBD_CMD_READ, { length: 4 }));
    req.reply(new Uint8Array([1, 2, 3, 4]) as never);
    expect(Buffer.concat(sink.frames[0]!).subarray(16)).toEqual(Buffer.from([1, 2, 3, 4]));
  });
  it('transmission.error-values: errors map: names, NbdRequestError, host errno codes, ENOTSUP / EOVERFLOW restrictions', () => {
    const cases: Array<[Parameters<NbdRequest['fail']>[0], number, number]> = [
      ['ENOSPC', 0, ERRNO.NBD_ENOSPC],
      [new NbdRequestError('EPERM'), 0, ERRNO.NBD_EPERM],
      [Object.assign(new Error('ro'), { code: 'EROFS' }), 0, ERRNO.NBD_EPERM],
      [new Error('boom'), 0, ERRNO.NBD_EIO],
      ['ENOTSUP', 0, ERRNO.NBD_EINVAL],
      ['ENOTSUP', CMD_FLAG.NBD_CMD_FLAG_FAST_ZERO, ERRNO.NBD_ENOTSUP],
      [ERRNO.NBD_EOVERFLOW, 0, ERRNO.NBD_EINVAL],
    ];
    for (const [err, flags, want] of cases) {
      const { req, sink } = request(frame(CMD.NBD_CMD_WRITE_ZEROES, { flags }));
      req.fail(err);
      expect(sink.simpleError()).toBe(want);
    }
  });
  it('structured mode: read errors are ERROR chunks with DONE', () => {
    const sink = new Sink('structured');
    const { req } = request(frame(CMD.NBD_CMD_READ), sink);
    req.fail('EIO', 'disk on fire');
    const h = sink.frames[0]![0]!;
    expect(h.readUInt32BE(0)).toBe(MAGIC.NBD_STRUCTURED_REPLY_MAGIC);
    expect(h.readUInt16BE(4)).toBe(1);
    expect(h.readUInt16BE(6)).toBe(0x8001);
  });
});

describe('serveBackend operator', () => {
  it('answers every request from a backend with bounded concurrency, emulating FUA by flush', async () => {
    const calls: string[] = [];
    let running = 0;
    let peak = 0;
    const backend: Backend = {
      size: 1 << 20,
      read: async (o, l) => {
        running++;
        peak = Math.max(peak, running);
        await new Promise((r) => setTimeout(r, 5));
        running--;
        calls.push(`read ${o}`);
        return Buffer.alloc(l, 1);
      },
      write: async (o) => void calls.push(`write ${o}`),
      flush: async () => void calls.push('flush'),
    };
    const sinks = Array.from({ length: 8 }, () => new Sink());
    const reqs = sinks.map((s, i) => new NbdRequest(frame(CMD.NBD_CMD_READ, { offset: i * 512 }), s, exp, conn, []));
    reqs.push(new NbdRequest(frame(CMD.NBD_CMD_WRITE, { flags: CMD_FLAG.NBD_CMD_FLAG_FUA, payload: Buffer.alloc(512) }), new Sink(), exp, conn, []));
    const done = await lastValueFrom(from(reqs).pipe(serveBackend(backend, { concurrency: 3 }), toArray()));
    expect(done).toHaveLength(9);
    expect(peak).toBeLessThanOrEqual(3);
    expect(calls.indexOf('flush')).toBe(calls.indexOf('write 0') + 1);
    expect(calls.filter((c) => c.startsWith('read'))).toHaveLength(8);
    for (const s of sinks) expect(s.simpleError()).toBe(0);
  });
  it('a throwing backend gives EIO and the errno it carries', async () => {
    const backend: Backend = {
      read: () => {
        throw new Error('broken');
      },
      write: () => {
        throw new NbdRequestError('ENOSPC');
      },
    };
    const a = new Sink();
    const b = new Sink();
    await lastValueFrom(
      from([new NbdRequest(frame(CMD.NBD_CMD_READ), a, exp, conn, []), new NbdRequest(frame(CMD.NBD_CMD_WRITE, { payload: Buffer.alloc(512) }), b, exp, conn, [])]).pipe(
        serveBackend(backend),
        toArray(),
      ),
    );
    expect(a.simpleError()).toBe(ERRNO.NBD_EIO);
    expect(b.simpleError()).toBe(ERRNO.NBD_ENOSPC);
  });
});

describe('createServer configuration', () => {
  it('refuses invalid exports', () => {
    expect(() => createServer({ exports: [] })).toThrow(/at least one export/);
    expect(() => createServer({ exports: [{ name: 'a' }] })).toThrow(/size/);
    expect(() => createServer({ exports: [{ name: 'a', size: 2 ** 60 }] })).toThrow(/2\^53/);
    // option.block-size-constraints
    expect(() => createServer({ exports: [{ name: 'a', size: 1, blockSizes: { minimum: 3 } }] })).toThrow(/power of 2/);
    expect(() => createServer({ exports: [{ name: 'a', size: 1 }, { name: 'a', size: 1 }] })).toThrow(/twice/);
    expect(() => createServer({ exports: [{ name: 'a', size: 1 }], defaultExport: 'b' })).toThrow(/not defined/);
  });
});

describe('WRITE payload lifetime: released once the backend write completes, or once the request is answered', () => {
  it('the memory backend stores the WRITE, then req.data throws instead of showing reused memory', () => {
    const m = memoryBackend(1 << 20);
    const { req, sink } = request(frame(CMD.NBD_CMD_WRITE, { offset: 4096, length: 4, payload: Buffer.from([1, 2, 3, 4]) }));
    expect(handleWithBackend(req, m, backendCapabilities(m))).toBeUndefined();
    expect(sink.simpleError()).toBe(0);
    expect((m.read(4096, 4) as Buffer).equals(Buffer.from([1, 2, 3, 4]))).toBe(true);
    expect(() => req.data).toThrow(NbdError);
    expect(() => req.dataParts).toThrow(/released/);
  });
  it('any backend: the payload is released once a synchronous write returns (and once it throws)', () => {
    const seen: Buffer[] = [];
    const b: Backend = { read: () => Buffer.alloc(0), write: (_o, d) => void seen.push(Buffer.from(d)) };
    const { req } = request(frame(CMD.NBD_CMD_WRITE, { length: 2, payload: Buffer.from([7, 8]) }));
    handleWithBackend(req, b, backendCapabilities(b));
    expect(seen[0]).toEqual(Buffer.from([7, 8]));
    expect(() => req.data).toThrow(/released/);
    const failing: Backend = { read: () => Buffer.alloc(0), write: () => { throw new Error('boom'); } };
    const r2 = request(frame(CMD.NBD_CMD_WRITE, { length: 2, payload: Buffer.from([7, 8]) }));
    handleWithBackend(r2.req, failing, backendCapabilities(failing), silentLogger);
    expect(r2.req.isAnswered).toBe(true);
    expect(() => r2.req.data).toThrow(/released/);
  });
  it('an asynchronous write keeps the payload until its promise settles, resolved or rejected', async () => {
    for (const outcome of ['resolve', 'reject'] as const) {
      let settle!: () => void;
      const b: Backend = {
        read: () => Buffer.alloc(0),
        write: () => new Promise<void>((res, rej) => (settle = outcome === 'resolve' ? res : () => rej(new Error('no')))),
      };
      const { req } = request(frame(CMD.NBD_CMD_WRITE, { length: 2, payload: Buffer.from([7, 8]) }));
      const done = handleWithBackend(req, b, backendCapabilities(b), silentLogger);
      await Promise.resolve();
      expect(req.data).toEqual(Buffer.from([7, 8]));
      settle();
      await done;
      expect(req.isAnswered).toBe(true);
      expect(() => req.data).toThrow(/released/);
    }
  });
  it('a request handed to the application: data readable until it is answered, not after', () => {
    const { req } = request(frame(CMD.NBD_CMD_WRITE, { length: 2, payload: Buffer.from([7, 8]) }));
    expect(req.data).toEqual(Buffer.from([7, 8]));
    expect(req.data).toEqual(Buffer.from([7, 8]));
    req.reply();
    expect(() => req.data).toThrow(/released/);
  });
});

describe('memoryBackend', () => {
  it('stores WRITEs that are not whole pages by copy (writeTargets declines them): writev pieces across blocks are stored and their pages become data', () => {
    const m = memoryBackend({ size: 4 << 20 });
    expect(m.writeTargets!((1 << 20) - 4096, (1 << 20) + 8192)).toBeNull();
    expect(m.writeTargets!(4096, 1 << 20)).toBeNull();
    expect(m.writeTargets!(1 << 20, (1 << 19) + 512)).toBeNull();
    const at = (1 << 20) - 4096;
    const parts = [Buffer.alloc(1000, 1), Buffer.alloc(0), Buffer.alloc((1 << 20) + 7192, 2)];
    const whole = Buffer.concat(parts);
    m.writev!(at, parts, { fua: false });
    // The payload's buffers may be reused at once: nothing of them is kept.
    for (const p of parts) p.fill(0xff);
    expect(m.allocatedBytes).toBe(64 * 1024 + (1 << 20) + 64 * 1024);
    const segs = m.read(at, whole.length) as Array<{ data?: Buffer; hole?: number }>;
    expect(Buffer.concat(segs.map((x) => x.data!)).equals(whole)).toBe(true);
    expect(m.extents!(0, 4 << 20, { reqOne: false, context: 'base:allocation' })).toEqual([
      { length: (1 << 20) - 64 * 1024, flags: 3 },
      { length: (1 << 20) + 128 * 1024, flags: 0 },
      { length: (2 << 20) - 64 * 1024, flags: 3 },
    ]);
  });
  const MiB = 1 << 20;
  it('TRIM to the end of an export whose size is not a multiple of the page size frees the short last page too (nbdkit maps it hole,zero); a TRIM that stops short of the end zero-fills it', () => {
    const size = 1_000_001; // 15 pages of 64 KiB and 16,961 bytes
    for (const [offset, length] of [[0, size], [983_040, size - 983_040], [983_041, size - 983_041]] as const) {
      const m = memoryBackend({ size });
      m.write!(0, Buffer.alloc(size, 5), { fua: false });
      m.trim!(offset, length, { fua: false });
      const ext = m.extents!(0, size, { reqOne: false, context: 'base:allocation' }) as ReadonlyArray<{ length: number; flags: number }>;
      expect(readAll(m, offset, length).every((x) => x === 0), `${offset}`).toBe(true);
      if (offset % (64 * 1024) === 0) {
        // The last page went: no data extent reaches the end.
        expect(ext.at(-1), `${offset}`).toEqual({ length: size - offset, flags: 3 });
        expect(m.allocatedBytes).toBe(offset);
      } else {
        // Part of the last page stays (its first byte): the page stays, zero-filled behind it.
        expect(ext, `${offset}`).toEqual([{ length: size, flags: 0 }]);
        expect(readAll(m, 983_040, 1)[0]).toBe(5);
      }
    }
  });

  const wholeBlock = (m: ReturnType<typeof memoryBackend>, at: number, fill: number, blocks = 1): Buffer[] => {
    const p = m.writeTargets!(at, blocks * MiB)!;
    expect(p.targets.map((t) => t.length)).toEqual(Array(blocks).fill(MiB));
    for (const t of p.targets) t.fill(fill);
    void p.commit();
    return [...p.targets];
  };
  const readAll = (m: ReturnType<typeof memoryBackend>, at: number, n: number): Buffer => {
    const r = m.read(at, n) as Buffer | Array<{ data?: Buffer; hole?: number }>;
    return Buffer.isBuffer(r) ? r : Buffer.concat(r.map((x) => x.data ?? Buffer.alloc(x.hole!)));
  };

  it('whole-block WRITEs are received into spare buffers: invisible until commit, swapped in whole by it', () => {
    const m = memoryBackend({ size: 4 * MiB });
    m.write!(MiB + 100, Buffer.from('old'), { fua: false });
    const p = m.writeTargets!(MiB, 2 * MiB)!;
    expect(p.targets).toHaveLength(2);
    p.targets[0]!.fill(7);
    p.targets[1]!.fill(8);
    // Filled but not committed: reads see the old contents (the hole of block 2 included).
    expect(readAll(m, MiB + 100, 3).toString()).toBe('old');
    expect(m.read(2 * MiB, 10)).toEqual([{ hole: 10 }]);
    expect(m.allocatedBytes).toBe(64 * 1024);
    void p.commit();
    expect(m.allocatedBytes).toBe(2 * MiB);
    const got = readAll(m, MiB, 2 * MiB);
    expect(got.subarray(0, MiB).every((x) => x === 7) && got.subarray(MiB).every((x) => x === 8)).toBe(true);
    expect(m.extents!(0, 4 * MiB, { reqOne: false, context: 'base:allocation' })).toEqual([
      { length: MiB, flags: 3 },
      { length: 2 * MiB, flags: 0 },
      { length: MiB, flags: 3 },
    ]);
    // A placement never committed (a cut-off WRITE) changes nothing.
    const q = m.writeTargets!(0, MiB)!;
    q.targets[0]!.fill(9);
    expect(m.read(0, MiB)).toEqual([{ hole: MiB }]);
  });

  it('a buffer no READ has seen is reused as a spare; one a READ has seen never is, so views handed out keep their bytes', () => {
    const m = memoryBackend({ size: 2 * MiB });
    const [first] = wholeBlock(m, 0, 1);
    // Block 0's buffer is `first`; nobody has read it, so the next swap makes it a spare and the next placement gets it.
    wholeBlock(m, 0, 2);
    const [third] = wholeBlock(m, 0, 3);
    expect(third!.buffer).toBe(first!.buffer);
    // Now a READ takes a view of block 0 (one buffer: the single-page path).
    const view = m.read(4096, 8) as Buffer;
    expect(view.buffer).toBe(third!.buffer);
    wholeBlock(m, 0, 4);
    // Later whole-block WRITEs never receive into the buffer that view points at.
    for (let i = 0; i < 4; i++) expect(wholeBlock(m, 0, 10 + i)[0]!.buffer).not.toBe(third!.buffer);
    expect([...view]).toEqual(Array(8).fill(3));
    // The same for views handed out in segments (a READ across two blocks).
    wholeBlock(m, MiB, 5);
    const across = m.read(MiB - 8, 16) as Array<{ data: Buffer }>;
    expect(across).toHaveLength(2);
    const seen = across.map((x) => x.data.buffer);
    wholeBlock(m, 0, 20, 2);
    for (let i = 0; i < 4; i++) for (const t of wholeBlock(m, 0, 30 + i, 2)) expect(seen).not.toContain(t.buffer);
    expect(Buffer.concat(across.map((x) => x.data)).equals(Buffer.concat([Buffer.alloc(8, 13), Buffer.alloc(8, 5)]))).toBe(true);
    expect(readAll(m, MiB - 1, 2).equals(Buffer.from([33, 33]))).toBe(true);
  });

  it('keeps at most spareBlocks spares (0: none), and a commit after the block was trimmed away installs it afresh', () => {
    const none = memoryBackend({ size: 2 * MiB, spareBlocks: 0 });
    const [a] = wholeBlock(none, 0, 1);
    wholeBlock(none, 0, 2);
    const [c] = wholeBlock(none, 0, 3);
    expect(c!.buffer).not.toBe(a!.buffer);
    expect(() => memoryBackend({ size: MiB, spareBlocks: -1 })).toThrow(RangeError);
    const m = memoryBackend({ size: 2 * MiB });
    const p = m.writeTargets!(MiB, MiB)!;
    p.targets[0]!.fill(4);
    m.write!(MiB, Buffer.alloc(10, 1), { fua: false });
    m.trim!(MiB, MiB, { fua: false });
    expect(m.allocatedBytes).toBe(0);
    void p.commit();
    expect(m.allocatedBytes).toBe(MiB);
    expect(readAll(m, MiB, MiB).every((x) => x === 4)).toBe(true);
  });

  const KiB = 1024;
  const place = (m: ReturnType<typeof memoryBackend>, at: number, length: number, fill: number): Buffer[] => {
    const p = m.writeTargets!(at, length)!;
    for (const t of p.targets) t.fill(fill);
    void p.commit();
    return [...p.targets];
  };

  it('WRITEs of whole pages inside a block are received into their own buffers: invisible until commit, then only their pages change', () => {
    const m = memoryBackend({ size: 4 * MiB });
    m.write!(0, Buffer.alloc(MiB, 1), { fua: false });
    const p = m.writeTargets!(256 * KiB, 256 * KiB)!;
    expect(p.targets.map((t) => t.length)).toEqual([256 * KiB]);
    p.targets[0]!.fill(2);
    expect(readAll(m, 0, MiB).every((x) => x === 1)).toBe(true);
    void p.commit();
    const got = readAll(m, 0, MiB);
    expect(got.subarray(0, 256 * KiB).every((x) => x === 1)).toBe(true);
    expect(got.subarray(256 * KiB, 512 * KiB).every((x) => x === 2)).toBe(true);
    expect(got.subarray(512 * KiB).every((x) => x === 1)).toBe(true);
    // The placed pages are one view of the received buffer.
    const view = m.read(256 * KiB, 256 * KiB) as Buffer;
    expect(Buffer.isBuffer(view) ? view.buffer : (view as Array<{ data: Buffer }>)[0]!.data.buffer).toBe(p.targets[0]!.buffer);
    // Across a block boundary: one buffer per block spanned.
    const q = m.writeTargets!(MiB - 128 * KiB, 256 * KiB)!;
    expect(q.targets.map((t) => t.length)).toEqual([128 * KiB, 128 * KiB]);
    q.targets[0]!.fill(3);
    q.targets[1]!.fill(4);
    void q.commit();
    const edge = readAll(m, MiB - 128 * KiB, 256 * KiB);
    expect(edge.subarray(0, 128 * KiB).every((x) => x === 3) && edge.subarray(128 * KiB).every((x) => x === 4)).toBe(true);
    expect(m.allocatedBytes).toBe(MiB + 128 * KiB);
    // A small WRITE into a placed page is copied into that page in place.
    m.write!(300 * KiB, Buffer.from('abc'), { fua: false });
    expect(readAll(m, 300 * KiB - 1, 5)).toEqual(Buffer.from([2, 0x61, 0x62, 0x63, 2]));
  });

  it('a page given back to the block after a placed WRITE replaced it reads zeros around new data (no bytes of the old page)', () => {
    const m = memoryBackend({ size: 2 * MiB });
    m.write!(0, Buffer.alloc(128 * KiB, 0xee), { fua: false });
    place(m, 0, 64 * KiB, 5);
    m.trim!(0, 64 * KiB, { fua: false });
    expect(m.read(0, 64 * KiB)).toEqual([{ hole: 64 * KiB }]);
    m.write!(10, Buffer.from('x'), { fua: false });
    const page = readAll(m, 0, 64 * KiB);
    expect(page[10]).toBe(0x78);
    page[10] = 0;
    expect(page.every((x) => x === 0)).toBe(true);
    // The neighbouring page, still in the block's own memory, kept its bytes.
    expect(readAll(m, 64 * KiB, 64 * KiB).every((x) => x === 0xee)).toBe(true);
    // WRITE_ZEROES with NO_HOLE over a hole page leaves it a hole (as nbdkit's memory plugin does: it
    // reads as zeroes); a write into it later reads zeros around the new byte, none of the old page's.
    place(m, 128 * KiB, 64 * KiB, 6);
    m.trim!(128 * KiB, 64 * KiB, { fua: false });
    m.zero!(128 * KiB, 64 * KiB, { fua: false, noHole: true, fastZero: false });
    expect(m.read(128 * KiB, 64 * KiB)).toEqual([{ hole: 64 * KiB }]);
    expect(m.allocatedBytes).toBe(128 * KiB);
    m.write!(128 * KiB + 7, Buffer.from('y'), { fua: false });
    const again = readAll(m, 128 * KiB, 64 * KiB);
    expect(again[7]).toBe(0x79);
    again[7] = 0;
    expect(again.every((x) => x === 0)).toBe(true);
    expect(m.allocatedBytes).toBe(192 * KiB);
  });

  it('a placed buffer whose pages were all replaced is reused unless a READ saw it', () => {
    const m = memoryBackend({ size: 2 * MiB });
    const [a] = place(m, 256 * KiB, 256 * KiB, 1);
    place(m, 256 * KiB, 256 * KiB, 2);
    const [c] = place(m, 256 * KiB, 256 * KiB, 3);
    expect(c!.buffer).toBe(a!.buffer);
    // Half of c's pages replaced: c is still in use, and keeps its other half.
    place(m, 256 * KiB, 128 * KiB, 4);
    expect(readAll(m, 384 * KiB, 128 * KiB).every((x) => x === 3)).toBe(true);
    const seen = m.read(400 * KiB, 8) as Buffer;
    expect(seen.buffer).toBe(c!.buffer);
    place(m, 384 * KiB, 128 * KiB, 5);
    for (let i = 0; i < 4; i++) for (const t of place(m, 256 * KiB, 256 * KiB, 10 + i)) expect(t.buffer).not.toBe(c!.buffer);
    expect([...seen]).toEqual(Array(8).fill(3));
  });

  it('a placed buffer less than half in use has its pages copied into the block and is let go (memory stays within twice the data)', () => {
    // Buffer identity is compared as booleans: a failing toBe on two 1 MiB buffers would print them whole.
    const m = memoryBackend({ size: 4 * MiB });
    const [a] = place(m, 0, MiB, 1);
    // 15 of its 16 pages replaced: the one left is copied out, and `a` (never read) becomes a spare.
    place(m, 64 * KiB, 15 * 64 * KiB, 2);
    const page0 = m.read(0, 64 * KiB) as Buffer;
    expect(page0.buffer === a!.buffer).toBe(false);
    expect(page0.every((x) => x === 1)).toBe(true);
    const [again] = place(m, 2 * MiB, MiB, 3);
    expect(again!.buffer === a!.buffer).toBe(true);
    expect(readAll(m, 64 * KiB, 15 * 64 * KiB).every((x) => x === 2)).toBe(true);
    // Trimming does the same: half in use is kept; below half it is copied out, and a buffer a READ saw is never reused.
    const [b] = place(m, MiB, MiB, 4);
    const seen = m.read(MiB + 10, 4) as Buffer;
    m.trim!(MiB + 64 * KiB, 8 * 64 * KiB, { fua: false });
    expect((m.read(MiB, 64 * KiB) as Buffer).buffer === b!.buffer).toBe(true);
    m.trim!(MiB + 9 * 64 * KiB, 64 * KiB, { fua: false });
    expect((m.read(MiB, 64 * KiB) as Buffer).buffer === b!.buffer).toBe(false);
    expect(readAll(m, MiB, 64 * KiB).every((x) => x === 4)).toBe(true);
    expect(readAll(m, MiB + 10 * 64 * KiB, 6 * 64 * KiB).every((x) => x === 4)).toBe(true);
    expect(m.read(MiB + 64 * KiB, 9 * 64 * KiB)).toEqual([{ hole: 9 * 64 * KiB }]);
    for (let i = 0; i < 3; i++) for (const t of place(m, 3 * MiB, MiB, 5 + i)) expect(t.buffer === b!.buffer).toBe(false);
    expect([...seen]).toEqual([4, 4, 4, 4]);
    expect(m.allocatedBytes).toBe(4 * MiB - 9 * 64 * KiB);
  });

  it('a block whose pages are all trimmed is dropped; rewriting it reads zeros around the new data', () => {
    const m = memoryBackend({ size: 2 << 20 });
    m.write!(0, Buffer.alloc(1 << 20, 0xaa), { fua: false });
    m.trim!(0, 1 << 20, { fua: false });
    expect(m.allocatedBytes).toBe(0);
    expect(m.read(0, 1 << 20)).toEqual([{ hole: 1 << 20 }]);
    m.write!(100, Buffer.from([1]), { fua: false });
    const b = m.read(0, 200) as Buffer;
    expect(b[100]).toBe(1);
    expect(b.subarray(0, 100).every((x) => x === 0) && b.subarray(101).every((x) => x === 0)).toBe(true);
    // A trimmed page in a block that stays allocated reads as zeros once written again.
    m.write!(65536, Buffer.alloc(65536, 0xbb), { fua: false });
    m.trim!(65536, 65536, { fua: false });
    m.write!(65536, Buffer.from([2]), { fua: false });
    const c = m.read(65536, 65536) as Buffer;
    expect(c[0]).toBe(2);
    expect(c.subarray(1).every((x) => x === 0)).toBe(true);
  });
  it('huge exports use a Map block table with the same behaviour', () => {
    const m = memoryBackend({ size: 2 ** 50 });
    const at = 2 ** 49 + 12345;
    m.write!(at, Buffer.from('far away'), { fua: false });
    expect((m.read(at, 8) as Buffer).toString()).toBe('far away');
    expect(m.allocatedBytes).toBe(64 * 1024);
    m.trim!(at - (at % 65536), 65536, { fua: false });
    expect(m.allocatedBytes).toBe(0);
    expect(m.read(at, 8)).toEqual([{ hole: 8 }]);
  });

  it('whole-export BLOCK_STATUS, TRIM and WRITE_ZEROES of a 1 PiB export visit only the pages held (a page walk would never end)', () => {
    // 2^34 pages of 64 KiB: walking them one by one would not finish in this test's timeout.
    const size = 2 ** 50;
    const m = memoryBackend({ size });
    const far = 2 ** 49;
    m.write!(0, Buffer.alloc(65536, 1), { fua: false });
    m.write!(far, Buffer.alloc(65536, 2), { fua: false });
    const o = { reqOne: false, context: 'base:allocation' };
    const hole = STATE.NBD_STATE_HOLE | STATE.NBD_STATE_ZERO;
    expect(m.extents!(0, size, o)).toEqual([
      { length: 65536, flags: 0 },
      { length: far - 65536, flags: hole },
      { length: 65536, flags: 0 },
      { length: size - far - 65536, flags: hole },
    ]);
    // The server's descriptor cap: the walk stops there (the client asks again from where it ends).
    expect(m.extents!(0, size, { ...o, maxExtents: 2 })).toEqual([
      { length: 65536, flags: 0 },
      { length: far - 65536, flags: hole },
    ]);
    expect(m.extents!(0, size, { ...o, reqOne: true })).toEqual([{ length: 65536, flags: 0 }]);
    // NO_HOLE zeroes the two data pages in place and provisions nothing else.
    m.zero!(0, size, { fua: false, noHole: true, fastZero: false });
    expect(m.allocatedBytes).toBe(2 * 65536);
    expect((m.read(far, 4) as Buffer).equals(Buffer.alloc(4))).toBe(true);
    m.trim!(0, size, { fua: false });
    expect(m.allocatedBytes).toBe(0);
    expect(m.extents!(0, size, o)).toEqual([{ length: size, flags: hole }]);
  });

  it('is sparse: pages appear on write and vanish on trim / zero', () => {
    const m = memoryBackend({ size: 1 << 20, pageSize: 4096 });
    expect(m.allocatedBytes).toBe(0);
    m.write!(4095, Buffer.from([1, 2]), { fua: false });
    expect(m.allocatedBytes).toBe(8192);
    const segs = m.read(0, 12288) as Array<{ data?: Buffer; hole?: number }>;
    // Adjacent data pages of one block are one view.
    expect(segs.map((s) => (s.data ? `d${s.data.length}` : `h${s.hole}`))).toEqual(['d8192', 'h4096']);
    expect(m.extents!(0, 12288, { reqOne: false, context: 'base:allocation' })).toEqual([
      { length: 8192, flags: 0 },
      { length: 4096, flags: 3 },
    ]);
    m.trim!(0, 8192, { fua: false });
    expect(m.allocatedBytes).toBe(0);
    m.write!(0, Buffer.alloc(100, 9), { fua: false });
    m.zero!(0, 50, { fua: false, noHole: true, fastZero: false });
    const b = m.read(0, 100) as Buffer;
    expect(b.subarray(0, 50).every((x) => x === 0)).toBe(true);
    expect(b.subarray(50).every((x) => x === 9)).toBe(true);
    m.zero!(0, 4096, { fua: false, noHole: true, fastZero: false });
    expect(m.allocatedBytes).toBe(4096); // NO_HOLE keeps the page provisioned
  });
});
