/**
 * createServer({ limits }) refuses a limit that is not a number in its
 * range, naming the limit (NBD_ERR_CONFIG), and listen() refuses a bad port.
 * Before this check, maxInFlight: NaN gave a server that never answered.
 */
import { describe, expect, it } from 'vitest';
import { createServer, memoryBackend, NbdError, type ServerLimits } from '../../../src/index.js';
import { LIMIT_RANGES, validateLimits, type LimitName } from '../../../src/api/limits.js';
import { silentLogger } from '../../../src/transport/logger.js';
import { configError } from '../../helpers/config-error.js';

const serverWith = (limits: unknown) =>
  createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }) }], logger: silentLogger, limits: limits as ServerLimits });


const NAMES = Object.keys(LIMIT_RANGES) as LimitName[];

describe('validateLimits: every limit, every kind of bad value', () => {
  const bad: Array<[string, unknown]> = [
    ['NaN', NaN],
    ['a fraction', 1.5],
    ['negative', -5],
    ['1e20 (not a safe integer)', 1e20],
    ['Infinity', Infinity],
    ['a string', '64'],
    ['null', null],
    ['a boolean', true],
  ];
  for (const name of NAMES) {
    for (const [what, value] of bad) {
      it(`${name}: ${what} is refused, naming ${name}`, () => {
        const err = configError(() => serverWith({ [name]: value }));
        expect(err.message).toMatch(new RegExp(`^${name}: expected `));
      });
    }
  }

  for (const name of NAMES) {
    const r = LIMIT_RANGES[name];
    if (r.min > 0) {
      it(`${name}: 0 and min − 1 are refused, min is accepted`, () => {
        expect(configError(() => serverWith({ [name]: 0 })).message).toMatch(new RegExp(`^${name}: `));
        if (r.min - 1 !== 0) expect(configError(() => serverWith({ [name]: r.min - 1 })).message).toMatch(new RegExp(`^${name}: `));
        // maxBufferedBytes must also hold the largest payload: give a payload that fits. (validateLimits
        // alone: the smallest maxPayload is below the export's default preferred block size.)
        // The skip limits must be at least what they skip past: give the smallest of those.
        const extra =
          name === 'maxBufferedBytes' ? { maxPayload: 512, maxOptionLength: 256 } : name === 'maxOptionSkip' ? { maxOptionLength: 256 } : name === 'maxPayloadSkip' ? { maxPayload: 512 } : {};
        expect(() => validateLimits({ ...extra, [name]: r.min })).not.toThrow();
      });
    } else {
      it(`${name}: 0 (off) is accepted`, () => {
        expect(() => serverWith({ [name]: 0 })).not.toThrow();
      });
    }
    it(`${name}: the maximum is accepted, one more is refused`, () => {
      expect(() => validateLimits({ [name]: r.max })).not.toThrow();
      expect(configError(() => validateLimits({ [name]: r.max + 1 })).message).toMatch(new RegExp(`^${name}: `));
    });
  }

  it('an unknown or misspelled limit is refused, naming it (before: silently ignored, the default in force)', () => {
    expect(configError(() => serverWith({ maxInflight: 8 })).message).toMatch(/^limits: unknown limit "maxInflight" \(did you mean maxInFlight\?\); the limits are maxInFlight, /);
    expect(configError(() => serverWith({ bogusLimit: 5 })).message).toMatch(/^limits: unknown limit "bogusLimit"; the limits are /);
    expect(() => serverWith({ maxInFlight: 8 })).not.toThrow();
  });

  it('the brief example: maxInFlight: NaN', () => {
    expect(configError(() => serverWith({ maxInFlight: NaN })).message).toBe('maxInFlight: expected an integer from 1 to 1048576, got NaN');
  });

  it('timeouts are whole milliseconds up to the largest Node timer', () => {
    expect(configError(() => serverWith({ handshakeTimeout: 2.5 })).message).toMatch(/^handshakeTimeout: expected milliseconds/);
    expect(configError(() => serverWith({ idleTimeout: 2 ** 31 })).message).toMatch(/^idleTimeout: .*2147483647/);
    expect(() => serverWith({ handshakeTimeout: 2 ** 31 - 1, idleTimeout: 1 })).not.toThrow();
  });

  it('maxBufferedBytes must hold the largest WRITE (maxPayload + header) and the largest option', () => {
    expect(configError(() => serverWith({ maxBufferedBytes: 1 << 20 })).message).toMatch(/^maxBufferedBytes: must be at least maxPayload \(67108864\) \+ 32/);
    expect(configError(() => serverWith({ maxPayload: 1 << 20, maxBufferedBytes: 1 << 20 })).message).toMatch(/^maxBufferedBytes: /);
    expect(() => serverWith({ maxPayload: 1 << 20, maxBufferedBytes: (1 << 20) + 32 })).not.toThrow();
    expect(configError(() => validateLimits({ maxPayload: 512, maxOptionLength: 4096, maxBufferedBytes: 1024 })).message).toMatch(/maxOptionLength \(4096\) \+ 16/);
  });

  it('a skip limit below what it skips past is refused (it would drop connections meant to be answered)', () => {
    expect(configError(() => serverWith({ maxPayloadSkip: 1 << 20 })).message).toBe('maxPayloadSkip: must be at least maxPayload (67108864), got 1048576');
    expect(configError(() => serverWith({ maxOptionLength: 4096, maxOptionSkip: 1024 })).message).toBe('maxOptionSkip: must be at least maxOptionLength (4096), got 1024');
    expect(() => serverWith({ maxPayload: 1 << 20, maxBufferedBytes: (1 << 20) + 32, maxPayloadSkip: 1 << 20 })).not.toThrow();
  });

  it('limits that are not an object are refused', () => {
    expect(configError(() => serverWith('fast')).message).toMatch(/^limits: expected an object/);
    expect(configError(() => serverWith(null)).message).toMatch(/^limits: /);
  });

  it('the defaults, unset limits and every limit at a sensible value pass', () => {
    expect(() => serverWith(undefined)).not.toThrow();
    expect(() => serverWith({})).not.toThrow();
    expect(() => serverWith({ maxInFlight: undefined })).not.toThrow();
    expect(() =>
      serverWith({
        maxInFlight: 8,
        maxInFlightBytes: 16 << 20,
        maxPayload: 1 << 20,
        maxOptionLength: 4096,
        maxOptions: 16,
        maxBufferedBytes: 2 << 20,
        maxConnections: 10,
        handshakeTimeout: 5000,
        idleTimeout: 60_000,
      }),
    ).not.toThrow();
  });
});

describe('listen() refuses a malformed target', () => {
  const cases: Array<[string, object, RegExp]> = [
    ['port NaN', { port: NaN }, /^listen: port: expected an integer from 0 to 65535, got NaN/],
    ['port 1.5', { port: 1.5 }, /^listen: port: /],
    ['port 65536', { port: 65536 }, /^listen: port: /],
    ['port -1', { port: -1 }, /^listen: port: /],
    ['fd -1', { fd: -1 }, /^listen: fd: /],
    ['empty path', { path: '' }, /^listen: path: /],
  ];
  for (const [what, target, message] of cases) {
    it(what, async () => {
      const server = serverWith(undefined);
      try {
        const err = await server.listen(target as never).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(NbdError);
        expect((err as NbdError).code).toBe('NBD_ERR_CONFIG');
        expect((err as Error).message).toMatch(message);
      } finally {
        await server.close({ timeout: 0 });
      }
    });
  }
});

describe('maxPayload below the preferred block size', () => {
  type Described = { handshakeInput: { exports: Array<{ blockSizes: { minimum: number; preferred: number; maximum: number } }> } };
  // What the handshake advertises (INFO_BLOCK_SIZE), as the server described the export.
  const descriptor = (srv: ReturnType<typeof createServer>) => (srv as unknown as Described).handshakeInput.exports[0]!;
  it('every maxPayload in range serves the built-in backends: the preferred size comes down to the largest power of 2 within it', () => {
    for (const [maxPayload, preferred] of [[512, 512], [1000, 512], [4095, 2048], [4096, 4096], [1 << 20, 4096]] as const) {
      const bs = descriptor(serverWith({ maxPayload })).blockSizes;
      expect(bs, `maxPayload ${maxPayload}`).toEqual({ minimum: 1, preferred, maximum: Math.min(maxPayload, 32 << 20) });
    }
  });
  it('a preferred size the export sets itself is kept, and refused when above maxPayload', () => {
    const make = (maxPayload: number) =>
      createServer({ exports: [{ name: '', backend: memoryBackend({ size: 1 << 20 }), blockSizes: { preferred: 4096 } }], logger: silentLogger, limits: { maxPayload } });
    expect(descriptor(make(8192)).blockSizes.preferred).toBe(4096);
    const err = configError(() => make(1024));
    expect(err).toBeInstanceOf(NbdError);
    expect(err.message).toMatch(/maximum payload \(1024, maxPayload 1024\) must be ≥ the preferred block size \(4096\)/);
  });
});

describe('option.block-size-constraints: the maximum block size is a multiple of the minimum', () => {
  type Described = { handshakeInput: { exports: Array<{ blockSizes: { minimum: number; preferred: number; maximum: number } }> } };
  const descriptor = (srv: ReturnType<typeof createServer>) => (srv as unknown as Described).handshakeInput.exports[0]!;
  const make = (blockSizes: { minimum?: number; preferred?: number; maximum?: number }, maxPayload?: number, backendBlockSizes?: { minimum?: number; maximum?: number }) =>
    createServer({
      exports: [{ name: '', backend: { ...memoryBackend({ size: 1 << 20 }), ...(backendBlockSizes ? { blockSizes: backendBlockSizes } : {}) }, blockSizes }],
      logger: silentLogger,
      limits: maxPayload === undefined ? undefined : { maxPayload },
    });

  it('a maximum lowered to maxPayload is rounded down to a multiple of the minimum (minimum 512, maxPayload 1000000 → 999936)', () => {
    expect(descriptor(make({ minimum: 512 }, 1_000_000)).blockSizes).toEqual({ minimum: 512, preferred: 4096, maximum: 999_936 });
    expect(descriptor(make({ minimum: 4096 }, 5000)).blockSizes).toEqual({ minimum: 4096, preferred: 4096, maximum: 4096 });
    // A multiple already, or no larger than maxPayload: as set.
    expect(descriptor(make({ minimum: 512, maximum: 1 << 20 }, 4 << 20)).blockSizes.maximum).toBe(1 << 20);
    expect(descriptor(make({ minimum: 512 })).blockSizes.maximum).toBe(32 << 20);
  });

  it('a maximum the export or its backend sets that is not a multiple of the minimum is refused (NBD_ERR_CONFIG); 0xffffffff is allowed', () => {
    for (const build of [() => make({ minimum: 512, maximum: 1_000_000 }), () => make({}, undefined, { minimum: 512, maximum: 1_000_000 })]) {
      const err = configError(build);
      expect(err).toBeInstanceOf(NbdError);
      expect(err.message).toMatch(/maximum block size \(1000000\) must be a multiple of the minimum block size \(512\), or 0xffffffff/);
    }
    expect(descriptor(make({ minimum: 512, maximum: 0xffffffff }, 1_000_000)).blockSizes.maximum).toBe(999_936);
  });
});
