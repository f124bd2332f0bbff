import { describe, expect, it } from 'vitest';
import { fail, formatResult, notAdvertised, pass, runChecks, summary, type Check } from '../../../src/probe/runner.js';
import { parseNbdUri } from '../../../src/probe/uri.js';

describe('probe runner', () => {
  it('runs every check in order: a hung one fails at its timeout and is aborted, a throwing one fails, writers are skipped read-only', async () => {
    let aborted = false;
    const checks: Check<{ n: number }>[] = [
      { rule: 'a.one-rule', title: 'passes', run: async (ctx) => pass(`n=${ctx.n}`) },
      {
        rule: 'a.hung-rule',
        title: 'never answers',
        run: (_ctx, signal) =>
          new Promise(() => {
            signal.addEventListener('abort', () => (aborted = true));
          }),
      },
      { rule: 'a.throw-rule', title: 'throws', run: async () => { throw new Error('socket closed'); } },
      { rule: 'a.write-rule', title: 'writes', writes: true, run: async () => fail('should not run') },
      { rule: 'a.absent-rule', title: 'not offered', run: async () => notAdvertised('no TRIM') },
    ];
    const seen: string[] = [];
    const results = await runChecks(checks, { n: 3 }, { timeoutMs: 100, readOnly: true, onResult: (r) => seen.push(r.rule) });
    expect(seen).toEqual(checks.map((c) => c.rule));
    expect(results.map((r) => r.status)).toEqual(['PASS', 'FAIL', 'FAIL', 'SKIPPED', 'NOT ADVERTISED']);
    expect(results[0]!.detail).toBe('n=3');
    expect(results[1]!.detail).toBe('no answer within 100 ms');
    expect(aborted).toBe(true);
    expect(results[2]!.detail).toBe('the check could not complete: socket closed');
    expect(summary(results)).toEqual({ PASS: 1, FAIL: 2, 'NOT ADVERTISED': 1, SKIPPED: 1 });
    expect(formatResult({ ...results[2]!, evidence: '0011' })).toMatch(/^FAIL +a\.throw-rule +throws: the check could not complete: socket closed — evidence: 0011$/);
  });
});

describe('NBD URIs', () => {
  it('reads the forms libnbd reads', () => {
    expect(parseNbdUri('nbd://example.com/disk')).toEqual({ transport: 'tcp', host: 'example.com', port: 10809, exportName: 'disk', tls: false, tlsCertificates: undefined, tlsPskFile: undefined, tlsUsername: undefined });
    expect(() => parseNbdUri('nbd://127.0.0.1:0/')).toThrow(/bad port/);
    expect(parseNbdUri('nbds://[::1]:10900/')).toMatchObject({ transport: 'tcp', host: '::1', port: 10900, exportName: '', tls: true });
    expect(parseNbdUri('nbd+unix:///my%20disk?socket=/tmp/x.sock')).toMatchObject({ transport: 'unix', path: '/tmp/x.sock', exportName: 'my disk', tls: false });
    expect(parseNbdUri('nbds+unix://alice@/?socket=/s&tls-psk-file=/k.psk')).toMatchObject({ transport: 'unix', tls: true, tlsPskFile: '/k.psk', tlsUsername: 'alice' });
    expect(parseNbdUri('nbds://h/?tls-certificates=/pki')).toMatchObject({ tlsCertificates: '/pki' });
  });

  it('says what is wrong with a bad one', () => {
    expect(() => parseNbdUri('disk.img')).toThrow(/not a URI/);
    expect(() => parseNbdUri('http://h/')).toThrow(/unsupported scheme "http"/);
    expect(() => parseNbdUri('nbd+unix:///disk')).toThrow(/socket=PATH/);
    expect(() => parseNbdUri('nbd+unix://host/?socket=/s')).toThrow(/no host/);
    expect(() => parseNbdUri('nbd://h/%zz')).toThrow(/percent-encoding/);
  });
});
