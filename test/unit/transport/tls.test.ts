/**
 * The TLS configuration edge: psktool files and upgrader validation.
 * The STARTTLS upgrade itself is exercised in test/integration/tls*.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { NbdError } from '../../../src/api/errors.js';
import { createTlsUpgrader, parsePskFile } from '../../../src/transport/tls.js';

describe('parsePskFile (psktool format)', () => {
  it('reads username:hexkey lines, skipping blanks and comments', () => {
    const keys = parsePskFile('# made by psktool\nalice:00ff10\n\r\nbob:DEADBEEF\r\n');
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('alice')).toEqual(Buffer.from([0x00, 0xff, 0x10]));
    expect(keys.get('bob')).toEqual(Buffer.from('deadbeef', 'hex'));
  });

  it('reads it as GnuTLS (nbdkit --tls-psk) does: the identity ends at the first colon, the first line for an identity wins', () => {
    expect(() => parsePskFile('a:b:0102')).toThrow(/line 1: the key for "a" is not an even number of hex digits/);
    const keys = parsePskFile('alice:0102\nalice:0304\n');
    expect(keys.get('alice')).toEqual(Buffer.from([1, 2]));
  });

  it.each([
    ['', /no keys/],
    ['alice', /line 1: expected "identity:hexkey"/],
    ['\n:0102', /line 2: expected "identity:hexkey"/],
    ['alice:xyz', /not an even number of hex digits/],
    ['alice:012', /not an even number of hex digits/],
    [`alice:${'ab'.repeat(513)}`, /line 1: the key for "alice" has 513 bytes, more than 512/],
  ])('rejects %j with NBD_ERR_CONFIG, never quoting key material', (text, message) => {
    expect(() => parsePskFile(text)).toThrow(message);
    try {
      parsePskFile(text);
    } catch (err) {
      expect((err as { code?: string }).code).toBe('NBD_ERR_CONFIG');
      expect((err as Error).message).not.toMatch(/0102|abab|xyz|012/);
    }
  });
});

describe('createTlsUpgrader', () => {
  it('needs a certificate and key, or PSK keys', () => {
    expect(() => createTlsUpgrader({ mode: 'require' })).toThrow(/certificate and key|PSK/);
  });

  it('accepts PSK keys alone', () => {
    expect(typeof createTlsUpgrader({ mode: 'require', psk: new Map([['alice', Buffer.alloc(32, 1)]]) })).toBe('function');
  });

  it('verifyPeer with a certificate but no CA is a configuration error (not the system CAs)', () => {
    const cfg = { mode: 'require', cert: '-----BEGIN CERTIFICATE-----', key: '-----BEGIN PRIVATE KEY-----', verifyPeer: true } as const;
    expect(() => createTlsUpgrader(cfg)).toThrow(NbdError);
    expect(() => createTlsUpgrader(cfg)).toThrow(expect.objectContaining({ code: 'NBD_ERR_CONFIG', message: expect.stringMatching(/needs tls\.ca/) }));
  });

  it('verifyPeer with PSK keys alone needs no CA (the key authenticates the client)', () => {
    expect(typeof createTlsUpgrader({ mode: 'require', verifyPeer: true, psk: new Map([['alice', Buffer.alloc(32, 1)]]) })).toBe('function');
  });
});
