/**
 * Whole replies to one request, in the form the negotiation demands
 * (reply.negotiated-mode): simple replies without structured replies;
 * structured chunks for READ (always) and BLOCK_STATUS once they are on;
 * extended chunks for everything once extended headers are on.
 * A reply is a list of frames ending in exactly one DONE chunk (reply.structured-chunks).
 */
import { CMD } from './constants.js';
import {
  encodeChunkBlockStatus,
  encodeChunkError,
  encodeChunkNone,
  encodeChunkOffsetData,
  encodeChunkOffsetHole,
  encodeSimpleReply,
  type Extent,
  type Frame,
} from './encoder.js';

export type ReplyMode = 'simple' | 'structured' | 'extended';

/** A piece of READ data: bytes, or a run that reads as zeroes. */
export type ReadSegment = { readonly data: Buffer } | { readonly hole: number };

/** Success without data (every command but READ and BLOCK_STATUS). */
export function replyOk(mode: ReplyMode, cookie: bigint, requestOffset: number): Frame {
  if (mode === 'extended') return encodeChunkNone(cookie, { extended: true, requestOffset });
  // Structured replies are optional for data-less commands: simple is smaller.
  return encodeSimpleReply(cookie, 0);
}

/** An error reply. `type` is the command (READ needs a structured error once SR is on). */
export function replyError(mode: ReplyMode, cookie: bigint, type: number, errno: number, message: string | undefined, requestOffset: number | bigint): Frame {
  if (mode === 'simple') return encodeSimpleReply(cookie, errno);
  // With SR we prefer structured errors: they carry a message (the spec's SHOULD).
  void type;
  return encodeChunkError(cookie, errno, message, { extended: mode === 'extended', requestOffset, done: true });
}

let zeroes: Buffer = Buffer.alloc(0);
/** A shared buffer of zeroes, grown on demand; views of it are never written. */
function zeroView(n: number): Buffer {
  if (zeroes.length < n) zeroes = Buffer.alloc(Math.max(n, 64 * 1024));
  return zeroes.subarray(0, n);
}

/**
 * A successful READ of [offset, offset + Σ segments). In simple mode holes
 * are sent as zero bytes; in structured mode each segment is a chunk
 * (OFFSET_DATA / OFFSET_HOLE) and the last one carries DONE; with `df`
 * (NBD_CMD_FLAG_DF) everything goes in one OFFSET_DATA chunk (reply.df-one-chunk).
 * `maxChunk`: the most data one OFFSET_DATA chunk carries (the export's
 * advertised maximum payload, reply.structured-chunks); longer data is split
 * into chunks of that size, by views of the buffers. DF replies are never
 * split: the request rules refuse a DF read that would need it. A simple
 * reply cannot be split at all.
 */
export function replyRead(mode: ReplyMode, cookie: bigint, offset: number, segments: readonly ReadSegment[], df = false, maxChunk = Infinity): Frame {
  // A zero-length read (transmission.zero-length: unspecified, answered successfully):
  // content chunks must carry ≥ 1 byte, so structured forms send NONE.
  if (mode !== 'simple' && segments.every((s) => ('data' in s ? s.data.length : s.hole) === 0)) {
    return encodeChunkNone(cookie, { extended: mode === 'extended', requestOffset: offset });
  }
  if (mode === 'simple' || df) {
    const parts: Buffer[] = [];
    for (const s of segments) parts.push('data' in s ? s.data : zeroView(s.hole));
    if (mode === 'simple') return encodeSimpleReply(cookie, 0, parts);
    return encodeChunkOffsetData(cookie, offset, parts, { extended: mode === 'extended', requestOffset: offset, done: true });
  }
  const extended = mode === 'extended';
  // The common case, one data segment: one chunk, no intermediate arrays.
  if (segments.length === 1) {
    const s = segments[0]!;
    if ('data' in s) {
      if (s.data.length > 0 && s.data.length <= maxChunk) return encodeChunkOffsetData(cookie, offset, s.data, { extended, requestOffset: offset, done: true });
    } else if (s.hole > 0) {
      return encodeChunkOffsetHole(cookie, offset, s.hole, { extended, requestOffset: offset, done: true });
    }
  }
  // Runs of adjacent data segments share one OFFSET_DATA chunk (the buffers
  // follow each other as its payload): a 1 MiB read from 64 KiB pages is one
  // chunk, not sixteen, which is one header for the client to parse instead
  // of sixteen. Holes stay OFFSET_HOLE chunks; empty segments are dropped
  // (every content chunk covers ≥ 1 byte, reply.structured-chunks). A run
  // never carries more than `maxChunk` bytes: a buffer that would take it
  // past is cut there (OFFSET_HOLE has no data part, so holes are never cut).
  const frame: Frame = [];
  let at = offset;
  let run: Buffer[] = [];
  let runStart = offset;
  let runBytes = 0;
  const flushRun = (done: boolean) => {
    if (run.length === 0) return;
    const chunk = encodeChunkOffsetData(cookie, runStart, run.length === 1 ? run[0]! : run, { extended, requestOffset: offset, done });
    for (const b of chunk) frame.push(b);
    run = [];
    runBytes = 0;
  };
  // Find the last live segment: its chunk carries DONE.
  let lastLive = -1;
  for (let i = segments.length - 1; i >= 0; i--) {
    const s = segments[i]!;
    if (('data' in s ? s.data.length : s.hole) > 0) {
      lastLive = i;
      break;
    }
  }
  if (lastLive < 0) return encodeChunkNone(cookie, { extended, requestOffset: offset });
  for (let i = 0; i <= lastLive; i++) {
    const s = segments[i]!;
    if ('data' in s) {
      let d = s.data;
      if (d.length === 0) continue;
      if (run.length === 0) runStart = at;
      while (runBytes + d.length > maxChunk) {
        const room = maxChunk - runBytes;
        if (room > 0) run.push(d.subarray(0, room));
        at += room;
        d = d.subarray(room);
        flushRun(false);
        runStart = at;
      }
      run.push(d);
      runBytes += d.length;
      at += d.length;
    } else {
      if (s.hole === 0) continue;
      flushRun(false);
      const chunk = encodeChunkOffsetHole(cookie, at, s.hole, { extended, requestOffset: offset, done: i === lastLive });
      for (const b of chunk) frame.push(b);
      at += s.hole;
    }
  }
  flushRun(true);
  return frame;
}

/**
 * A successful READ answered by one buffer: the same bytes as
 * `replyRead(mode, cookie, offset, [{ data }], df, maxChunk)`, without the segment list.
 */
export function replyReadBuffer(mode: ReplyMode, cookie: bigint, offset: number, data: Buffer, df = false, maxChunk = Infinity): Frame {
  if (mode === 'simple') return encodeSimpleReply(cookie, 0, data);
  // Zero-length: content chunks carry at least one byte, so NONE, with or without DF (as replyRead).
  if (data.length === 0) return encodeChunkNone(cookie, { extended: mode === 'extended', requestOffset: offset });
  // More than one chunk may carry (reply.structured-chunks): split.
  if (data.length > maxChunk && !df) return replyRead(mode, cookie, offset, [{ data }], false, maxChunk);
  return encodeChunkOffsetData(cookie, offset, data, { extended: mode === 'extended', requestOffset: offset, done: true });
}

/** BLOCK_STATUS: one status chunk per selected context, DONE on the last (reply.block-status-chunks). */
export function replyBlockStatus(
  mode: ReplyMode,
  cookie: bigint,
  requestOffset: number,
  contexts: ReadonlyArray<{ readonly id: number; readonly extents: readonly Extent[] }>,
): Frame {
  const extended = mode === 'extended';
  const frame: Frame = [];
  contexts.forEach((c, i) => {
    frame.push(...encodeChunkBlockStatus(cookie, c.id, c.extents, { extended, requestOffset, done: i === contexts.length - 1 }));
  });
  if (contexts.length === 0) frame.push(...encodeChunkNone(cookie, { extended, requestOffset }));
  return frame;
}

/** Reply mode from what was negotiated. */
export function replyModeOf(structuredReplies: boolean, extendedHeaders: boolean): ReplyMode {
  return extendedHeaders ? 'extended' : structuredReplies ? 'structured' : 'simple';
}

/** Whether a command's error needs the structured form (READ once SR is on; reply.negotiated-mode). */
export function needsStructured(mode: ReplyMode, type: number): boolean {
  return mode !== 'simple' && (type === CMD.NBD_CMD_READ || type === CMD.NBD_CMD_BLOCK_STATUS);
}

/** Where a lent READ buffer goes back once the reply's bytes are out of it (the transport's BufferPool). */
export interface BufferLender {
  give(b: Buffer): void;
}

/** Where encoded replies go: whole frames, plus the two forms written in place (ReplyWriter). */
export interface ReplyOutput {
  write(frame: readonly Buffer[]): void;
  /** A simple reply: the same bytes as `encodeSimpleReply(cookie, error)`. */
  writeSimple(cookie: bigint, error: number): void;
  /**
   * A READ answered by one buffer of ≥ 1 byte: the same bytes as `replyReadBuffer(mode, cookie, offset, data)`.
   * `lentFrom`: `data` was lent by it, and goes back to it once written (or copied).
   */
  writeRead(mode: ReplyMode, cookie: bigint, offset: number, data: Buffer, lentFrom?: BufferLender): void;
}

/**
 * A connection's one reply encoder: every reply of the transmission phase —
 * to requests the application answers and to requests the machine refused
 * alike — gets its form here, from the mode negotiation fixed
 * (reply.negotiated-mode), and goes to the output in place where it can.
 */
export class ReplyEncoder {
  mode: ReplyMode = 'simple';
  /**
   * The most data one OFFSET_DATA chunk carries: the export's advertised maximum payload, set when
   * transmission starts (reply.structured-chunks). A longer READ is answered with several chunks.
   */
  maxChunk = Infinity;
  /** Sees every reply's frames when something records the connection (the trace); null otherwise, one check per reply. */
  tap: ((frame: readonly Buffer[]) => void) | null = null;

  /** @param out where replies go; the connection points it at a new output when one replaces it (STARTTLS). */
  constructor(public out: ReplyOutput) {}

  /** Success without data (every command but READ and BLOCK_STATUS). */
  ok(cookie: bigint, requestOffset: number): void {
    if (this.tap) this.tap(replyOk(this.mode, cookie, requestOffset));
    // Without extended headers that is a simple reply, written in place.
    if (this.mode !== 'extended') this.out.writeSimple(cookie, 0);
    else this.out.write(replyOk(this.mode, cookie, requestOffset));
  }

  /**
   * A successful READ: one buffer, or segments with holes (`df`: NBD_CMD_FLAG_DF). `lentFrom`: the buffer
   * was lent by it (NbdRequest.readBuffer) and goes back once written — unless a recorder sees the reply
   * (it may keep views of it): then the collector has it.
   */
  read(cookie: bigint, offset: number, data: Buffer | readonly ReadSegment[], df: boolean, lentFrom?: BufferLender): void {
    const max = this.maxChunk;
    if (this.tap) {
      this.tap(Buffer.isBuffer(data) ? replyReadBuffer(this.mode, cookie, offset, data, df, max) : replyRead(this.mode, cookie, offset, data, df, max));
      lentFrom = undefined;
    }
    if (!Buffer.isBuffer(data)) this.out.write(replyRead(this.mode, cookie, offset, data, df, max));
    // One buffer within one chunk is one OFFSET_DATA chunk (or simple reply) encoded in place; DF changes nothing
    // for one chunk, and a simple reply is never split.
    else if (data.length > 0 && (data.length <= max || df || this.mode === 'simple')) this.out.writeRead(this.mode, cookie, offset, data, lentFrom);
    // Empty, or split into chunks of views of it: a lent buffer is left to the collector then.
    else this.out.write(replyReadBuffer(this.mode, cookie, offset, data, df, max));
  }

  /** BLOCK_STATUS: the extents of each selected context. */
  blockStatus(cookie: bigint, requestOffset: number, contexts: ReadonlyArray<{ readonly id: number; readonly extents: readonly Extent[] }>): void {
    const frame = replyBlockStatus(this.mode, cookie, requestOffset, contexts);
    if (this.tap) this.tap(frame);
    this.out.write(frame);
  }

  /** An error: the errno, and the message where the form carries one. */
  error(cookie: bigint, command: number, errno: number, message: string | undefined, requestOffset: number | bigint): void {
    if (this.tap) this.tap(this.mode === 'simple' ? encodeSimpleReply(cookie, errno) : replyError(this.mode, cookie, command, errno, message, requestOffset));
    if (this.mode === 'simple') this.out.writeSimple(cookie, errno);
    else this.out.write(replyError(this.mode, cookie, command, errno, message, requestOffset));
  }
}
