/**
 * python3-libnbd (the library under nbdsh) against our server: data I/O,
 * errors and their errnos, flush/trim/zero/cache, 64 concurrent aio
 * requests, simple vs structured replies, block status. Negotiation (opt
 * mode) lives in nbdsh-negotiation.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { mergeMap } from 'rxjs';
import { memoryBackend, NbdRequestError, type Backend, type ReadSegment } from '../../src/index.js';
import { serverPerTest, type Running } from './harness.js';
import { py } from './pylibnbd.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 64 * KiB;

const { serve, track } = serverPerTest();

/** What a backend read returns, as one Buffer. */
async function readAll(b: Backend, offset: number, length: number): Promise<Buffer> {
  const r = await b.read(offset, length);
  if (Buffer.isBuffer(r)) return Buffer.from(r);
  return Buffer.concat((r as readonly ReadSegment[]).map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole))));
}

/** The same pattern as pattern(n, seed) in the Python prelude (pylibnbd.ts). */
function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

describe('pread / pwrite', () => {
  test('unaligned round trips across page boundaries, checked by the client and in the backend', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await py<{ checks: Record<string, boolean>; head: string }>(
      r.uri(),
      `
      h = connect()
      data = pattern(100003, 1)
      h.pwrite(data, ${PAGE - 13})
      h.pwrite(b'\\x01\\x02\\x03', 7)
      h.pwrite(b'Z', ${MiB - 1})
      out['checks'] = {
        'whole': h.pread(100003, ${PAGE - 13}) == data,
        'window': h.pread(777, ${PAGE - 300}) == bytes(287) + data[:490],
        'tail': h.pread(1001, ${PAGE - 13} + 100003 - 500) == data[-500:] + bytes(501),
        'small': h.pread(5, 6) == b'\\x00\\x01\\x02\\x03\\x00',
        'last': h.pread(1, ${MiB - 1}) == b'Z',
        'odd-sizes': all(h.pread(n, ${PAGE - 13} + n * 3) == data[n * 3:n * 3 + n] for n in (1, 2, 3, 511, 513, 4097)),
      }
      out['head'] = h.pread(16, ${PAGE - 13}).hex()
      h.shutdown()
      `,
    );
    expect(out.checks).toEqual({ whole: true, window: true, tail: true, small: true, last: true, 'odd-sizes': true });
    expect(out.head).toBe(pattern(16, 1).toString('hex'));
    // The backend holds exactly what the client wrote.
    expect((await readAll(mem, PAGE - 13, 100003)).equals(pattern(100003, 1))).toBe(true);
    expect((await readAll(mem, 6, 5)).toString('hex')).toBe('0001020300');
  });
});

describe('errors and errnos', () => {
  test('out of range: READ/TRIM/CACHE/BLOCK_STATUS ⇒ EINVAL, WRITE/WRITE_ZEROES ⇒ ENOSPC; the connection survives', async () => {
    const mem = memoryBackend({ size: MiB });
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await py<{ errs: Record<string, string | null>; after: Record<string, unknown> }>(
      r.uri(),
      `
      h = connect(strict_off=nbd.STRICT_BOUNDS)
      h.pwrite(b'ok', 0)
      out['errs'] = {
        'read-straddle': err(h.pread, 512, ${MiB - 256}),
        'read-past-end': err(h.pread, 1, ${MiB}),
        'read-huge-offset': err(h.pread, 1, 2**63),
        'write-straddle': err(h.pwrite, b'x' * 512, ${MiB - 256}),
        'write-past-end': err(h.pwrite, b'x', ${MiB + 4096}),
        'zero-straddle': err(h.zero, 512, ${MiB - 256}),
        'trim-straddle': err(h.trim, 512, ${MiB - 256}),
        'cache-straddle': err(h.cache, 512, ${MiB - 256}),
        'block-status-past-end': err(extents, h, 512, ${MiB}),
      }
      out['after'] = {
        'read': h.pread(2, 0).decode(),
        'last-byte': h.pread(256, ${MiB - 256}) == bytes(256),
        'write': err(h.pwrite, b'yy', ${MiB - 2}),
        'readback': h.pread(2, ${MiB - 2}).decode(),
      }
      h.shutdown()
      `,
    );
    expect(out.errs).toEqual({
      'read-straddle': 'EINVAL',
      'read-past-end': 'EINVAL',
      'read-huge-offset': 'EINVAL',
      'write-straddle': 'ENOSPC',
      'write-past-end': 'ENOSPC',
      'zero-straddle': 'ENOSPC',
      'trim-straddle': 'EINVAL',
      'cache-straddle': 'EINVAL',
      'block-status-past-end': 'EINVAL',
    });
    expect(out.after).toEqual({ read: 'ok', 'last-byte': true, write: null, readback: 'yy' });
    // The refused straddling write changed nothing.
    expect((await readAll(mem, MiB - 256, 254)).equals(Buffer.alloc(254))).toBe(true);
  });

  test('read-only export ⇒ EPERM for WRITE/TRIM/WRITE_ZEROES; misaligned to the minimum block ⇒ EINVAL', async () => {
    const r = await serve({
      exports: [
        { name: 'ro', backend: memoryBackend({ size: MiB }), readOnly: true },
        { name: 'aligned', backend: memoryBackend({ size: MiB }), blockSizes: { minimum: 512, preferred: 4096, maximum: MiB } },
      ],
    });
    const ro = await py<{ errs: Record<string, string | null>; read: boolean }>(
      r.uri('ro'),
      `
      h = connect(strict_off=nbd.STRICT_COMMANDS)
      out['errs'] = {
        'write': err(h.pwrite, b'x' * 512, 0),
        'trim': err(h.trim, 512, 0),
        'zero': err(h.zero, 512, 0),
        'flush': err(h.flush),
      }
      out['read'] = h.pread(512, 0) == bytes(512)
      `,
    );
    expect(ro.errs).toEqual({ write: 'EPERM', trim: 'EPERM', zero: 'EPERM', flush: null });
    expect(ro.read).toBe(true);

    const al = await py<{ errs: Record<string, string | null>; readback: string }>(
      r.uri('aligned'),
      `
      h = connect(strict_off=nbd.STRICT_ALIGN)
      out['errs'] = {
        'read-offset': err(h.pread, 512, 100),
        'read-length': err(h.pread, 100, 0),
        'write-offset': err(h.pwrite, b'x' * 512, 1),
        'aligned-write': err(h.pwrite, b'a' * 1024, 512),
      }
      out['readback'] = h.pread(512, 512).decode()
      `,
    );
    expect(al.errs).toEqual({ 'read-offset': 'EINVAL', 'read-length': 'EINVAL', 'write-offset': 'EINVAL', 'aligned-write': null });
    expect(al.readback).toBe('a'.repeat(512));
  });

  test('a backend that throws: plain Error ⇒ EIO, NbdRequestError(ENOSPC) ⇒ ENOSPC, host codes mapped; connection lives on', async () => {
    const mem = memoryBackend({ size: MiB });
    const backend: Backend = {
      read(offset, length) {
        if (offset === 0) throw new Error('disk on fire');
        if (offset === 4096) return Promise.reject(new Error('async failure'));
        if (offset === 8192) throw Object.assign(new Error('denied'), { code: 'EACCES' });
        return mem.read(offset, length);
      },
      write(offset, data) {
        if (offset === 0) throw new NbdRequestError('ENOSPC');
        if (offset === 4096) return Promise.reject(new NbdRequestError('ENOSPC', 'full, later'));
        // ENOTSUP outside FAST_ZERO is not allowed on the wire: it becomes EINVAL (transmission.error-values).
        if (offset === 8192) throw new NbdRequestError('ENOTSUP');
        if (offset === 12288) throw Object.assign(new Error('quota'), { code: 'EDQUOT' });
        return mem.write!(offset, data, { fua: false });
      },
      flush() {
        throw new Error('flush failed');
      },
    };
    const r = await serve({ exports: [{ name: 'flaky', backend, size: MiB }] });
    const out = await py<{ errs: Record<string, string | null>; after: string[] }>(
      r.uri(),
      `
      h = connect()
      out['errs'] = {
        'read-throw': err(h.pread, 512, 0),
        'read-reject': err(h.pread, 512, 4096),
        'read-eacces': err(h.pread, 512, 8192),
        'write-enospc': err(h.pwrite, b'x' * 512, 0),
        'write-enospc-async': err(h.pwrite, b'x' * 512, 4096),
        'write-enotsup': err(h.pwrite, b'x' * 512, 8192),
        'write-edquot': err(h.pwrite, b'x' * 512, 12288),
        'flush': err(h.flush),
        'fua-write': err(h.pwrite, b'f' * 512, 20480, nbd.CMD_FLAG_FUA),
      }
      h.pwrite(b'still here', 16384)
      out['after'] = [h.pread(10, 16384).decode(), h.pread(1, 20480).decode()]
      h.shutdown()
      `,
    );
    expect(out.errs).toEqual({
      'read-throw': 'EIO',
      'read-reject': 'EIO',
      'read-eacces': 'EPERM',
      'write-enospc': 'ENOSPC',
      'write-enospc-async': 'ENOSPC',
      'write-enotsup': 'EINVAL',
      'write-edquot': 'ENOSPC',
      flush: 'EIO',
      // FUA is emulated with flush: the write lands, the flush fails, the client hears EIO.
      'fua-write': 'EIO',
    });
    expect(out.after).toEqual(['still here', 'f']);
  });
});

describe('flush, trim, zero, cache', () => {
  test('memory backend: flush, trim ⇒ hole, zero NO_HOLE ⇒ data pages zeroed in place (holes stay holes), FAST_ZERO ⇒ hole, cache, FUA', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await py<Record<string, unknown>>(
      r.uri(),
      `
      h = connect()
      h.pwrite(b'\\xaa' * ${4 * PAGE}, 0, nbd.CMD_FLAG_FUA)
      h.flush()
      out['before'] = extents(h, ${4 * PAGE}, 0)
      h.trim(${PAGE}, ${PAGE})
      out['after_trim'] = extents(h, ${4 * PAGE}, 0)
      out['trim_reads_zero'] = h.pread(${PAGE}, ${PAGE}) == bytes(${PAGE})
      # Unaligned zero inside page 0, then NO_HOLE over pages 1-2 (page 1 was a hole).
      h.zero(100, 50)
      out['zero_partial'] = h.pread(200, 0) == b'\\xaa' * 50 + bytes(100) + b'\\xaa' * 50
      h.zero(${2 * PAGE}, ${PAGE}, nbd.CMD_FLAG_NO_HOLE)
      out['after_no_hole'] = extents(h, ${4 * PAGE}, 0)
      out['no_hole_reads_zero'] = h.pread(${2 * PAGE}, ${PAGE}) == bytes(${2 * PAGE})
      out['fast_zero'] = err(h.zero, ${2 * PAGE}, ${2 * PAGE}, nbd.CMD_FLAG_FAST_ZERO)
      out['after_fast_zero'] = extents(h, ${4 * PAGE}, 0)
      out['fast_zero_reads_zero'] = h.pread(${3 * PAGE}, ${PAGE}) == bytes(${3 * PAGE})
      out['cache'] = err(h.cache, ${4 * PAGE}, 0)
      out['fua_trim'] = err(h.trim, 10, 10, nbd.CMD_FLAG_FUA)
      out['fua_zero'] = err(h.zero, 10, 20, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
      out['head'] = h.pread(40, 0).hex()
      h.shutdown()
      `,
    );
    const hole = 3;
    expect(out.before).toEqual({ offset: 0, extents: [[4 * PAGE, 0]] });
    expect(out.after_trim).toEqual({ offset: 0, extents: [[PAGE, 0], [PAGE, hole], [2 * PAGE, 0]] });
    expect(out.trim_reads_zero).toBe(true);
    expect(out.zero_partial).toBe(true);
    // NO_HOLE: page 2 (data) is zeroed in place and stays data; page 1 (a hole) stays a hole, as in
    // nbdkit's memory plugin (provisioning holes would let one request allocate the whole export).
    expect(out.after_no_hole).toEqual({ offset: 0, extents: [[PAGE, 0], [PAGE, hole], [2 * PAGE, 0]] });
    expect(out.no_hole_reads_zero).toBe(true);
    expect(out.fast_zero).toBeNull();
    expect(out.after_fast_zero).toEqual({ offset: 0, extents: [[PAGE, 0], [3 * PAGE, hole]] });
    expect(out.fast_zero_reads_zero).toBe(true);
    expect(out.cache).toBeNull();
    expect(out.fua_trim).toBeNull();
    expect(out.fua_zero).toBeNull();
    expect(out.head).toBe('aa'.repeat(10) + '00'.repeat(20) + 'aa'.repeat(10));
    expect(mem.allocatedBytes).toBe(PAGE);
  });

  test('backend without native zero: FAST_ZERO ⇒ ENOTSUP, plain and NO_HOLE zero are written; FUA and flush reach flush()', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    const calls = { flush: 0, writes: 0, cache: 0 };
    const backend: Backend = {
      read: (o, l) => mem.read(o, l),
      write: (o, d) => {
        calls.writes++;
        mem.write!(o, d, { fua: false });
      },
      flush: () => {
        calls.flush++;
      },
      cache: () => {
        calls.cache++;
      },
    };
    const r = await serve({ exports: [{ name: 'emul', backend, size: MiB }] });
    const out = await py<Record<string, unknown>>(
      r.uri(),
      `
      h = connect()
      out['can'] = [h.can_zero(), h.can_fast_zero(), h.can_fua(), h.can_flush(), h.can_trim(), h.can_cache()]
      h.pwrite(b'\\x55' * 8192, 0)
      out['fast_zero'] = err(h.zero, 4096, 0, nbd.CMD_FLAG_FAST_ZERO)
      out['untouched'] = h.pread(4096, 0) == b'\\x55' * 4096
      out['zero'] = err(h.zero, 1000, 10)
      out['zero_no_hole'] = err(h.zero, 2000, 5000, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
      out['data'] = h.pread(8192, 0) == b'\\x55' * 10 + bytes(1000) + b'\\x55' * (5000 - 1010) + bytes(2000) + b'\\x55' * (8192 - 7000)
      out['flush'] = err(h.flush)
      out['fua_write'] = err(h.pwrite, b'q', 9000, nbd.CMD_FLAG_FUA)
      out['cache'] = err(h.cache, 4096, 0)
      h2 = connect(strict_off=nbd.STRICT_COMMANDS)
      out['trim_unadvertised'] = err(h2.trim, 4096, 0)
      out['alive'] = h2.pread(1, 9000).decode()
      h.shutdown(); h2.shutdown()
      `,
    );
    expect(out.can).toEqual([true, true, true, true, false, true]);
    expect(out.fast_zero).toBe('ENOTSUP');
    expect(out.untouched).toBe(true);
    expect(out.zero).toBeNull();
    expect(out.zero_no_hole).toBeNull();
    expect(out.data).toBe(true);
    expect(out.flush).toBeNull();
    expect(out.fua_write).toBeNull();
    expect(out.cache).toBeNull();
    expect(out.trim_unadvertised).toBe('EINVAL');
    expect(out.alive).toBe('q');
    // flush(): one explicit, one after the FUA zero, one after the FUA write.
    expect(calls.flush).toBeGreaterThanOrEqual(3);
    expect(calls.cache).toBe(1);
  });
});

describe('concurrency', () => {
  test('64 concurrent aio requests (pread/pwrite mixed) complete out of order with correct data', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: 4096 });
    let active = 0;
    let maxActive = 0;
    const delayed = async <T>(fn: () => T | Promise<T>): Promise<T> => {
      active++;
      maxActive = Math.max(maxActive, active);
      await new Promise((res) => setTimeout(res, 10 + Math.random() * 30));
      active--;
      return await fn();
    };
    const backend: Backend = {
      read: (o, l) => delayed(() => mem.read(o, l)),
      write: (o, d, opt) => {
        const copy = Buffer.from(d);
        return delayed(() => mem.write!(o, copy, opt));
      },
    };
    const r = await serve({ exports: [{ name: 'slow', backend, size: MiB }] });
    // Pre-fill the regions the odd (read) requests will read.
    for (let i = 1; i < 64; i += 2) mem.write!(i * 8192, pattern(4096 + i, i), { fua: false });
    const out = await py<{ order: number[]; errors: number[]; reads_ok: boolean[]; writes_ok: boolean[]; peak: number }>(
      r.uri(),
      `
      h = connect()
      order, errors, bufs = [], [], {}
      def done(i):
          def cb(error):
              order.append(i)
              if error.value != 0:
                  errors.append(i)
              return 1
          return cb
      for i in range(64):
          n = 4096 + i
          if i % 2 == 0:
              h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(pattern(n, i))), i * 8192, done(i))
          else:
              bufs[i] = nbd.Buffer(n)
              h.aio_pread(bufs[i], i * 8192, done(i))
      out['peak'] = h.aio_in_flight()
      while h.aio_in_flight() > 0:
          h.poll(-1)
      out['order'] = order
      out['errors'] = errors
      out['reads_ok'] = [bufs[i].to_bytearray() == pattern(4096 + i, i) for i in range(1, 64, 2)]
      out['writes_ok'] = [h.pread(4096 + i, i * 8192) == pattern(4096 + i, i) for i in range(0, 64, 2)]
      h.shutdown()
      `,
    );
    expect(out.errors).toEqual([]);
    expect([...out.order].sort((a, b) => a - b)).toEqual(Array.from({ length: 64 }, (_, i) => i));
    // Random backend delays: replies came back in an order other than issue order.
    expect(out.order).not.toEqual(Array.from({ length: 64 }, (_, i) => i));
    expect(out.reads_ok.every(Boolean)).toBe(true);
    expect(out.writes_ok.every(Boolean)).toBe(true);
    expect(out.peak).toBe(64);
    // The server really had many of them at the backend at once.
    expect(maxActive).toBeGreaterThanOrEqual(16);
    for (let i = 0; i < 64; i += 2) expect((await readAll(mem, i * 8192, 4096 + i)).equals(pattern(4096 + i, i))).toBe(true);
  });
});

describe('structured vs simple replies', () => {
  const layout = async (r: Running, body: string) => py<Record<string, unknown>>(r.uri(), body);
  const setup = (mem: Backend) => {
    // Data in page 1 only; reads spanning a hole and data exercise OFFSET_HOLE (structured) and zero fill (simple).
    mem.write!(PAGE, Buffer.alloc(PAGE, 0x42), { fua: false });
  };
  const readChecks = `
  out['span'] = h.pread(${2 * PAGE}, ${PAGE / 2}) == bytes(${PAGE / 2}) + b'\\x42' * ${PAGE} + bytes(${PAGE / 2})
  out['hole'] = h.pread(1000, ${3 * PAGE}) == bytes(1000)
  out['oob'] = err(h.pread, 10, ${MiB})
  out['alive'] = h.pread(4, ${PAGE}).hex()
  `;

  test('structured replies are negotiated by default; DF and meta contexts with them', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    setup(mem);
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await layout(
      r,
      `
      h = connect(strict_off=nbd.STRICT_BOUNDS)
      out['sr'] = h.get_structured_replies_negotiated()
      out['df'] = h.can_df()
      out['meta'] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
      ${readChecks}
      # DF: a read spanning hole and data comes back as one chunk (reply.df-one-chunk).
      chunks = []
      def chunk(sub, off, status, error):
          chunks.append([off, len(sub), status])
          return 0
      buf = h.pread_structured(${PAGE}, ${PAGE / 2}, chunk, nbd.CMD_FLAG_DF)
      out['df_read'] = buf == bytes(${PAGE / 2}) + b'\\x42' * ${PAGE / 2}
      out['df_chunks'] = chunks
      chunks = []
      h.pread_structured(${PAGE}, ${PAGE / 2}, chunk)
      out['chunks'] = chunks
      `,
    );
    expect(out).toEqual({
      sr: true,
      df: true,
      meta: true,
      span: true,
      hole: true,
      oob: 'EINVAL',
      alive: '42424242',
      df_read: true,
      df_chunks: [[PAGE / 2, PAGE, 1]], // one READ_DATA chunk
      chunks: [
        [PAGE / 2, PAGE / 2, 2], // READ_HOLE
        [PAGE, PAGE / 2, 1], // READ_DATA
      ],
    });
  });

  test('a client that refuses structured replies gets simple replies with correct data and errors', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    setup(mem);
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await layout(
      r,
      `
      h = connect(sr=False, strict_off=nbd.STRICT_BOUNDS)
      out['sr'] = h.get_structured_replies_negotiated()
      out['df'] = h.can_df()
      out['meta'] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
      ${readChecks}
      `,
    );
    expect(out).toEqual({ sr: false, df: false, meta: false, span: true, hole: true, oob: 'EINVAL', alive: '42424242' });
  });

  test('a server with structuredReplies: false answers simply even when the client asks', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    setup(mem);
    const r = await serve({ structuredReplies: false, exports: [{ name: 'disk', backend: mem }] });
    const out = await layout(
      r,
      `
      h = connect(strict_off=nbd.STRICT_BOUNDS)
      out['requested'] = h.get_request_structured_replies()
      out['sr'] = h.get_structured_replies_negotiated()
      out['df'] = h.can_df()
      out['meta'] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
      ${readChecks}
      out['write_err'] = err(h.pwrite, b'x' * 20, ${MiB - 10})
      out['write'] = err(h.pwrite, b'w' * 20, ${MiB - 20})
      out['readback'] = h.pread(20, ${MiB - 20}).decode()
      `,
    );
    expect(out).toEqual({
      requested: true,
      sr: false,
      df: false,
      meta: false,
      span: true,
      hole: true,
      oob: 'EINVAL',
      alive: '42424242',
      write_err: 'ENOSPC',
      write: null,
      readback: 'w'.repeat(20),
    });
  });
});

describe('block status', () => {
  test('with and without REQ_ONE on a sparse memory export', async () => {
    const mem = memoryBackend({ size: MiB, pageSize: PAGE });
    mem.write!(0, Buffer.alloc(PAGE, 1), { fua: false });
    mem.write!(3 * PAGE, Buffer.alloc(10, 1), { fua: false });
    const r = await serve({ exports: [{ name: 'disk', backend: mem }] });
    const out = await py<Record<string, { offset: number; extents: [number, number][] }>>(
      r.uri(),
      `
      h = connect()
      out['all'] = extents(h, ${MiB}, 0)
      out['window'] = extents(h, ${3 * PAGE}, 100)
      out['one'] = extents(h, ${MiB}, 0, nbd.CMD_FLAG_REQ_ONE)
      out['one_hole'] = extents(h, ${PAGE}, ${PAGE + 5}, nbd.CMD_FLAG_REQ_ONE)
      out['one_short'] = extents(h, 100, ${PAGE + 5}, nbd.CMD_FLAG_REQ_ONE)
      out['one_data'] = extents(h, 7, ${3 * PAGE + 1}, nbd.CMD_FLAG_REQ_ONE)
      `,
    );
    const H = 3;
    expect(out.all).toEqual({ offset: 0, extents: [[PAGE, 0], [2 * PAGE, H], [PAGE, 0], [MiB - 4 * PAGE, H]] });
    expect(out.window).toEqual({ offset: 100, extents: [[PAGE - 100, 0], [2 * PAGE, H], [100, 0]] });
    expect(out.one).toEqual({ offset: 0, extents: [[PAGE, 0]] });
    expect(out.one_hole).toEqual({ offset: PAGE + 5, extents: [[PAGE, H]] });
    expect(out.one_short).toEqual({ offset: PAGE + 5, extents: [[100, H]] });
    expect(out.one_data).toEqual({ offset: 3 * PAGE + 1, extents: [[7, 0]] });
    for (const k of ['one', 'one_hole', 'one_short', 'one_data']) expect(out[k]!.extents).toHaveLength(1);
  });

  test('without extents(): one data extent ≤ length; a request stream with extents answers from the subscriber', async () => {
    const seen: { offset: number; length: number; reqOne: boolean }[] = [];
    const r = await serve({
      exports: [
        { name: 'plain', backend: { read: (_o, l) => Buffer.alloc(l) }, size: MiB },
        { name: 'stream', size: MiB, flags: { extents: true } },
      ],
    });
    track(r.server.requests$
      .pipe(
        mergeMap(async (req) => {
          if (req.type !== 'blockStatus') return req.fail('EINVAL');
          seen.push({ offset: req.offset, length: req.length, reqOne: req.flags.reqOne });
          const first = Math.min(4096, req.length);
          return req.reply(req.flags.reqOne ? [{ length: first, flags: 3 }] : [{ length: first, flags: 3 }, { length: req.length - first, flags: 0 }]);
        }),
      )
      .subscribe(),
    );
    const plain = await py<Record<string, { offset: number; extents: [number, number][] }>>(
      r.uri('plain'),
      `
      h = connect()
      out['all'] = extents(h, 65536, 512)
      out['one'] = extents(h, 65536, 512, nbd.CMD_FLAG_REQ_ONE)
      `,
    );
    expect(plain.all).toEqual({ offset: 512, extents: [[65536, 0]] });
    expect(plain.one).toEqual({ offset: 512, extents: [[65536, 0]] });
    const stream = await py<Record<string, { offset: number; extents: [number, number][] }>>(
      r.uri('stream'),
      `
      h = connect()
      out['all'] = extents(h, 65536, 8192)
      out['one'] = extents(h, 65536, 8192, nbd.CMD_FLAG_REQ_ONE)
      `,
    );
    expect(stream.all).toEqual({ offset: 8192, extents: [[4096, 3], [61440, 0]] });
    expect(stream.one).toEqual({ offset: 8192, extents: [[4096, 3]] });
    expect(seen).toEqual([
      { offset: 8192, length: 65536, reqOne: false },
      { offset: 8192, length: 65536, reqOne: true },
    ]);
  });
});

describe('request-stream export', () => {
  test('a requests$ subscriber serves reads/writes/flush/trim from a Buffer, and its failures reach the client', async () => {
    const size = 256 * KiB;
    const disk = Buffer.alloc(size);
    const seen: string[] = [];
    const r = await serve({ exports: [{ name: 'buf', size, flags: { flush: true, fua: true, trim: true, zero: true } }] });
    track(r.server.requests$
      .pipe(
        mergeMap(async (req) => {
          seen.push(`${req.type}${req.flags.fua ? '+fua' : ''}`);
          await new Promise((res) => setImmediate(res));
          switch (req.type) {
            case 'read':
              if (req.offset >= 200 * KiB) return req.fail('EIO', 'bad sector');
              return req.reply(disk.subarray(req.offset, req.offset + req.length));
            case 'write':
              req.data!.copy(disk, req.offset);
              return req.reply();
            case 'trim':
            case 'writeZeroes':
              disk.fill(0, req.offset, req.offset + req.length);
              return req.reply();
            case 'flush':
              return req.reply();
            default:
              return req.fail('EINVAL');
          }
        }, 16),
      )
      .subscribe(),
    );
    const out = await py<Record<string, unknown>>(
      r.uri(),
      `
      h = connect()
      data = pattern(50001, 3)
      h.pwrite(data, 1234)
      h.pwrite(b'FUA!', 100000, nbd.CMD_FLAG_FUA)
      out['roundtrip'] = h.pread(50001, 1234) == data
      out['fua'] = h.pread(4, 100000).decode()
      h.trim(1000, 2000)
      h.zero(10, 30000)
      out['trimmed'] = h.pread(1000, 2000) == bytes(1000)
      out['zeroed'] = h.pread(14, 29998) == data[29998 - 1234:30000 - 1234] + bytes(10) + data[30010 - 1234:30012 - 1234]
      h.flush()
      out['bad_sector'] = err(h.pread, 512, ${200 * KiB})
      out['alive'] = h.pread(4, 100000).decode()
      h.shutdown()
      `,
    );
    expect(out).toEqual({ roundtrip: true, fua: 'FUA!', trimmed: true, zeroed: true, bad_sector: 'EIO', alive: 'FUA!' });
    // The Buffer holds what was written (minus the trimmed and zeroed ranges).
    const expected = Buffer.alloc(size);
    pattern(50001, 3).copy(expected, 1234);
    Buffer.from('FUA!').copy(expected, 100000);
    expected.fill(0, 2000, 3000);
    expected.fill(0, 30000, 30010);
    expect(disk.equals(expected)).toBe(true);
    expect(seen).toContain('write+fua');
    expect(seen).toContain('trim');
    expect(seen).toContain('writeZeroes');
    expect(seen).toContain('flush');
  });
});
