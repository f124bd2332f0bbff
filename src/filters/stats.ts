/**
 * The stats filter (nbdkit-stats-filter): per operation, the number of
 * requests, bytes, errors, and latency percentiles (p50, p90, p99, max),
 * written to a file when the server closes and whenever the process gets a
 * signal (SIGUSR1 by default), and available any time from `snapshot()`.
 *
 * Latencies go into Node's built-in HDR histogram (perf_hooks
 * createHistogram): bounded memory however long the server runs, and
 * percentiles within its precision (3 significant digits).
 *
 * Scope: 'shared' — one set of counters for the export, across
 * connections.
 */
import fs from 'node:fs';
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import type { Filter } from '../api/filter.js';
import type { Logger } from '../transport/logger.js';
import { interceptOps, OP_NAMES, whenSettled, type OpName } from './ops-common.js';

export interface StatsOptions {
  /** Where the stats are written at close and on the signal (nbdkit's statsfile; absent: only `snapshot()`). */
  readonly file?: string;
  /** Append to the file instead of replacing it (nbdkit's statsappend). Default false. */
  readonly append?: boolean;
  /** The signal that writes the stats (default 'SIGUSR1' when there is a file; null: none). */
  readonly signal?: NodeJS.Signals | null;
  /** Where a failure to write the file is reported. */
  readonly logger?: Logger;
}

export interface OpStats {
  readonly ops: number;
  readonly bytes: number;
  readonly errors: number;
  /** Latencies in seconds (0 when there were no requests). */
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

export interface StatsSnapshot {
  /** Seconds since the filter was made. */
  readonly elapsed: number;
  readonly ops: Readonly<Record<OpName, OpStats>>;
}

interface Counter {
  ops: number;
  bytes: number;
  errors: number;
  latency: RecordableHistogram;
}

/** The counters, fed by the filter or by the request-stream operator. */
export class StatsCollector {
  private readonly started = process.hrtime.bigint();
  private readonly counters = new Map<OpName, Counter>(OP_NAMES.map((op) => [op, { ops: 0, bytes: 0, errors: 0, latency: createHistogram() }]));

  /** Count one finished request: its bytes (read/write/zero/trim/cache length), whether it failed, how long it took. */
  record(op: OpName, bytes: number, failed: boolean, nanoseconds: number | bigint): void {
    const c = this.counters.get(op)!;
    c.ops++;
    c.bytes += bytes;
    if (failed) c.errors++;
    // A number, not a bigint: the histogram records numbers several times faster.
    const ns = typeof nanoseconds === 'bigint' ? Number(nanoseconds) : Math.round(nanoseconds);
    c.latency.record(ns > 0 ? ns : 1);
  }

  /** Run `fn` (an operation) and record it. */
  measure<T>(op: OpName, bytes: number, fn: () => T | PromiseLike<T>): T | Promise<T> {
    // performance.now(): a double in milliseconds, no bigint allocated per request.
    const start = performance.now();
    return whenSettled(fn, (failed) => this.record(op, bytes, failed, (performance.now() - start) * 1e6));
  }

  snapshot(): StatsSnapshot {
    const ops = {} as Record<OpName, OpStats>;
    for (const [op, c] of this.counters) {
      const s = (ns: number) => (c.ops === 0 ? 0 : ns / 1e9);
      ops[op] = { ops: c.ops, bytes: c.bytes, errors: c.errors, p50: s(c.latency.percentile(50)), p90: s(c.latency.percentile(90)), p99: s(c.latency.percentile(99)), max: s(c.latency.max) };
    }
    return { elapsed: Number(process.hrtime.bigint() - this.started) / 1e9, ops };
  }

  /** The text written to the stats file (see docs/filters-ops.md). */
  format(): string {
    const snap = this.snapshot();
    const lines = [`# nbd-engine stats ${new Date().toISOString()} elapsed=${snap.elapsed.toFixed(6)}`];
    let total = 0;
    let bytes = 0;
    for (const op of OP_NAMES) {
      const s = snap.ops[op];
      total += s.ops;
      bytes += s.bytes;
      if (s.ops === 0) continue;
      lines.push(`${op} ops=${s.ops} bytes=${s.bytes} errors=${s.errors} p50=${s.p50.toFixed(6)} p90=${s.p90.toFixed(6)} p99=${s.p99.toFixed(6)} max=${s.max.toFixed(6)}`);
    }
    lines.push(`total ops=${total} bytes=${bytes}`);
    return `${lines.join('\n')}\n`;
  }
}

/** Bytes a request moves or touches (flush and extents: 0, as nbdkit's stats count them). */
export function bytesOf(op: OpName, count: number): number {
  return op === 'flush' || op === 'extents' ? 0 : count;
}

export interface StatsFilter extends Filter {
  readonly collector: StatsCollector;
  snapshot(): StatsSnapshot;
  /** Write the stats to the file now (what the signal does). */
  dump(): void;
}

export function statsFilter(options: StatsOptions = {}): StatsFilter {
  const collector = new StatsCollector();
  let first = true;
  let closed = false;
  let logger = options.logger;
  const dump = () => {
    if (options.file === undefined) return;
    try {
      // The first write replaces the file unless appending; later ones (signals, close) add to it.
      if (first && !options.append) fs.writeFileSync(options.file, collector.format());
      else fs.appendFileSync(options.file, collector.format());
      first = false;
    } catch (e) {
      logger?.error(`stats filter: cannot write ${options.file}: ${(e as Error).message}`);
    }
  };
  // No file, nothing for a signal to write: leave the signal (Node's inspector uses SIGUSR1) alone.
  const signal = options.file === undefined ? null : options.signal === undefined ? 'SIGUSR1' : options.signal;
  let listening = false;
  return {
    name: 'stats',
    scope: 'shared',
    collector,
    snapshot: () => collector.snapshot(),
    dump,
    wrap: (next, ctx) => {
      logger ??= ctx.logger;
      if (signal && !listening) {
        listening = true;
        process.on(signal, dump);
      }
      // The final stats when the server closes: on the instance made without a connection (there is always
      // one per export), not on the per-connection ones made when a per-connection filter sits below.
      if (ctx.connection === undefined) {
        ctx.onClose(() => {
          if (closed) return;
          closed = true;
          if (signal) process.off(signal, dump);
          dump();
        });
      }
      return interceptOps(next, (call, invoke) => collector.measure(call.op, bytesOf(call.op, call.count), () => invoke()));
    },
  };
}
