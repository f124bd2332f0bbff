/**
 * The delay filter (nbdkit-delay-filter): every operation of a kind waits
 * a fixed time before it reaches the backend, to imitate a slow disk or a
 * distant server. The wait is a timer, so a delayed request never holds up
 * the others: an undelayed command sent after a delayed READ is answered
 * first.
 *
 * Scope: 'shared' — the filter keeps no state, one instance serves every
 * connection.
 */
import type { Filter } from '../api/filter.js';
import { NbdRequestError } from '../api/errors.js';
import { interceptOps, sleep, type OpCall, type OpName } from './ops-common.js';

/** Delays in milliseconds, per operation (absent or 0: none). */
export interface DelayOptions {
  readonly read?: number;
  readonly write?: number;
  readonly zero?: number;
  readonly trim?: number;
  readonly extents?: number;
  readonly cache?: number;
  readonly flush?: number;
  /**
   * nbdkit's delay-fast-zero: true (default) — a fast-zero request waits like
   * any zero; false — it fails at once with ENOTSUP, without the delay or
   * the backend (so the client falls back quickly, as with a slow device).
   */
  readonly fastZero?: boolean;
}

/** The delay an operation gets, in milliseconds. */
export function delayFor(options: DelayOptions, op: OpName): number {
  return options[op] ?? 0;
}

/** Whether a call should fail at once (a fast zero with `fastZero: false`). */
export function refusesFastZero(options: DelayOptions, call: Pick<OpCall, 'op' | 'fastZero'>): boolean {
  return call.op === 'zero' && call.fastZero === true && options.fastZero === false;
}

function check(options: DelayOptions): void {
  for (const key of ['read', 'write', 'zero', 'trim', 'extents', 'cache', 'flush'] as const) {
    const v = options[key];
    if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw new RangeError(`delay filter: ${key} must be a number of milliseconds ≥ 0, got ${String(v)}`);
  }
}

export function delayFilter(options: DelayOptions): Filter {
  check(options);
  return {
    name: 'delay',
    scope: 'shared',
    wrap: (next) =>
      interceptOps(next, (call, invoke) => {
        if (refusesFastZero(options, call)) throw new NbdRequestError('ENOTSUP', 'delay filter: fast zero refused (delay-fast-zero=false)');
        const ms = delayFor(options, call.op);
        if (ms <= 0) return invoke();
        return sleep(ms).then(() => invoke());
      }),
  };
}
