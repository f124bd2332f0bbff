/**
 * Numeric options of the nbd-engine command: a bad value is ONE line on
 * stderr naming the option, exit status 2 (never a NaN limit and a server
 * that never answers, never parseArgs' "ambiguous" for a negative number,
 * never the whole usage); a good value gives a server nbdinfo can use.
 */
import { describe, expect, it } from 'vitest';
import { cliToEnd, requireTool } from './harness.js';

/** A server that took a bad value starts and waits for ever: cliToEnd kills it at 30 s, which fails the test. */
const cli = (args: string[]) => cliToEnd(args, 30_000);


/** Every numeric option, with values it must refuse and values it must take. */
const OPTIONS: Array<{ flag: string; bad: string[]; good: string[] }> = [
  { flag: '--port', bad: ['abc', '-5', '1.5', '1e20', '', '65536', '0x50'], good: [] },
  { flag: '--memory', bad: ['abc', '-5', '1.5', '1e20', '', '16E'], good: ['0', '1M'] },
  { flag: '--max-in-flight', bad: ['abc', '-5', '0', '1.5', '1e20', '', '1048577'], good: ['1', '16'] },
  { flag: '--max-in-flight-bytes', bad: ['abc', '-5', '0', '1.5', '1e20', ''], good: ['1', '64k', '1G'] },
  { flag: '--max-payload', bad: ['abc', '-5', '0', '1.5', '1e20', '', '511', '4G'], good: ['4k', '1M', '64M'] },
  { flag: '--max-options', bad: ['abc', '-5', '0', '1.5', '1e20', ''], good: ['8', '128'] },
  { flag: '--max-connections', bad: ['abc', '-5', '0', '1.5', '1e20', ''], good: ['1', '100'] },
  { flag: '--max-queued-reply-bytes', bad: ['abc', '-5', '0', '1.5', '1e20', ''], good: ['1', '64k', '4M'] },
  { flag: '--max-option-length', bad: ['abc', '-5', '0', '1.5', '1e20', '', '255', '65M'], good: ['256', '64K'] },
  { flag: '--max-buffered-bytes', bad: ['abc', '-5', '0', '1.5', '1e20', ''], good: ['65M', '128M'] },
  { flag: '--handshake-timeout', bad: ['abc', '-5', '1e20', '', '1.5.2', '0.0001', '9999999'], good: ['0', '0.5', '10', '30'] },
  { flag: '--idle-timeout', bad: ['abc', '-5', '1e20', '', '-0.5'], good: ['0', '2.5', '3600'] },
  { flag: '--linger-timeout', bad: ['abc', '-5', '1e20', '', '-0.5'], good: ['0', '0.5', '2'] },
];

describe('a bad numeric value: one line naming the option, exit 2', () => {
  for (const { flag, bad } of OPTIONS) {
    for (const value of bad) {
      // --opt=VALUE as well where parseArgs used to stumble: a leading dash, an empty value.
      const forms = value === '' || value.startsWith('-') ? (['separate', 'joined'] as const) : (['separate'] as const);
      for (const form of forms) {
        const args = form === 'separate' ? [flag, value] : [`${flag}=${value}`];
        it(`${args.map((a) => JSON.stringify(a)).join(' ')}`, async () => {
          const memory = flag === '--memory' ? [] : ['--memory', '1M'];
          const r = await cli(['serve', ...memory, ...args, '--run', 'nbdinfo --size "$uri"']);
          expect(r.code, r.stderr).toBe(2);
          const lines = r.stderr.split('\n').filter(Boolean);
          expect(lines, r.stderr).toHaveLength(1);
          expect(lines[0]!.startsWith(`nbd-engine: ${flag}: expected `), lines[0]).toBe(true);
          expect(lines[0]!.endsWith(`, got ${JSON.stringify(value)}`), lines[0]).toBe(true);
          expect(r.stderr).not.toMatch(/ambiguous|usage:/);
          expect(r.stdout).toBe('');
        });
      }
    }
  }
});

describe('limits that must agree with each other', () => {
  it('--max-buffered-bytes below --max-payload + 32: one line naming the flag, exit 2', async () => {
    const r = await cli(['serve', '--memory', '1M', '--max-buffered-bytes', '1M', '--run', 'nbdinfo --size "$uri"']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([
      'nbd-engine: --max-buffered-bytes: must be at least maxPayload (67108864) + 32 = 67108896 so the largest accepted request fits, got 1048576',
    ]);
    // Lowering --max-payload with it is fine.
    const ok = await cli(['serve', '--memory', '1M', '--max-payload', '512K', '--max-buffered-bytes', '1M', '--run', 'nbdinfo --size "$uri"']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim()).toBe('1048576');
  });
});

describe('a good numeric value: the server starts and nbdinfo works', () => {
  for (const { flag, good } of OPTIONS) {
    for (const value of good) {
      it(`${flag} ${value}`, async () => {
        requireTool('nbdinfo');
        const memory = flag === '--memory' ? [] : ['--memory', '1M'];
        const r = await cli(['serve', ...memory, flag, value, '--run', 'nbdinfo --size "$uri"']);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout.trim()).toBe(flag === '--memory' ? String(value === '0' ? 0 : 2 ** 20) : '1048576');
        expect(r.stderr).toBe('');
      });
    }
  }

  it('--port 0 listens on a free port and prints its URI', async () => {
    const r = await cli(['serve', '--memory', '1M', '--port', '0', '--host', '127.0.0.1', '--run', 'nbdinfo --size "$uri"; echo "$uri"']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^1048576\nnbd:\/\/127\.0\.0\.1:\d+\/\n$/);
  });

  it('--max-payload reaches the server: nbdinfo sees it as the maximum block size', async () => {
    const r = await cli(['serve', '--memory', '1M', '--max-payload', '256k', '--run', 'nbdinfo "$uri"']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/block_size_maximum: 262144\b/);
  });

  it('--max-options reaches the server: 1 option is too few for nbdinfo, which gets disconnected', async () => {
    const few = await cli(['serve', '--memory', '1M', '--max-options', '1', '--run', 'nbdinfo --size "$uri"']);
    expect(few.code).not.toBe(0);
    expect(few.stderr).toMatch(/too many options/);
    const enough = await cli(['serve', '--memory', '1M', '--max-options', '8', '--run', 'nbdinfo --size "$uri"']);
    expect(enough.code, enough.stderr).toBe(0);
  });
});

describe('other usage errors are one line too', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown option', ['serve', '--bogus'], /^nbd-engine: unknown option --bogus/],
    ['unknown command', ['frobnicate'], /^nbd-engine: unknown command "frobnicate"/],
    // A first positional names the backend, as nbdkit's first positional names the plugin.
    ['positional argument', ['serve', 'extra'], /^nbd-engine: unknown backend "extra" \(known: [^)]*\bmemory\b/],
    ['missing value', ['serve', '--max-in-flight'], /^nbd-engine: --max-in-flight: missing value$/],
    ['bad --tls', ['serve', '--tls', 'maybe'], /^nbd-engine: --tls: expected off, on or require, got "maybe"$/],
    ['empty --socket', ['serve', '--socket', ''], /^nbd-engine: --socket: expected a path/],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await cli(args);
      expect(r.code, r.stderr).toBe(2);
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    });
  }
});
