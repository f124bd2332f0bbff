/**
 * The rate filter (nbdkit-rate-filter): limit bandwidth with token
 * buckets, in bits per second — `rate` for the export as a whole (one
 * bucket across connections) and `connectionRate` for each connection.
 * READs and WRITEs spend tokens (8 per byte of data); zero, trim, flush,
 * extents and cache are metadata on the wire and pass freely. Reads and
 * writes have separate buckets, as in nbdkit (download and upload).
 *
 * A request that finds too few tokens waits on a timer until the bucket
 * has paid for it; it never fails. Buckets start full, as nbdkit's do (a
 * first burst of `burstiness` seconds' worth passes at once), and refill up
 * to that while idle.
 *
 * Rates can change while serving: `rateFile` / `connectionRateFile` name
 * files holding a rate; they are re-read at most once a second.
 *
 * Scope: 'connection' — each connection's instance has its own buckets;
 * the export's buckets are in the filter object.
 */
import fs from 'node:fs';
import type { Filter } from '../api/filter.js';
import type { Logger } from '../transport/logger.js';
import { interceptOps, parseBitRate, sleep, type OpName } from './ops-common.js';

export interface RateOptions {
  /** Total bits per second across all connections (absent: unlimited unless rateFile says). */
  readonly rate?: number;
  /** Bits per second for each connection. */
  readonly connectionRate?: number;
  /** A file holding the total rate (nbdkit syntax, e.g. `8M`); re-read at most once a second. */
  readonly rateFile?: string;
  readonly connectionRateFile?: string;
  /** Bucket capacity in seconds of the rate (default 2, as nbdkit). */
  readonly burstiness?: number;
}

/** How often the rate files are looked at. */
const RATE_FILE_INTERVAL_MS = 1000;

/** A token bucket in bits that may go into debt: a request takes what it needs and sleeps the debt off. */
export class TokenBucket {
  /** Tokens now (may be negative: debt); unset until the first request, which finds the bucket full, as nbdkit's do. */
  private tokens: number | undefined;
  /** When tokens were last added (unset until the first request). */
  private last: number | undefined;
  /** When the rate file was last looked at (never yet: the first request reads it). */
  private checked = -Infinity;

  constructor(
    private rate: number | undefined,
    private readonly burstiness: number,
    private readonly rateFile?: string,
    private readonly logger?: Logger,
  ) {}

  private refreshRate(): void {
    const now = performance.now();
    if (this.rateFile === undefined || now - this.checked < RATE_FILE_INTERVAL_MS) return;
    this.checked = now;
    let text: string;
    try {
      text = fs.readFileSync(this.rateFile, 'utf8').trim();
    } catch {
      return; // absent: keep the rate we have (nbdkit: the last rate read, else the parameter)
    }
    try {
      this.rate = parseBitRate(text);
    } catch (e) {
      this.logger?.warn(`rate filter: ${this.rateFile}: ${(e as Error).message}; keeping the previous rate`);
    }
  }

  /** Milliseconds to wait before sending `bits` (0: go now). */
  take(bits: number): number {
    this.refreshRate();
    const rate = this.rate;
    if (rate === undefined) return 0;
    const now = performance.now();
    const capacity = rate * this.burstiness;
    this.tokens = this.tokens === undefined ? capacity : Math.min(capacity, this.tokens + ((now - (this.last ?? now)) / 1000) * rate);
    this.last = now;
    this.tokens -= bits;
    return this.tokens >= 0 ? 0 : (-this.tokens / rate) * 1000;
  }
}

interface Buckets {
  read: TokenBucket;
  write: TokenBucket;
}

export function rateFilter(options: RateOptions): Filter {
  const burst = options.burstiness ?? 2;
  if (!(burst > 0)) throw new RangeError('rate filter: burstiness must be > 0 seconds');
  for (const r of [options.rate, options.connectionRate]) if (r !== undefined && !(r > 0)) throw new RangeError('rate filter: rates must be > 0 bits/s');
  let shared: Buckets | undefined;
  const buckets = (rate: number | undefined, file: string | undefined, logger: Logger): Buckets | undefined =>
    rate === undefined && file === undefined ? undefined : { read: new TokenBucket(rate, burst, file, logger), write: new TokenBucket(rate, burst, file, logger) };
  return {
    name: 'rate',
    scope: 'connection',
    wrap: (next, ctx) => {
      shared ??= buckets(options.rate, options.rateFile, ctx.logger);
      const own = buckets(options.connectionRate, options.connectionRateFile, ctx.logger);
      const limited: ReadonlyArray<Buckets> = [shared, own].filter((b): b is Buckets => b !== undefined);
      return interceptOps(next, (call, invoke) => {
        const op: OpName = call.op;
        if ((op !== 'read' && op !== 'write') || limited.length === 0) return invoke();
        const bits = call.count * 8;
        // Both buckets are charged; the request waits for the slower of the two.
        let wait = 0;
        for (const b of limited) wait = Math.max(wait, b[op].take(bits));
        return wait > 0 ? sleep(wait).then(() => invoke()) : invoke();
      });
    },
  };
}
