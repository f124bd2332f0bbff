/**
 * The everyday backends without a socket: the data= parser (values and
 * errors), pattern's arithmetic past 4 GiB, sparse-random's determinism and
 * shape (any split of a read gives the same bytes; extents agree with
 * reads; percent 0 and 100), the plugins' parameters.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { dataBackend, DataFormatError, nullBackend, parseData, patternBackend, sparseRandomBackend, SPARSE_BLOCK, zeroBackend, type Backend } from '../../../src/index.js';
import { backendPlugin } from '../../../src/plugins/registry.js';
import { ParamError, readParams } from '../../../src/plugins/params.js';
import type { Logger } from '../../../src/transport/logger.js';

const MiB = 1 << 20;
const quiet: Logger = { warn: () => {}, error: () => {} };

/** A read's bytes, holes as zeroes. */
async function bytes(b: Backend, offset: number, length: number): Promise<Buffer> {
  const r = await b.read(offset, length);
  const out = Buffer.isBuffer(r) ? r : Buffer.concat(r.map((s) => ('data' in s ? s.data : Buffer.alloc(s.hole))));
  expect(out.length).toBe(length);
  return out;
}

/** The image an expression describes, as one buffer. */
function image(expr: string): Buffer {
  const img = parseData(expr);
  const buf = Buffer.alloc(img.length);
  for (const p of img.pieces) p.buf.copy(buf, p.at);
  return buf;
}

describe('data= format', () => {
  it.each([
    ['0 1 2 3 @6 0xff 010', '000102030000ff08'],
    ['(1 2 @0 3)*2', '03020302'],
    ['1 (2 @-1) 3', '010203'],
    ['@0x10 @-4 5', '00000000000000000000000005000000'],
    ['"abc"[1:] 9 "abc"[:2]*2', '626309' + '61626162'],
    ['(1 2) -> \\a \\a ( \\a 9 ) -> \\b \\b', '0102' + '010209'],
    ['le16:0x102 be32:5 le64:0x0102030405060708', '0201' + '00000005' + '0807060504030201'],
    ['"q\\"\\n\\x41" # a comment\n 7', '71220a41' + '07'],
    ['1 @^4 2 @+1 3', '01000000020003'],
    ['1*0 () 2 0x55*3', '02555555'],
  ])('%j', (expr, hex) => {
    expect(image(expr).toString('hex')).toBe(hex);
  });

  it('keeps a sparse repeat sparse: ( 1 @1M ) * 1000 is 1000 one-byte pieces', () => {
    const img = parseData('( 1 @1048576 ) * 1000');
    expect(img.length).toBe(1000 * MiB);
    expect(img.pieces).toHaveLength(1000);
    expect(img.pieces[999]).toEqual({ at: 999 * MiB, buf: Buffer.from([1]) });
  });

  it.each([
    ['256', /byte 256 is not in the range 0..255/],
    ['1 @-2', /@-2 is larger than the current offset 1/],
    ['@^3', /alignment must be a power of 2/],
    ['( 1 2', /missing "\)"/],
    ['"abc', /unterminated string/],
    ['\\nope', /\\nope is not defined/],
    ['le16:65536', /does not fit in 16 bits/],
    ['<(echo hi)', /<\(SCRIPT\) is not supported/],
    ['$pattern', /\$VAR is not supported/],
    ['"abc"[2:9]', /slice \[2:9\] runs past the end of what it applies to \(3 bytes/],
    ['1 2 3[1:2]', /slice \[1:2\] runs past the end of what it applies to \(1 byte: a slice applies to the element just before it/],
    ['(1 2 3)[2:1]', /slice \[2:1\] ends before it starts/],
    ['<no-such-file-here', /ENOENT/],
    ['-1', /negative numbers are not allowed/],
    ['0x', /not a number/],
    ['@9007199254740991 1', /past 2\^53 - 1/],
  ])('rejects %j with a clear message', (expr, message) => {
    expect(() => parseData(expr)).toThrow(DataFormatError);
    expect(() => parseData(expr)).toThrow(message);
  });

  it('<DEVICE[:N] reads only what the slice needs (nbdkit\'s </dev/urandom[:512]*16)', () => {
    const img = image('</dev/urandom[:512]*16');
    expect(img.length).toBe(8192);
    expect(img.subarray(7680).equals(img.subarray(0, 512))).toBe(true);
    expect(new Set(img.subarray(0, 512)).size).toBeGreaterThan(100);
  });

  it('enforces its limits (maxBytes, maxPieces, nesting)', () => {
    expect(() => parseData('</dev/zero', { maxBytes: 1000 })).toThrow(/<\/dev\/zero: the data would hold more than 1000 bytes/);
    expect(() => parseData('('.repeat(5000) + ')'.repeat(5000))).toThrow(/nested deeper than 1000/);
    expect(image('('.repeat(500) + '7' + ')'.repeat(500)).toString('hex')).toBe('07');
    expect(() => parseData('0x55*2000', { maxBytes: 1000 })).toThrow(/more than 1000 bytes/);
    expect(() => parseData('(1 @2)*50', { maxPieces: 10 })).toThrow(/more than 10 pieces/);
  });

  it('dataBackend: size truncates or extends; raw, base64, bytes; exactly one source', async () => {
    expect((await bytes(dataBackend({ data: '1 2 3', size: 2 }), 0, 2)).toString('hex')).toBe('0102');
    expect((await bytes(dataBackend({ data: '1 2 3', size: 5 }), 0, 5)).toString('hex')).toBe('0102030000');
    expect((await bytes(dataBackend({ raw: 'hé' }), 0, 3)).toString()).toBe('hé');
    expect((await bytes(dataBackend({ base64: 'MTIz' }), 0, 3)).toString()).toBe('123');
    expect(dataBackend({ bytes: new Uint8Array([9, 8]) }).size).toBe(2);
    expect(() => dataBackend({ data: '1', raw: 'x' })).toThrow(/exactly one of/);
    expect(() => dataBackend({})).toThrow(/exactly one of/);
    expect(() => dataBackend({ base64: 'not base64!' })).toThrow(/not valid base64/);
  });
});

describe('pattern, null, zero', () => {
  it('pattern: readInto and read give the pattern bytes (each byte of the big-endian word holding its offset), at any offset and length (word edges included)', () => {
    const p = patternBackend({ size: 2 ** 40 + 5 });
    const cases: Array<[number, number]> = [[0, 8], [0, 1], [3, 1], [3, 5], [3, 6], [7, 9], [8, 16], [5, 4096], [2 ** 32 - 3, 20], [2 ** 40 - 13, 18], [2 ** 40 - 1, 6]];
    // 200 more from a fixed seed (replayable): a linear congruential generator.
    let seed = 12345;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 200; i++) cases.push([Math.floor(next() * 2 ** 40), 1 + Math.floor(next() * 70)]);
    for (const [offset, length] of cases) {
      const target = Buffer.alloc(length + 2, 0xee);
      p.readInto!(offset, target.subarray(1, 1 + length));
      // Computed byte by byte, independently of the backend's word filling.
      const want = Buffer.alloc(length);
      for (let i = 0; i < length; i++) {
        const o = offset + i;
        want[i] = Number((BigInt(o - (o % 8)) >> BigInt(8 * (7 - (o % 8)))) & 0xffn);
      }
      expect(target.subarray(1, 1 + length).equals(want), `readInto ${offset}+${length}`).toBe(true);
      expect((p.read(offset, length) as Buffer).equals(want), `read ${offset}+${length}`).toBe(true);
      expect([target[0], target[length + 1]], `${offset}+${length}: no byte outside the target`).toEqual([0xee, 0xee]);
    }
  });

  it('pattern: every 8-byte word is its offset, across the 4 GiB boundary and at unaligned offsets', async () => {
    const p = patternBackend({ size: 2 ** 40 });
    const at = 2 ** 32 - 16;
    const buf = await bytes(p, at, 48);
    for (let i = 0; i < 6; i++) expect(buf.readBigUInt64BE(i * 8)).toBe(BigInt(at + i * 8));
    const odd = await bytes(p, at + 3, 21);
    expect(odd.equals(buf.subarray(3, 24))).toBe(true);
  });

  it('null: holes for reads, one HOLE|ZERO extent, writable unless readOnly; zero: 0 bytes, read-only', async () => {
    const n = nullBackend({ size: 10 * MiB });
    expect(await n.read(5, 100)).toEqual([{ hole: 100 }]);
    expect(await n.extents!(0, 10 * MiB, { reqOne: false, context: 'base:allocation' })).toEqual([{ length: 10 * MiB, flags: 3 }]);
    expect(typeof n.write).toBe('function');
    expect(nullBackend({ readOnly: true }).readOnly).toBe(true);
    expect(nullBackend().size).toBe(0);
    expect(zeroBackend()).toMatchObject({ size: 0, readOnly: true });
    expect(() => patternBackend({ size: -1 })).toThrow(/size must be/);
  });
});

describe('sparse-random', () => {
  const opts = { size: 300 * MiB + 1234, seed: 7, percent: 25, runlength: 64 * 1024 };
  const EXT = { reqOne: false, context: 'base:allocation' } as const;

  it('reads the same bytes however a read is split, and across segment boundaries (64 MiB)', async () => {
    const a = sparseRandomBackend(opts);
    const b = sparseRandomBackend({ ...opts, cacheSegments: 1 });
    const start = 64 * MiB - 3 * MiB - 5;
    const whole = await bytes(a, start, 6 * MiB);
    const pieces = Buffer.concat([await bytes(b, start, 1234567), await bytes(b, start + 1234567, 6 * MiB - 1234567)]);
    expect(pieces.equals(whole)).toBe(true);
    const tail = await bytes(a, opts.size - 5000, 5000);
    expect(tail.length).toBe(5000);
  });

  it('extents agree with reads: holes are zero, data blocks a non-zero byte; runs are whole blocks', async () => {
    const s = sparseRandomBackend(opts);
    const ex = await s.extents!(0, 128 * MiB, EXT);
    let at = 0;
    let data = 0;
    for (const e of ex) {
      expect(at % SPARSE_BLOCK).toBe(0);
      const head = await bytes(s, at, Math.min(e.length, SPARSE_BLOCK));
      if (e.flags === 3) expect(head.every((x) => x === 0)).toBe(true);
      else {
        expect(e.flags).toBe(0);
        expect(head[0]).not.toBe(0);
        expect(head.every((x) => x === head[0])).toBe(true);
        data += e.length;
      }
      at += e.length;
    }
    expect(at).toBe(128 * MiB);
    expect(data / at).toBeGreaterThan(0.15);
    expect(data / at).toBeLessThan(0.35);
  });

  it('percent=0 is all hole, percent=100 all data; random-content makes every byte random', async () => {
    expect(await sparseRandomBackend({ size: 100 * MiB, percent: 0 }).extents!(0, 100 * MiB, EXT)).toEqual([{ length: 100 * MiB, flags: 3 }]);
    expect(await sparseRandomBackend({ size: 100 * MiB, percent: 100 }).extents!(0, 100 * MiB, EXT)).toEqual([{ length: 100 * MiB, flags: 0 }]);
    const r = await bytes(sparseRandomBackend({ size: MiB, percent: 100, randomContent: true, seed: 1 }), 0, SPARSE_BLOCK);
    expect(new Set(r).size).toBeGreaterThan(200);
  });

  it('is the same in another process for the same seed', async () => {
    const script = `import('./dist/index.js').then(async (m) => { const b = m.sparseRandomBackend(${JSON.stringify(opts)}); const r = await b.read(0, 96 * 1048576); const h = require('crypto').createHash('sha256'); for (const s of r) h.update('data' in s ? s.data : Buffer.alloc(s.hole)); console.log(h.digest('hex')); })`;
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { cwd: new URL('../../../', import.meta.url).pathname });
    const h = crypto.createHash('sha256').update(await bytes(sparseRandomBackend(opts), 0, 96 * MiB));
    expect(stdout.trim()).toBe(h.digest('hex'));
  });

  it('refuses mismatching writes and zeroing data with EIO and one log line each', async () => {
    const lines: string[] = [];
    const s = sparseRandomBackend({ ...opts, logger: { ...quiet, warn: (m) => lines.push(m) } });
    const ex = await s.extents!(0, 64 * MiB, EXT);
    const dataAt = ex.slice(0, ex.findIndex((e) => e.flags === 0)).reduce((n, e) => n + e.length, 0);
    const same = await bytes(s, dataAt, 4096);
    expect(() => s.write!(dataAt, same, { fua: false })).not.toThrow();
    expect(() => s.write!(dataAt, Buffer.alloc(4096), { fua: false })).toThrow(expect.objectContaining({ errno: 5 }));
    expect(() => s.zero!(dataAt, 512, { fua: false, noHole: false, fastZero: false })).toThrow(/only holes may be zeroed/);
    expect(lines).toHaveLength(2);
    expect(() => sparseRandomBackend({ size: 1, percent: 101 })).toThrow(/percent/);
  });
});

describe('plugins', () => {
  const ctx = { logger: quiet, readOnly: false };
  const make = async (name: string, args: string[], c = ctx) => {
    const plugin = await backendPlugin(name);
    return plugin.create(readParams(name, plugin.params, args, plugin.magic), c);
  };

  it('take nbdkit keys, with the magic key (size / data) bare', async () => {
    expect((await make('null', ['1M'])).size).toBe(MiB);
    expect((await make('pattern', ['size=4k'])).size).toBe(4096);
    expect((await make('zero', [])).size).toBe(0);
    expect((await make('data', ['1 2 3', 'size=1k'])).size).toBe(1024);
    const s = await make('sparse-random', ['1G', 'seed=5', 'percent=50', 'runlength=1M', 'random-content=true']);
    expect(s.size).toBe(2 ** 30);
    expect((await make('null', ['1M'], { ...ctx, readOnly: true })).readOnly).toBe(true);
    expect((await make('sparse-random', ['1M'], { ...ctx, readOnly: true })).readOnly).toBe(true);
  });

  it('turn bad values into ParamError with the reason', async () => {
    await expect(make('data', ['256'])).rejects.toThrow(ParamError);
    await expect(make('data', ['256'])).rejects.toThrow(/range 0..255/);
    await expect(make('data', ['data=1', 'raw=x'])).rejects.toThrow(/exactly one of/);
    await expect(make('data', ['0x55*2000', 'data-max=1k'])).rejects.toThrow(/more than 1024 bytes/);
    await expect(make('sparse-random', ['1M', 'percent=120'])).rejects.toThrow(ParamError);
    await expect(make('pattern', [])).rejects.toThrow(/size=… is required/);
    await expect(make('zero', ['size=1'])).rejects.toThrow(/unknown parameter/);
  });
});
