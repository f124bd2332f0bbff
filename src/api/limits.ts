/**
 * Validation of `ServerLimits`: every numeric limit is checked once, at
 * createServer(), with an error naming the option. A limit that is NaN, not
 * an integer, out of its range or not a number at all would otherwise give a
 * server that never answers (a NaN in-flight cap stops every request) or one
 * that ignores the limit (1e20 bytes).
 */
import { NbdError } from './errors.js';
import { DEFAULTS } from '../defaults.js';

export interface ServerLimits {
  /** Requests with the application at once, per connection (default 64). */
  readonly maxInFlight?: number;
  /**
   * Bytes owed per connection (default 128 MiB): WRITE payloads and READ
   * lengths of requests in flight, plus reply bytes queued but not yet
   * written to the socket. Past it the server stops reading that client's
   * requests until replies drain (the client is throttled, never dropped).
   */
  readonly maxInFlightBytes?: number;
  /**
   * Reply bytes queued per connection and not yet written to the socket
   * (default 4 MiB); past it the server stops reading that client's
   * requests until it reads its replies.
   */
  readonly maxQueuedReplyBytes?: number;
  /** Largest READ / WRITE payload served (default 64 MiB, as nbdkit). */
  readonly maxPayload?: number;
  /** Largest option data buffered (default 64 KiB). */
  readonly maxOptionLength?: number;
  /**
   * Largest option data skipped: a longer option than maxOptionLength but not than this is refused
   * (NBD_REP_ERR_TOO_BIG) and its data read and dropped; longer still, the connection is dropped
   * (default 64 MiB; at least maxOptionLength).
   */
  readonly maxOptionSkip?: number;
  /**
   * Largest WRITE payload skipped: a payload over maxPayload but not over this is read and dropped
   * and the WRITE refused (EINVAL), the connection going on; longer still (extended headers carry
   * 64-bit lengths), the connection is dropped (default 4 GiB − 1: every compact length; at least
   * maxPayload).
   */
  readonly maxPayloadSkip?: number;
  /** Options per connection before a hard disconnect (default 128). */
  readonly maxOptions?: number;
  /**
   * Extent descriptors per BLOCK_STATUS reply and meta context (default 65 536: 512 KiB compact,
   * 1 MiB with extended headers). A backend is told (`ExtentsOptions.maxExtents`) and may stop there;
   * what it returns beyond is dropped. The spec lets a server describe less than the client asked:
   * the client asks again from where the reply ended.
   */
  readonly maxExtents?: number;
  /**
   * Bytes of one NBD_OPT_LIST answer made from the `listExports` hook's list (default 4 MiB): each
   * entry costs its NBD_REP_SERVER reply, 24 bytes plus its name and description. A LIST is answered
   * in one go, so a longer answer would hold up the other connections while it is made (10 000
   * entries of 4 KiB names and descriptions are 82 MB). Over it, as over 10 000 entries, the LIST
   * gets NBD_REP_ERR_PLATFORM and the server logs one line.
   */
  readonly maxListBytes?: number;
  /**
   * Bytes of idle READ buffers the server keeps for reuse, server-wide (default 32 MiB; 0 keeps none).
   * READs of backends with `readInto` (the file backend) and handlers that use `request.readBuffer()`
   * are answered from buffers lent by the server, which take them back once the reply is written: no
   * allocation (and no garbage) per READ. Buffers in use are bounded by each connection's limits.
   */
  readonly readBufferPool?: number;
  /** Bytes a connection's decoder may hold (default maxPayload + 1 MiB). */
  readonly maxBufferedBytes?: number;
  /** Concurrent connections, server-wide; past it a new connection is closed with one log line (default unlimited). */
  readonly maxConnections?: number;
  /**
   * Milliseconds a client has to finish negotiating (reach transmission or
   * abort); past it the connection is dropped with one log line (default
   * 10 000, as qemu-nbd; 0 turns it off).
   */
  readonly handshakeTimeout?: number;
  /**
   * Milliseconds a negotiated connection may stay idle (no request in flight,
   * no byte received) before it is closed with one log line (default 0: off).
   */
  readonly idleTimeout?: number;
  /**
   * Milliseconds a connection the server has ended (NBD_CMD_DISC or ABORT answered, a timeout, a
   * refusal) stays open after its last reply for the client to read it and close its side; then
   * it is dropped, and its `maxConnections` slot freed (default 2000; 0: as soon as the last reply
   * is handed to the OS).
   */
  readonly lingerTimeout?: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** The largest delay a Node timer takes (2^31 − 1 ms, about 24.8 days); larger ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Largest request header on the wire (extended headers): a buffered WRITE needs this much on top of its payload. */
const REQUEST_HEADER = 32;
/** Option header (magic, option, length): a buffered option needs this much on top of its data. */
const OPTION_HEADER = 16;

export interface LimitRange {
  /** Smallest accepted value (0 means "off" for the timeouts). */
  readonly min: number;
  readonly max: number;
  /** The unit the value is counted in. */
  readonly unit: 'count' | 'bytes' | 'ms';
  /** Value used when the option is not given (none: unlimited, or derived from another limit). */
  readonly default?: number;
}

/**
 * Accepted range of every limit. The command line checks its flags against
 * the same table, so both say the same thing.
 */
export const LIMIT_RANGES = {
  maxInFlight: { min: 1, max: 1_048_576, unit: 'count', default: DEFAULTS.maxInFlight },
  maxInFlightBytes: { min: 1, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.maxInFlightBytes },
  maxQueuedReplyBytes: { min: 1, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.maxQueuedReplyBytes },
  maxPayload: { min: 512, max: 2 * GiB, unit: 'bytes', default: DEFAULTS.maxPayload },
  maxOptionLength: { min: 256, max: 64 * MiB, unit: 'bytes', default: DEFAULTS.maxOptionLength },
  maxOptionSkip: { min: 256, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.maxOptionSkip },
  maxPayloadSkip: { min: 512, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.maxPayloadSkip },
  maxOptions: { min: 1, max: 1_048_576, unit: 'count', default: DEFAULTS.maxOptions },
  maxExtents: { min: 1, max: 1_048_576, unit: 'count', default: DEFAULTS.maxExtents },
  maxListBytes: { min: 1, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.maxListBytes },
  readBufferPool: { min: 0, max: Number.MAX_SAFE_INTEGER, unit: 'bytes', default: DEFAULTS.readBufferPool },
  // Default: maxPayload + DEFAULTS.bufferedSlack (1 MiB).
  maxBufferedBytes: { min: 512 + REQUEST_HEADER, max: Number.MAX_SAFE_INTEGER, unit: 'bytes' },
  maxConnections: { min: 1, max: 1_048_576, unit: 'count' },
  handshakeTimeout: { min: 0, max: MAX_TIMER_MS, unit: 'ms', default: DEFAULTS.handshakeTimeout },
  idleTimeout: { min: 0, max: MAX_TIMER_MS, unit: 'ms', default: DEFAULTS.idleTimeout },
  lingerTimeout: { min: 0, max: MAX_TIMER_MS, unit: 'ms', default: DEFAULTS.lingerTimeout },
} as const satisfies Record<keyof ServerLimits, LimitRange>;

export type LimitName = keyof typeof LIMIT_RANGES;

/** "1048576", "64 MiB", "2147483647 ms": a limit's value as the messages show it. */
export function formatLimitValue(n: number, unit: LimitRange['unit']): string {
  if (unit === 'ms') return `${n} ms`;
  if (unit === 'count') return String(n);
  if (n === Number.MAX_SAFE_INTEGER) return '2^53 − 1 bytes';
  for (const [size, name] of [[GiB, 'GiB'], [MiB, 'MiB'], [KiB, 'KiB']] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${name}`;
  }
  return `${n} bytes`;
}

function describe(v: unknown): string {
  if (typeof v === 'number') return Number.isNaN(v) ? 'NaN' : String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  return typeof v;
}

/** Throw NbdError('NBD_ERR_CONFIG') naming the first invalid limit. */
export function validateLimits(limits: ServerLimits | undefined): void {
  if (limits === undefined) return;
  if (limits === null || typeof limits !== 'object') {
    throw new NbdError('NBD_ERR_CONFIG', `limits: expected an object, got ${describe(limits)}`);
  }
  // A misspelled limit (maxInflight) would otherwise be ignored without a word, its default in force.
  for (const key of Object.keys(limits)) {
    if (Object.hasOwn(LIMIT_RANGES, key)) continue;
    const near = (Object.keys(LIMIT_RANGES) as LimitName[]).find((n) => n.toLowerCase() === key.toLowerCase());
    throw new NbdError('NBD_ERR_CONFIG', `limits: unknown limit ${JSON.stringify(key)}${near ? ` (did you mean ${near}?)` : ''}; the limits are ${Object.keys(LIMIT_RANGES).join(', ')}`);
  }
  for (const name of Object.keys(LIMIT_RANGES) as LimitName[]) {
    const value: unknown = limits[name];
    if (value === undefined) continue;
    const r: LimitRange = LIMIT_RANGES[name];
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < r.min || value > r.max) {
      const what = r.unit === 'ms' ? 'milliseconds, an integer' : r.unit === 'bytes' ? 'bytes, an integer' : 'an integer';
      const range =
        r.unit === 'ms'
          ? `from 0 (off) to ${r.max}`
          : `from ${r.min} to ${r.max === Number.MAX_SAFE_INTEGER ? '2^53 − 1' : r.max}`;
      throw new NbdError('NBD_ERR_CONFIG', `${name}: expected ${what} ${range}, got ${describe(value)}`);
    }
  }
  // A skip limit below its buffering limit would drop connections the buffering limit means to answer.
  for (const [skip, below] of [['maxOptionSkip', 'maxOptionLength'], ['maxPayloadSkip', 'maxPayload']] as const) {
    const s = limits[skip];
    const b = limits[below] ?? LIMIT_RANGES[below].default;
    if (s !== undefined && s < b) throw new NbdError('NBD_ERR_CONFIG', `${skip}: must be at least ${below} (${b}), got ${s}`);
  }
  // A WRITE of the largest accepted payload, or an option of the largest
  // accepted length, must fit in what a connection may buffer; otherwise
  // every such request would cost the client its connection.
  if (limits.maxBufferedBytes !== undefined) {
    const maxPayload = limits.maxPayload ?? LIMIT_RANGES.maxPayload.default;
    const maxOptionLength = limits.maxOptionLength ?? LIMIT_RANGES.maxOptionLength.default;
    const need = Math.max(maxPayload + REQUEST_HEADER, maxOptionLength + OPTION_HEADER);
    if (limits.maxBufferedBytes < need) {
      const by = maxPayload + REQUEST_HEADER >= maxOptionLength + OPTION_HEADER ? `maxPayload (${maxPayload}) + ${REQUEST_HEADER}` : `maxOptionLength (${maxOptionLength}) + ${OPTION_HEADER}`;
      throw new NbdError('NBD_ERR_CONFIG', `maxBufferedBytes: must be at least ${by} = ${need} so the largest accepted request fits, got ${limits.maxBufferedBytes}`);
    }
  }
}
