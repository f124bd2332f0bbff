/**
 * The operational filters' value parsers and engines without a socket:
 * nbdkit's durations, bit rates, probabilities and errno names; the error
 * injector's fall-backs and range; the token bucket's debt.
 */
import { describe, expect, it } from 'vitest';
import { parseBitRate, parseDuration, parseErrno, parseProbability, seededRandom } from '../../../src/filters/ops-common.js';
import { ErrorInjector, memoryBackend, TokenBucket } from '../../../src/index.js';
import { readParams } from '../../../src/plugins/params.js';
import { FILTERS } from '../../../src/plugins/registry.js';

describe('parsers', () => {
  it('durations: SECS (fractions too) or NNms, in milliseconds', () => {
    expect(parseDuration('2')).toBe(2000);
    expect(parseDuration('0.25')).toBe(250);
    expect(parseDuration('150ms')).toBe(150);
    expect(() => parseDuration('-1')).toThrow(RangeError);
    expect(() => parseDuration('1h')).toThrow(/cannot parse duration/);
  });

  it('bit rates: a number with K/M/G/T as powers of 1024', () => {
    expect(parseBitRate('8000')).toBe(8000);
    expect(parseBitRate('512K')).toBe(512 * 1024);
    expect(parseBitRate('8M')).toBe(8 * 1024 ** 2);
    expect(parseBitRate('1g')).toBe(1024 ** 3);
    expect(() => parseBitRate('0')).toThrow(/more than 0/);
    expect(() => parseBitRate('fast')).toThrow(/cannot parse rate/);
  });

  it('probabilities: N% or 0..1', () => {
    expect(parseProbability('10%')).toBeCloseTo(0.1);
    expect(parseProbability('0.5')).toBe(0.5);
    expect(parseProbability('100%')).toBe(1);
    expect(() => parseProbability('2')).toThrow(/between 0 and 1/);
    expect(() => parseProbability('%')).toThrow(/cannot parse/);
  });

  it('errno names: the NBD set, with or without NBD_, any case', () => {
    expect(parseErrno('enospc')).toBe('ENOSPC');
    expect(parseErrno('NBD_EPERM')).toBe('EPERM');
    expect(() => parseErrno('EAGAIN')).toThrow(/unknown errno "EAGAIN"/);
  });

  it('seeded random: the same seed, the same sequence; another seed, another', () => {
    const a = seededRandom(7);
    const b = seededRandom(7);
    const c = seededRandom(8);
    const sa = Array.from({ length: 5 }, a);
    expect(Array.from({ length: 5 }, b)).toEqual(sa);
    expect(Array.from({ length: 5 }, c)).not.toEqual(sa);
    for (const x of sa) expect(x >= 0 && x < 1).toBe(true);
  });
});

describe('ErrorInjector', () => {
  it('per-operation rules fall back field by field to the general one', () => {
    const inj = new ErrorInjector({ error: 'ENOSPC', write: { rate: 1 }, trim: { rate: 1, error: 'EPERM' } });
    expect(inj.decide({ op: 'write', offset: 0, count: 1 })).toBe('ENOSPC');
    expect(inj.decide({ op: 'trim', offset: 0, count: 1 })).toBe('EPERM');
    expect(inj.decide({ op: 'read', offset: 0, count: 1 })).toBeUndefined();
    expect(inj.injected).toMatchObject({ write: 1, trim: 1, read: 0 });
  });

  it('a range: requests overlapping it only; an open-ended range runs to the end', () => {
    const inj = new ErrorInjector({ rate: 1, offset: 100 });
    expect(inj.decide({ op: 'read', offset: 0, count: 100 })).toBeUndefined();
    expect(inj.decide({ op: 'read', offset: 0, count: 101 })).toBe('EIO');
    expect(inj.decide({ op: 'read', offset: 1e12, count: 1 })).toBe('EIO');
    expect(inj.decide({ op: 'flush', offset: 0, count: 0 })).toBeUndefined();
  });

  it('refuses rates outside 0..1', () => {
    expect(() => new ErrorInjector({ rate: 2 })).toThrow(RangeError);
    expect(() => new ErrorInjector({ read: { rate: -0.1 } })).toThrow(RangeError);
  });
});

describe('TokenBucket', () => {
  it('a request waits its bits / rate less at most the burst; the next queues behind the debt; unlimited never waits', () => {
    const b = new TokenBucket(8000, 2);
    // 100 s worth of bits; the bucket holds at most 2 s of tokens, however long it sat idle.
    const wait = b.take(800_000);
    expect(wait).toBeGreaterThanOrEqual(98_000);
    expect(wait).toBeLessThanOrEqual(100_000);
    // The next request queues behind the debt.
    expect(b.take(8000)).toBeGreaterThan(wait);
    expect(new TokenBucket(undefined, 2).take(1e12)).toBe(0);
  });

  it("starts full, as nbdkit's buckets: the first burstiness seconds' worth go at once, the next bits wait", () => {
    const b = new TokenBucket(8000, 2);
    expect(b.take(16_000)).toBe(0);
    const wait = b.take(8000);
    expect(wait).toBeGreaterThan(900);
    expect(wait).toBeLessThanOrEqual(1000);
  });
});

describe('TokenBucket with a rate file', () => {
  it('takes its rate from the file at the first request; without the file, the rate it had (here none)', async () => {
    const fs = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rate-'));
    const file = path.join(dir, 'rate');
    fs.writeFileSync(file, '8K\n');
    const b = new TokenBucket(undefined, 2, file);
    // 100 s at 8 Kibit/s, less at most the 2 s burst.
    const wait = b.take(100 * 8192);
    expect(wait).toBeGreaterThanOrEqual(98_000);
    expect(new TokenBucket(undefined, 2, path.join(dir, 'absent')).take(1e9)).toBe(0);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('filter plugins', () => {
  it('every operational filter is registered, and its parameters are nbdkit keys', async () => {
    const names = ['delay', 'error', 'log', 'rate', 'retry', 'stats'];
    for (const n of names) expect((await FILTERS[n]!()).name).toBe(n);
    const keys = async (n: string) => (await FILTERS[n]!()).params.map((p) => p.name);
    expect(await keys('delay')).toEqual(expect.arrayContaining(['rdelay', 'wdelay', 'delay-read', 'delay-write', 'delay-zero', 'delay-trim', 'delay-extents', 'delay-cache', 'delay-fast-zero']));
    expect(await keys('error')).toEqual(expect.arrayContaining(['error', 'error-rate', 'error-file', 'error-pread', 'error-pwrite-rate', 'error-trim-file', 'error-extents', 'error-cache-rate', 'error-flush']));
    expect(await keys('log')).toEqual(['logfile', 'logappend']);
    expect(await keys('stats')).toEqual(expect.arrayContaining(['statsfile', 'statsappend']));
    expect(await keys('rate')).toEqual(expect.arrayContaining(['rate', 'connection-rate', 'rate-file', 'connection-rate-file', 'burstiness']));
    expect(await keys('retry')).toEqual(['retries', 'retry-delay', 'retry-exponential', 'retry-readonly']);
  });

  it('a missing required key or an unknown one is a ParamError', async () => {
    const stats = await FILTERS.stats!();
    expect(() => readParams('stats', stats.params, [])).toThrow(/statsfile=… is required/);
    // The log filter without logfile= is inactive, as nbdkit's: the backend below is used as it is.
    const log = await FILTERS.log!();
    const inactive = await log.create(readParams('log', log.params, []), { logger: { warn() {}, error() {} } } as never);
    const below = memoryBackend({ size: 4096 });
    expect(inactive.wrap(below, {} as never)).toBe(below);
    const retry = await FILTERS.retry!();
    expect(() => readParams('retry', retry.params, ['retry-count=3'])).toThrow(/unknown parameter "retry-count"/);
  });
});

describe('LogWriter', () => {
  it('a failing write is one error line and logging stops; the caller is not failed', async () => {
    const { LogWriter } = await import('../../../src/index.js');
    const lines: string[] = [];
    // /dev/full: every write fails with ENOSPC.
    const w = new LogWriter({ file: '/dev/full', append: true, logger: { warn: (m) => lines.push(m), error: (m) => lines.push(m) } });
    const r = w.around(1, { op: 'read', offset: 0, count: 512 }, () => 42);
    expect(r).toBe(42);
    w.line(1, 'more');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/log filter: cannot write \/dev\/full: ENOSPC.*logging stops/);
  });
});
