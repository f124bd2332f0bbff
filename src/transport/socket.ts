/**
 * The socket edge: a socket as an rxjs Observable of its bytes, and the
 * reply writer (header + payload as separate buffers under cork, `drain`
 * honoured). The only code besides the listeners that touches sockets.
 */
import type { Duplex } from 'node:stream';
import { Observable } from 'rxjs';
import { SIZE } from '../protocol/constants.js';
import { writeSimpleReplyHeader } from '../protocol/encoder.js';

/**
 * A cold Observable of the bytes a socket receives. Subscribing attaches
 * the listeners, unsubscribing detaches them (style.md §3). `complete` is
 * the client's EOF; `error` a socket error. The socket is not paused or
 * destroyed here: flow control belongs to the session.
 */
export function fromSocket(socket: Duplex): Observable<Buffer> {
  return new Observable<Buffer>((subscriber) => {
    const onData = (chunk: Buffer) => subscriber.next(chunk);
    const onEnd = () => subscriber.complete();
    const onError = (err: Error) => subscriber.error(err);
    const onClose = () => subscriber.complete();
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onClose);
    return () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
  });
}

/** Buffers up to this size are copied into the staging area; bigger ones are queued by reference. */
const COPY_MAX = 16 * 1024;
/** Staging chunk size: a burst of 32 × 4 KiB read replies fits in one. */
const STAGE_SIZE = 256 * 1024;
/** Queued-but-unsent bytes above which the session stops reading (our high-water mark). */
const DEFAULT_HIGH_WATER = 4 * 1024 * 1024;

/**
 * Writes whole frames. A frame (`Buffer[]`) is queued contiguously, so
 * replies never interleave mid-frame. Everything written in one tick goes
 * to the socket in one `write` (or one corked `writev` when big payloads
 * travel by reference): small buffers — headers, 4 KiB payloads — are
 * copied into a staging chunk, so a burst of replies costs one syscall and
 * no per-buffer stream bookkeeping.
 */
export class ReplyWriter {
  private closed = false;
  private scheduled = false;
  /** Staging chunk; [start, pos) is queued but not yet handed to the socket. */
  private stage: Buffer = Buffer.allocUnsafeSlow(STAGE_SIZE);
  private start = 0;
  private pos = 0;
  /** Socket writes of the current staging chunk not yet completed. */
  private stageWrites = 0;
  /** Pieces for the next flush, in order (staging slices and big payloads). */
  private parts: Buffer[] = [];
  bytesWritten = 0;

  constructor(
    private readonly socket: Duplex & { writableNeedDrain?: boolean; writableLength?: number },
    private readonly onDrainNeeded: () => void,
    private readonly highWater = DEFAULT_HIGH_WATER,
  ) {}

  /** Whether so much is queued on the socket that reading should wait for 'drain'. */
  get needsDrain(): boolean {
    return !this.closed && this.socket.writableNeedDrain === true && (this.socket.writableLength ?? 0) > this.highWater;
  }

  write(frame: readonly Buffer[]): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    for (let i = 0; i < frame.length; i++) {
      const b = frame[i]!;
      const n = b.length;
      if (n === 0) continue;
      this.bytesWritten += n;
      if (n <= COPY_MAX) {
        if (this.pos + n > this.stage.length) this.newStage();
        this.stage.set(b, this.pos);
        this.pos += n;
      } else {
        this.cut();
        this.parts.push(b);
      }
    }
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flush);
    }
  }

  /** A simple reply (16 bytes, no data), encoded straight into the staging chunk: no header buffer. */
  writeSimple(cookie: bigint, error: number): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    if (this.pos + SIZE.SIMPLE_REPLY > this.stage.length) this.newStage();
    writeSimpleReplyHeader(this.stage, this.pos, cookie, error);
    this.pos += SIZE.SIMPLE_REPLY;
    this.bytesWritten += SIZE.SIMPLE_REPLY;
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flush);
    }
  }

  /** Move the staged bytes into the parts list. */
  private cut(): void {
    if (this.pos > this.start) {
      this.parts.push(this.stage.subarray(this.start, this.pos));
      this.start = this.pos;
    }
  }

  /** Retire the current chunk (its slices may still be in flight) and start a new one. */
  private newStage(): void {
    this.cut();
    this.stage = Buffer.allocUnsafeSlow(STAGE_SIZE);
    this.start = this.pos = 0;
    this.stageWrites = 0;
  }

  /**
   * A write of a slice of `chunk` completed. Once every slice handed to the
   * socket has gone and nothing is staged or queued, the chunk is rewound and
   * reused: in steady state one staging chunk serves the connection.
   */
  private stageWritten(chunk: Buffer): void {
    if (chunk !== this.stage) return;
    if (--this.stageWrites === 0 && this.start === this.pos && this.parts.length === 0) this.start = this.pos = 0;
  }

  /** Hand everything queued to the socket now (before a TLS upgrade takes the socket over). */
  flushNow(): void {
    this.flush();
  }

  private readonly flush = () => {
    this.scheduled = false;
    const chunk = this.stage;
    this.cut();
    const parts = this.parts;
    if (parts.length === 0) return;
    this.parts = [];
    if (this.socket.destroyed || this.socket.writableEnded) return;
    let ok = true;
    if (parts.length > 1) this.socket.cork();
    for (const p of parts) {
      if (p.buffer === chunk.buffer) {
        this.stageWrites++;
        ok = this.socket.write(p, () => this.stageWritten(chunk)) && ok;
      } else {
        ok = this.socket.write(p) && ok;
      }
    }
    if (parts.length > 1) this.socket.uncork();
    if (!ok) this.onDrainNeeded();
  };

  /** Flush and half-close (soft disconnect). */
  end(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    if (!this.socket.destroyed) this.socket.end();
  }

  /** Drop the connection now (hard disconnect). */
  destroy(): void {
    this.closed = true;
    this.parts = [];
    this.start = this.pos;
    this.socket.destroy();
  }
}
