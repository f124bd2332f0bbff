/**
 * The command line's numeric options map onto createServer's limits
 * (seconds → milliseconds, sizes with suffixes), and a bad value is a
 * UsageError naming the option.
 */
import { describe, expect, it } from 'vitest';
import { parseServeArgs, UsageError } from '../../../src/cli/main.js';

describe('parseServeArgs', () => {
  it('maps every limit flag onto ServerLimits', () => {
    const a = parseServeArgs([
      '--max-in-flight', '8',
      '--max-in-flight-bytes', '16M',
      '--max-payload', '1M',
      '--max-options', '32',
      '--max-connections', '3',
      '--handshake-timeout', '2.5',
      '--idle-timeout', '600',
    ]);
    expect(a.limits).toEqual({
      maxInFlight: 8,
      maxInFlightBytes: 16 * 2 ** 20,
      maxPayload: 2 ** 20,
      maxOptions: 32,
      maxConnections: 3,
      handshakeTimeout: 2500,
      idleTimeout: 600_000,
    });
  });

  it('--inspect takes an optional port: alone it is 10880 and never swallows the next option', () => {
    expect(parseServeArgs([]).inspectPort).toBeUndefined();
    expect(parseServeArgs(['--inspect']).inspectPort).toBe(10880);
    const a = parseServeArgs(['--inspect', '--socket', '/tmp/x.sock']);
    expect(a.inspectPort).toBe(10880);
    expect(a.values.socket).toBe('/tmp/x.sock');
    expect(parseServeArgs(['--inspect=0']).inspectPort).toBe(0);
    expect(parseServeArgs(['--inspect=8123']).inspectPort).toBe(8123);
    expect(() => parseServeArgs(['--inspect=65536'])).toThrow(UsageError);
    expect(() => parseServeArgs(['--inspect=http'])).toThrow(/^--inspect: /);
  });

  it('no limit flags: no limits (the server defaults apply)', () => {
    expect(parseServeArgs([]).limits).toEqual({});
  });

  it('timeouts: 0 is off, decimals down to a millisecond', () => {
    expect(parseServeArgs(['--handshake-timeout', '0', '--idle-timeout', '0.001']).limits).toEqual({ handshakeTimeout: 0, idleTimeout: 1 });
    expect(() => parseServeArgs(['--idle-timeout', '0.0004'])).toThrow(/^--idle-timeout: /);
  });

  it('--opt=value and --opt value read the same; a value may start with a dash', () => {
    expect(parseServeArgs(['--port=0']).port).toBe(0);
    expect(parseServeArgs(['--port', '10809']).port).toBe(10809);
    expect(() => parseServeArgs(['--port', '-1'])).toThrow(new UsageError('--port: expected an integer from 0 to 65535, got "-1"'));
    expect(() => parseServeArgs(['--max-in-flight', '-5'])).toThrow(/^--max-in-flight: expected an integer from 1 to 1048576, got "-5"$/);
  });

  it('a flag without its value is named', () => {
    expect(() => parseServeArgs(['--max-payload'])).toThrow(/^--max-payload: missing value$/);
  });

  it('--memory takes sizes up to 2^53 − 1 bytes', () => {
    expect(parseServeArgs(['--memory', '16T']).memorySize).toBe(16 * 2 ** 40);
    expect(parseServeArgs(['--memory', '0']).memorySize).toBe(0);
    expect(() => parseServeArgs(['--memory', '16E'])).toThrow(/^--memory: expected a size up to/);
  });
});
