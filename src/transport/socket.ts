/**
 * The socket edge: a socket as an rxjs Observable of its bytes, and the
 * reply writer (header + payload as separate buffers under cork, `drain`
 * honoured). The only code besides the listeners that touches sockets.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { Observable } from 'rxjs';
import { DEFAULTS } from '../defaults.js';
import { SIZE } from '../protocol/constants.js';
import { READ_REPLY_HEADER_SIZE, writeReadReplyHeader, writeSimpleReplyHeader } from '../protocol/encoder.js';
import type { BufferLender } from '../protocol/replies.js';
import { retireSlab, slabCounters, trackSlab, type SlabAccount } from './slab-account.js';
import { canReadIntoUserBuffers, readIntoUserBuffers } from './user-buffer.js';

/** Full-size read slabs whose bytes are all dead, kept for reuse (per connection). */
const FREE_SLABS_MAX = 4;

/** Socket reads land in regions of slabs: the first this big (a handshake needs little)... */
const READ_SLAB_FIRST = 64 * 1024;
/** ...each next one twice the last, up to this. */
const READ_SLAB = 1024 * 1024;
/** ...at most this much per read (Node's own reads are 64 KiB each, each a fresh ArrayBuffer). */
const READ_MAX = 256 * 1024;
/** A slab with less than a quarter of itself (at most this) left is retired (its views stay valid). */
const READ_MIN = 64 * 1024;
/**
 * The read after a placed WRITE payload is this small: enough for the next
 * request's header (28 bytes, 32 with extended headers), so that when it is
 * another large WRITE (a sequential stream) its payload is read straight
 * into the placement too instead of arriving behind the header and being
 * copied there.
 */
const READ_AFTER_PLACED = SIZE.EXTENDED_REQUEST;

/**
 * Zero-copy WRITE payloads: where the next read may land instead of a slab
 * (a placement target, bounded by the payload still to come; see
 * FrameDecoder.placementWindow), and who is told how many bytes landed.
 */
export interface ReadWindow {
  get(): Buffer | null;
  filled(n: number): void;
}

/**
 * Have a plain `net.Socket` read into regions of slabs (64 KiB growing to 1 MiB) instead of a
 * fresh 64 KiB ArrayBuffer per read: up to 256 KiB per read, one
 * allocation per slab, far less GC. A slab is reused only once every byte
 * read into it was reported dead (slab-account.ts), so views of a
 * chunk (partial frames, WRITE payloads not yet released) stay valid
 * exactly as with 'data' buffers. The switch itself is `user-buffer.ts`. While a WRITE payload is being placed, the
 * read goes into the placement window instead (`window`, see ReadWindow).
 * Returns false (nothing changed) when the socket is not a plain one.
 */
function readIntoSlabs(socket: Duplex, deliver: (chunk: Buffer) => void, window?: ReadWindow): (() => void) | false {
  if (!canReadIntoUserBuffers(socket)) return false;
  // Small first: a connection that only negotiates (nbdinfo) allocates 64 KiB, not 1 MiB.
  // Full-size slabs whose every byte was reported dead (see slab-account.ts) are reused.
  const free: Buffer[] = [];
  let live = true;
  const track = (b: Buffer): SlabAccount =>
    trackSlab(b.buffer, () => {
      if (live && b.length === READ_SLAB && free.length < FREE_SLABS_MAX) free.push(b);
    });
  const allocate = (size: number): Buffer => {
    slabCounters.allocated++;
    return Buffer.allocUnsafeSlow(size);
  };
  let slab: Buffer = allocate(READ_SLAB_FIRST);
  let account = track(slab);
  let used = 0;
  let region = slab.subarray(0, READ_MAX);
  /** The buffer handed to the next read is a placement window, not a slab region. */
  let windowed = false;
  const next = (): Buffer => {
    const w = window !== undefined && live ? window.get() : null;
    if (w !== null && w.length > 0) {
      windowed = true;
      return w;
    }
    // The read after a placed payload: just the next header (see READ_AFTER_PLACED).
    const peek = windowed;
    windowed = false;
    if (slab.length - used < Math.min(READ_MIN, slab.length >> 2)) {
      const old = slab;
      const size = Math.min(READ_SLAB, slab.length * 2);
      const reused = size === READ_SLAB ? free.pop() : undefined;
      if (reused !== undefined) slabCounters.reused++;
      slab = reused ?? allocate(size);
      used = 0;
      const oldAccount = account;
      account = track(slab);
      retireSlab(old.buffer, oldAccount);
    }
    region = slab.subarray(used, Math.min(slab.length, used + (peek ? READ_AFTER_PLACED : READ_MAX)));
    return region;
  };
  const onRead = (n: number, buf: Buffer) => {
    if (windowed) {
      // The payload bytes are already where they belong.
      if (live) window!.filled(n);
      return;
    }
    used += n;
    account.handed += n;
    if (live) deliver(buf.subarray(0, n));
  };
  readIntoUserBuffers(socket, region, next, onRead);
  return () => {
    live = false;
  };
}

/**
 * A cold Observable of the bytes a socket receives. Subscribing attaches
 * the listeners, unsubscribing detaches them (a cold Observable). `complete` is
 * the client's EOF; `error` a socket error. The socket is not paused or
 * destroyed here: flow control belongs to the session. With `slabReads`
 * a plain socket reads into slab regions (see `readIntoSlabs`); only for
 * sockets that are never handed to TLS afterwards.
 */
export function fromSocket(socket: Duplex, options: { slabReads?: boolean; window?: ReadWindow } = {}): Observable<Buffer> {
  return new Observable<Buffer>((subscriber) => {
    const onData = (chunk: Buffer) => subscriber.next(chunk);
    const onEnd = () => subscriber.complete();
    const onError = (err: Error) => subscriber.error(err);
    const onClose = () => subscriber.complete();
    // 'data' stays attached: it delivers anything read before the switch (and everything without it).
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onClose);
    const stopSlabs = options.slabReads ? readIntoSlabs(socket, onData, options.window) : false;
    return () => {
      if (stopSlabs) stopSlabs();
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
/** The first staging chunk is small (handshake replies); the first overflow switches to STAGE_SIZE. */
const STAGE_FIRST = 16 * 1024;

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
  private stage: Buffer = Buffer.allocUnsafeSlow(STAGE_FIRST);
  private start = 0;
  private pos = 0;
  /** Socket writes of the current staging chunk not yet completed. */
  private stageWrites = 0;
  /** Pieces for the next flush, in order (staging slices and big payloads). */
  private parts: Buffer[] = [];
  /** For each part, the pool it goes back to once written (a lent READ buffer), else undefined. */
  private partPools: Array<BufferLender | undefined> = [];
  /** Bytes in `parts` (staging slices and big payloads); bytes still staged are pos − start. */
  private partsBytes = 0;
  bytesWritten = 0;

  /**
   * Whether a write's callback means the bytes left this process's hands, so a lent READ buffer
   * may go back to its pool then. True for a net.Socket (TLS included: the plaintext is encrypted
   * into records when written). A stream built of other streams (`-s` over two pipes:
   * Duplex.from) may call back as soon as it queued a chunk: lent buffers sent through it are
   * never reused.
   */
  private readonly callbackMeansWritten: boolean;

  /**
   * @param onDrainNeeded the socket refused more (write returned false): a 'drain' will follow.
   * @param onWritten a flush's bytes reached the socket's handle: `pendingBytes` went down.
   * @param callbackMeansWritten override the check above (tests with a stream of their own).
   */
  constructor(
    private readonly socket: Duplex & { writableNeedDrain?: boolean; writableLength?: number },
    private readonly onDrainNeeded: () => void,
    private readonly onWritten: () => void = () => {},
    callbackMeansWritten?: boolean,
  ) {
    this.callbackMeansWritten = callbackMeansWritten ?? socket instanceof net.Socket;
  }

  /**
   * Reply bytes queued and not yet handed to the operating system: staged,
   * queued by reference, and in the socket's own write buffer. The session
   * counts them against its per-connection byte budget, so a client that
   * does not read its replies makes the server stop reading requests.
   */
  get pendingBytes(): number {
    if (this.closed) return 0;
    return this.pos - this.start + this.partsBytes + (this.socket.writableLength ?? 0);
  }

  write(frame: readonly Buffer[]): void {
    if (!this.writable) return;
    for (let i = 0; i < frame.length; i++) this.append(frame[i]!);
    this.schedule();
  }

  /** A simple reply (16 bytes, no data), encoded straight into the staging chunk: no header buffer. */
  writeSimple(cookie: bigint, error: number): void {
    if (!this.writable) return;
    if (this.pos + SIZE.SIMPLE_REPLY > this.stage.length) this.newStage();
    writeSimpleReplyHeader(this.stage, this.pos, cookie, error);
    this.pos += SIZE.SIMPLE_REPLY;
    this.bytesWritten += SIZE.SIMPLE_REPLY;
    this.schedule();
  }

  /**
   * A successful READ answered by one buffer (at least 1 byte unless simple):
   * the reply header (or OFFSET_DATA chunk header and offset) is encoded
   * straight into the staging chunk, and the data copied behind it (or
   * queued by reference when big). Same bytes as `write(replyReadBuffer(…))`.
   */
  writeRead(mode: 'simple' | 'structured' | 'extended', cookie: bigint, offset: number, data: Buffer, lentFrom?: BufferLender): void {
    if (!this.writable) return;
    const n = data.length;
    // Room for the header and, when it is copied, the data behind it: one contiguous slice.
    if (this.pos + READ_REPLY_HEADER_SIZE[mode] + (n <= COPY_MAX ? n : 0) > this.stage.length) this.newStage();
    const h = writeReadReplyHeader(this.stage, this.pos, mode, cookie, offset, n);
    this.pos += h;
    this.bytesWritten += h;
    // A big lent buffer travels by reference and goes back to its pool once the socket has written it
    // (never through a stream whose callbacks say nothing: the collector has it then).
    this.append(data, this.callbackMeansWritten ? lentFrom : undefined);
    // Copied into the staging chunk: the lent buffer is free at once.
    if (lentFrom !== undefined && n <= COPY_MAX) lentFrom.give(data);
    this.schedule();
  }

  private get writable(): boolean {
    return !this.closed && !this.socket.destroyed && !this.socket.writableEnded;
  }

  /** Replies can still reach the client: not ended or dropped by us, not destroyed by a socket error. */
  get open(): boolean {
    return this.writable;
  }

  /**
   * Queue one buffer: small ones are copied into the staging chunk, big ones queued by reference
   * (`lentFrom`: the pool such a buffer goes back to once written).
   */
  private append(b: Buffer, lentFrom?: BufferLender): void {
    const n = b.length;
    if (n === 0) return;
    this.bytesWritten += n;
    if (n <= COPY_MAX) {
      if (this.pos + n > this.stage.length) this.newStage();
      this.stage.set(b, this.pos);
      this.pos += n;
    } else {
      this.cut();
      this.parts.push(b);
      if (lentFrom !== undefined) this.partPools[this.parts.length - 1] = lentFrom;
      this.partsBytes += n;
    }
  }

  /** Flush everything queued in this tick with one socket write, once the tick's replies are in. */
  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flush);
    }
  }

  /** Move the staged bytes into the parts list. */
  private cut(): void {
    if (this.pos > this.start) {
      this.parts.push(this.stage.subarray(this.start, this.pos));
      this.partsBytes += this.pos - this.start;
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
  private stageWritten(chunk: Buffer, err?: Error | null): void {
    if (err) this.closed = true;
    if (chunk !== this.stage) return;
    if (--this.stageWrites === 0 && this.start === this.pos && this.parts.length === 0) this.start = this.pos = 0;
  }

  /** Hand everything queued to the socket now (a reply the client waits on, or before a TLS upgrade takes the socket over). */
  flushNow(): void {
    this.flush();
  }

  private readonly flush = () => {
    this.scheduled = false;
    const chunk = this.stage;
    this.cut();
    const parts = this.parts;
    if (parts.length === 0) return;
    const pools = this.partPools;
    this.parts = [];
    this.partsBytes = 0;
    if (pools.length > 0) this.partPools = [];
    if (this.socket.destroyed || this.socket.writableEnded) return;
    let ok = true;
    if (parts.length > 1) this.socket.cork();
    const last = parts.length - 1;
    for (let i = 0; i <= last; i++) {
      const p = parts[i]!;
      const pool = pools[i];
      if (p.buffer === chunk.buffer) {
        this.stageWrites++;
        ok = this.socket.write(p, i === last ? (err?: Error | null) => this.lastStageWritten(chunk, err) : (err?: Error | null) => this.stageWritten(chunk, err)) && ok;
      } else if (pool !== undefined) {
        // Back to the pool only once written; a failed write (the connection went) leaves it to the collector.
        ok = this.socket.write(p, (err?: Error | null) => {
          if (!err) pool.give(p);
          if (i === last) this.written(err);
        }) && ok;
      } else {
        ok = (i === last ? this.socket.write(p, this.written) : this.socket.write(p, this.failedWrite)) && ok;
      }
    }
    if (parts.length > 1) this.socket.uncork();
    if (!ok) this.onDrainNeeded();
  };

  private lastStageWritten(chunk: Buffer, err?: Error | null): void {
    this.stageWritten(chunk, err);
    this.written(err);
  }

  /**
   * A flush's last write completed. A failed write means no reply can reach the client any more
   * (the peer reset, the pipe broke): the writer is closed at once — before the socket reports
   * its error — so nothing reads its freed byte budget as room for more requests.
   */
  private readonly written = (err?: Error | null): void => {
    if (err) this.closed = true;
    else this.onWritten();
  };

  private readonly failedWrite = (err?: Error | null): void => {
    if (err) this.closed = true;
  };

  /**
   * After end(): milliseconds the socket may stay open for the client to read what is left and
   * close its side; then it is destroyed (0: once our last bytes are handed to the OS). A client
   * that never closes must not keep the connection, and its maxConnections slot, for good.
   */
  lingerMs: number = DEFAULTS.lingerTimeout;

  /** Flush and half-close (soft disconnect); the socket goes after `lingerMs` if the client keeps it open. */
  end(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    const socket = this.socket;
    if (socket.destroyed) return;
    socket.end();
    if (this.lingerMs === 0) {
      socket.once('finish', () => socket.destroy());
      return;
    }
    const timer = setTimeout(() => socket.destroy(), this.lingerMs);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  }

  /** Drop the connection now (hard disconnect). */
  destroy(): void {
    this.closed = true;
    this.parts = [];
    this.partPools = [];
    this.partsBytes = 0;
    this.start = this.pos;
    this.socket.destroy();
  }
}
