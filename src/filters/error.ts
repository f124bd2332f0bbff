/**
 * The error filter (nbdkit-error-filter): inject errors into requests, to
 * test how clients recover. Errors are injected by rate (a probability per
 * request), per operation, only while a file exists (error-file), and —
 * our addition — only for requests touching a byte range. An injected
 * error replaces the call: the backend is not called.
 *
 * With a seed, the choice is reproducible: the same seed and the same
 * order of requests inject the same errors.
 *
 * Scope: 'shared' — one random sequence for the export, across
 * connections (as nbdkit's one generator).
 */
import fs from 'node:fs';
import type { Filter } from '../api/filter.js';
import { NbdRequestError } from '../api/errors.js';
import type { ErrnoName } from '../protocol/constants.js';
import { interceptOps, OP_NAMES, seededRandom, type OpCall, type OpName } from './ops-common.js';

/** One set of nbdkit's error / error-rate / error-file. */
export interface ErrorRule {
  /** The errno the client sees (default EIO). */
  readonly error?: ErrnoName;
  /** Probability per request, 0 to 1 (default 0: never). */
  readonly rate?: number;
  /** Inject only while this file exists (checked at each request). */
  readonly file?: string;
}

export interface ErrorOptions extends ErrorRule {
  /** Per operation settings; each field falls back to the general one above, except that FLUSH fails only by `flush.rate`. */
  readonly read?: ErrorRule;
  readonly write?: ErrorRule;
  readonly zero?: ErrorRule;
  readonly trim?: ErrorRule;
  readonly extents?: ErrorRule;
  readonly cache?: ErrorRule;
  readonly flush?: ErrorRule;
  /** Ours: only requests overlapping [offset, offset + length) get errors (FLUSH, which has no range, then never does). */
  readonly offset?: number;
  readonly length?: number;
  /** Seed for the random choice (default: Math.random, not reproducible). */
  readonly seed?: number;
  /** Called for each injected error (the command line logs it, as nbdkit does: the client's errno alone does not say it was injected). */
  readonly onInject?: (errno: ErrnoName, op: OpName) => void;
}

/** Decides, request by request, whether to inject an error and which. */
export class ErrorInjector {
  private readonly random: () => number;
  /** Injected errors so far, per operation. */
  readonly injected: Record<OpName, number> = { read: 0, write: 0, zero: 0, trim: 0, flush: 0, extents: 0, cache: 0 };

  constructor(private readonly options: ErrorOptions) {
    for (const rule of [options, ...OP_NAMES.map((op) => options[op])]) {
      const r = rule?.rate;
      if (r !== undefined && !(r >= 0 && r <= 1)) throw new RangeError(`error filter: rate must be between 0 and 1, got ${String(r)}`);
    }
    if (options.offset !== undefined && !(Number.isSafeInteger(options.offset) && options.offset >= 0)) throw new RangeError('error filter: offset must be an integer ≥ 0');
    if (options.length !== undefined && !(Number.isSafeInteger(options.length) && options.length >= 0)) throw new RangeError('error filter: length must be an integer ≥ 0');
    this.random = options.seed !== undefined ? seededRandom(options.seed) : Math.random;
  }

  private inRange(call: Pick<OpCall, 'op' | 'offset' | 'count'>): boolean {
    const { offset, length } = this.options;
    if (offset === undefined && length === undefined) return true;
    if (call.op === 'flush') return false;
    const start = offset ?? 0;
    const end = length === undefined ? Infinity : start + length;
    // An empty request (count 0) touches its offset.
    return call.offset < end && call.offset + Math.max(call.count, 1) > start;
  }

  /** The errno to fail this call with, or undefined to let it through. */
  decide(call: Pick<OpCall, 'op' | 'offset' | 'count'>): ErrnoName | undefined {
    const rule = this.options[call.op];
    // FLUSH fails only by its own rate (error-flush is ours): nbdkit's error filter never touches FLUSH,
    // so a command line copied from nbdkit (error-rate=…) must not start failing flushes.
    const general: ErrorRule | undefined = call.op === 'flush' ? undefined : this.options;
    const rate = rule?.rate ?? general?.rate ?? 0;
    if (rate <= 0 || !this.inRange(call)) return undefined;
    const file = rule?.file ?? general?.file;
    if (file !== undefined && !fs.existsSync(file)) return undefined;
    // Drawn only for eligible requests, so a seed's sequence does not depend on requests outside the range.
    if (rate < 1 && this.random() >= rate) return undefined;
    this.injected[call.op]++;
    return rule?.error ?? this.options.error ?? 'EIO';
  }
}

export interface ErrorFilter extends Filter {
  readonly injector: ErrorInjector;
}

export function errorFilter(options: ErrorOptions): ErrorFilter {
  const injector = new ErrorInjector(options);
  return {
    name: 'error',
    scope: 'shared',
    injector,
    wrap: (next) =>
      interceptOps(next, (call, invoke) => {
        const errno = injector.decide(call);
        if (errno !== undefined) {
          options.onInject?.(errno, call.op);
          throw new NbdRequestError(errno, `error filter: injecting ${errno} into ${call.op}`);
        }
        return invoke();
      }),
  };
}
