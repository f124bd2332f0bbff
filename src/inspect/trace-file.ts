/**
 * A trace file: JSON Lines, the header record first, written in batches (a
 * record only joins a queue on the connection's path; the queue goes to the
 * file once per event-loop turn). At the size cap the file either ends with
 * an `end` record (`reason: 'cap'`, the default) or, with `rotate: N`, is
 * renamed to FILE.1 (FILE.1 to FILE.2 …, keeping N) and a new FILE begins.
 * A write error is logged once; recording stops and the server goes on.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { writeStderr, type Logger } from '../transport/logger.js';
import { TRACE_VERSION, type TraceHeader, type TraceRecord, type TraceSink } from './trace-format.js';

/** Default size cap of one trace file: 64 MiB. */
export const TRACE_MAX_BYTES = 64 * 1024 * 1024;
/** Default `maxPendingBytes`: what a slow disk may leave unwritten before recording stops. */
export const TRACE_MAX_PENDING_BYTES = 16 * 1024 * 1024;
/** The most payload bytes a record carries as hex (`prefixBytes`). */
export const TRACE_MAX_PREFIX_BYTES = 4096;

export interface TraceFileOptions {
  /** Bytes per file before the cap applies (default 64 MiB). */
  readonly maxBytes?: number;
  /** Leading payload bytes recorded as hex (default 0: lengths only; at most 4096). */
  readonly prefixBytes?: number;
  /**
   * Bytes recorded but not yet written to the file (queued, or in the file
   * stream) beyond which recording stops, with an `end` record (reason
   * `behind`) and one log line, rather than let memory grow when the disk is
   * slower than the connections (default 16 MiB).
   */
  readonly maxPendingBytes?: number;
  /** At the cap, rotate and keep this many old files (FILE.1 … FILE.N); default 0: stop recording at the cap. */
  readonly rotate?: number;
  /** Where the one line about a write error (error) or the cap (warn, if given) goes (default stderr). */
  readonly logger?: Pick<Logger, 'error'> & Partial<Pick<Logger, 'warn'>>;
}

export interface TraceFile extends TraceSink {
  readonly path: string;
  /** Write what is queued, end the file and close it. */
  close(): Promise<void>;
}

function packageVersion(): string {
  try {
    return (createRequire(import.meta.url)('../../package.json') as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function traceFile(path: string, options: TraceFileOptions = {}): TraceFile {
  const maxBytes = options.maxBytes ?? TRACE_MAX_BYTES;
  const keep = options.rotate ?? 0;
  const maxPending = options.maxPendingBytes ?? TRACE_MAX_PENDING_BYTES;
  const logger = options.logger ?? { error: (m: string) => writeStderr(`nbd-engine: ${m}\n`) };
  const prefixBytes = options.prefixBytes ?? 0;
  if (!(maxBytes > 0)) throw new RangeError(`trace maxBytes must be positive, got ${maxBytes}`);
  if (!Number.isInteger(keep) || keep < 0) throw new RangeError(`trace rotate must be a whole number ≥ 0, got ${keep}`);
  if (!(maxPending > 0)) throw new RangeError(`trace maxPendingBytes must be positive, got ${maxPending}`);
  if (!Number.isInteger(prefixBytes) || prefixBytes < 0 || prefixBytes > TRACE_MAX_PREFIX_BYTES) {
    throw new RangeError(`trace prefixBytes must be a whole number from 0 to ${TRACE_MAX_PREFIX_BYTES}, got ${prefixBytes}`);
  }
  // Room kept for the `end` record, so that a file never grows past maxBytes (the rotation's names the file: the longest).
  const endReserve = Buffer.byteLength(JSON.stringify({ type: 'end', t: Date.now(), reason: 'rotate', next: path })) + 8;
  const version = packageVersion();
  let stream: fs.WriteStream | null = null;
  let queue: string[] = [];
  /** Bytes in `queue` (not yet handed to the stream). */
  let queued = 0;
  let bytes = 0;
  let scheduled = false;
  /** 'on' records; 'capped' reached the cap without rotation; 'failed' a write failed; 'closed' after close(). */
  let state: 'on' | 'capped' | 'failed' | 'closed' = 'on';
  const streams = new Set<Promise<void>>();

  const line = (r: TraceRecord): string => `${JSON.stringify(r)}\n`;

  const open = (): void => {
    // Opened now (once per file, not per record), so that a rotation's rename moves a file this stream already holds.
    let fd: number;
    try {
      // A FIFO with no reader would block this open (and the whole server) until one comes: ask without waiting first.
      if (fs.statSync(path, { throwIfNoEntry: false })?.isFIFO()) fs.closeSync(fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
      fd = fs.openSync(path, 'w');
    } catch (err) {
      logger.error(`trace file ${path}: ${(err as Error).message}; recording stopped`);
      state = 'failed';
      stream = null;
      return;
    }
    const s = fs.createWriteStream(path, { fd });
    stream = s;
    const finished = new Promise<void>((resolve) => {
      s.on('close', () => resolve());
      s.on('error', (err) => {
        if (state === 'on' || state === 'capped') logger.error(`trace file ${path}: ${err.message}; recording stopped`);
        if (state === 'on') state = 'failed';
        queue = [];
        resolve();
      });
    });
    streams.add(finished);
    void finished.then(() => streams.delete(finished));
    const header: TraceHeader = { type: 'trace', v: TRACE_VERSION, t: Date.now(), server: 'nbd-engine', version, pid: process.pid };
    const h = line(header);
    queue.push(h);
    bytes = Buffer.byteLength(h);
    queued += bytes;
  };

  const flush = (): void => {
    scheduled = false;
    if (queue.length === 0 || !stream || stream.destroyed) return;
    const chunk = queue.join('');
    queue = [];
    queued = 0;
    stream.write(chunk);
  };

  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(flush);
  };

  const end = (reason: 'cap' | 'rotate' | 'closed' | 'behind'): void => {
    queue.push(line(reason === 'rotate' ? { type: 'end', t: Date.now(), reason, next: path } : { type: 'end', t: Date.now(), reason }));
    queued = 0;
    flush();
    stream?.end();
  };

  const rotate = (): void => {
    end('rotate');
    // The old stream keeps writing to its file under the new name (a rename does not move an open file's data).
    try {
      fs.rmSync(`${path}.${keep}`, { force: true });
      for (let i = keep - 1; i >= 1; i--) if (fs.existsSync(`${path}.${i}`)) fs.renameSync(`${path}.${i}`, `${path}.${i + 1}`);
      fs.renameSync(path, `${path}.1`);
    } catch (err) {
      logger.error(`trace file ${path}: rotating failed: ${(err as Error).message}; recording stopped`);
      state = 'failed';
      return;
    }
    open();
  };

  open();
  if (state === 'on') schedule();
  return {
    path,
    prefixBytes,
    write(record: TraceRecord): void {
      if (state !== 'on') return;
      const l = line(record);
      const n = Buffer.byteLength(l);
      if (bytes + n + endReserve > maxBytes) {
        if (keep === 0) {
          state = 'capped';
          (logger.warn ?? logger.error)(`trace file ${path}: reached its ${maxBytes}-byte cap; recording stopped (--trace-rotate keeps recording)`);
          end('cap');
          return;
        }
        rotate();
        if (state !== 'on') return;
      }
      if (queued + n + (stream?.writableLength ?? 0) > maxPending) {
        state = 'capped';
        logger.error(`trace file ${path}: the disk fell ${maxPending} bytes behind; recording stopped`);
        end('behind');
        return;
      }
      queue.push(l);
      queued += n;
      bytes += n;
      schedule();
    },
    async close(): Promise<void> {
      if (state === 'on') end('closed');
      else if (stream && !stream.writableEnded) stream.end();
      state = 'closed';
      await Promise.all([...streams]);
    },
  };
}
