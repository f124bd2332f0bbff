/**
 * createServer's option checks that are neither limits nor exports, the guards around a
 * caller's logger and inspect hook, and the repairs applied to what a request handler answers
 * (an outside-in audit of the library API found each of these accepted or crashing).
 */
import { describe, expect, it, vi } from 'vitest';
import { createServer, memoryBackend, normalizeExtents } from '../../../src/index.js';
import { safeInspect, safeLogger } from '../../../src/api/server-options.js';
import { toErrno } from '../../../src/api/request.js';
import { configError } from '../../helpers/config-error.js';

const flags = { fua: false, noHole: false, df: false, reqOne: false, fastZero: false };
const exp = () => [{ name: '', backend: memoryBackend({ size: 4096 }) }];


describe('createServer option checks', () => {
  it('a TLS mode that is not off, on or require is refused, never served in plaintext', () => {
    expect(configError(() => createServer({ exports: exp(), tls: { mode: 'required' as never, psk: new Map() } })).message).toBe('tls.mode: expected "off", "on" or "require", got "required"');
    expect(configError(() => createServer({ exports: exp(), tls: {} as never })).message).toBe('tls.mode: expected "off", "on" or "require", got undefined');
  });

  it('TLS without credentials, with a credential file that cannot be read, or with one OpenSSL cannot use: NBD_ERR_CONFIG naming it', () => {
    expect(configError(() => createServer({ exports: exp(), tls: { mode: 'on' } })).message).toMatch(/^TLS needs a certificate and key \(tls.cert \/ tls.key/);
    expect(configError(() => createServer({ exports: exp(), tls: { mode: 'on', cert: '/nonexistent/cert.pem', key: '/nonexistent/key.pem' } })).message).toMatch(/^tls.cert: cannot read "\/nonexistent\/cert.pem": ENOENT/);
    expect(configError(() => createServer({ exports: exp(), tls: { mode: 'on', psk: '/nonexistent/keys.psk' } })).message).toMatch(/^tls.psk: cannot read "\/nonexistent\/keys.psk": ENOENT/);
    const notPem = '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n';
    expect(configError(() => createServer({ exports: exp(), tls: { mode: 'on', cert: notPem, key: notPem } })).message).toMatch(/^TLS: the certificate, key or CA cannot be used: /);
  });

  it('a logger without warn and error, a backend without read, exports that are not objects, flags that are not booleans', () => {
    expect(configError(() => createServer({ exports: exp(), logger: {} as never })).message).toMatch(/^logger: expected an object with warn\(message\) and error\(message\)/);
    expect(configError(() => createServer({ exports: [{ name: '', backend: { size: 512 } as never }] })).message).toBe('exports[0].backend: read(offset, length) is required');
    expect(configError(() => createServer({ exports: [null as never] })).message).toBe('exports[0]: expected an export object, got null');
    expect(configError(() => createServer({ exports: [{ name: '', size: 512, flags: { write: 'no' as never } }] })).message).toBe('exports[0].flags.write: expected true or false, got "no"');
    expect(configError(() => createServer(undefined as never)).message).toBe('createServer: expected an options object, got undefined');
    expect(configError(() => createServer({ exports: exp(), inspect: 3 as never })).message).toMatch(/^inspect: expected a function or an observer/);
  });
});

describe("guards around the caller's logger and inspect hook", () => {
  it('a logger that throws never throws into the server; its first failure is said once on stderr', () => {
    const write = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const seen: string[] = [];
      const logger = safeLogger({ warn: (m) => (seen.push(m), undefined), error: () => { throw new Error('disk full'); } });
      logger.warn('a');
      expect(() => logger.error('b')).not.toThrow();
      expect(() => logger.error('c')).not.toThrow();
      expect(seen).toEqual(['a']);
      expect(write.mock.calls.map((c) => String(c[0]))).toEqual(['nbd-engine: the logger threw (Error: disk full); its messages are dropped when it does\n']);
    } finally {
      write.mockRestore();
    }
  });

  it('an inspect hook that throws is logged once and the event goes nowhere; an observer works as a function', () => {
    const errors: string[] = [];
    const hook = safeInspect(() => { throw new Error('bug'); }, { warn: () => {}, error: (m) => errors.push(m) });
    expect(() => hook({ type: '@xstate.event' } as never)).not.toThrow();
    hook({ type: '@xstate.event' } as never);
    expect(errors).toEqual(['the inspect hook threw (Error: bug); the server goes on, the hook\'s later failures are not logged']);
    const got: string[] = [];
    safeInspect({ next: (e) => got.push(e.type) }, { warn: () => {}, error: () => {} })({ type: '@xstate.snapshot' } as never);
    expect(got).toEqual(['@xstate.snapshot']);
  });
});

describe('what a request handler answers, made valid', () => {
  it('an errno the spec does not define goes out as EIO', () => {
    expect(toErrno(12345 as never, flags)).toBe(5);
    expect(toErrno(0 as never, flags)).toBe(5);
    expect(toErrno('EBOGUS' as never, flags)).toBe(5);
    expect(toErrno(28 as never, flags)).toBe(28);
  });

  it('extents that are not an array, negative, fractional or empty become a valid list inside the request', () => {
    expect(normalizeExtents('garbage' as never, 4096, false)).toEqual([{ length: 4096, flags: 0 }]);
    expect(normalizeExtents([{ length: -1, flags: 0 }, { length: 0, flags: 3 }, { length: 1000.5, flags: 3 }, { length: 2 ** 40, flags: 2 ** 40 }], 4096, false)).toEqual([
      { length: 1000, flags: 3 },
      { length: 3096, flags: 0 },
    ]);
    expect(normalizeExtents([], 4096, true)).toEqual([{ length: 4096, flags: 0 }]);
  });
});

describe('export descriptions', () => {
  it('over 4096 bytes or with a NUL are refused (the server never sends a longer string; libnbd refuses the reply)', () => {
    expect(configError(() => createServer({ exports: [{ name: '', description: 'x'.repeat(4097), backend: memoryBackend({ size: 512 }) }] })).message).toBe('export "": description must be a string of at most 4096 bytes without NUL');
    expect(() => createServer({ exports: [{ name: '', description: 'x'.repeat(4096), backend: memoryBackend({ size: 512 }) }] })).not.toThrow();
  });
});
