/**
 * A connection's flow control: how many requests and bytes it may owe, and
 * the loop that pulls frames from the decoder while it may.
 *
 * Three budgets, checked by one predicate (`hasRoom`):
 * - at most `maxInFlight` requests are with the application;
 * - at most `maxInFlightBytes` bytes are owed: WRITE payloads held by
 *   requests in flight, READ lengths of requests in flight (their replies
 *   are coming), the largest reply each BLOCK_STATUS in flight may send,
 *   and reply bytes queued but not yet handed to the OS;
 * - at most `maxQueuedReplyBytes` of those queued reply bytes (a client
 *   that does not read its replies soon stops being read).
 * The pump loop stops pulling exactly when `hasRoom` says no, and the same
 * answer goes to the connection machine as a crossing (`budget.full`,
 * `budget.room`): its `reading` region pauses and resumes the socket (TCP
 * backpressure: the client is throttled, never dropped). Completions,
 * written replies and 'drain' ask again.
 *
 * One pump takes at most PUMP_SLICE_MS of the event loop: past it, what is
 * left waits for the next turn (setImmediate), after other connections' I/O.
 * A BLOCK_STATUS goes to the machine alone, so that the slice is checked
 * between them: a synchronous backend's extents over a fragmented export take
 * tens of milliseconds each, and 64 of them in one burst stalled every other
 * connection for seconds.
 */
import { CMD, CMD_FLAG } from '../protocol/constants.js';
import type { DecodeFailure, FrameDecoder } from '../protocol/decoder.js';
import type { ClientFrame, RequestFrame } from '../protocol/frames.js';
import { DEFAULTS } from '../defaults.js';

export interface FlowLimits {
  /** Requests handed to the application at once, per connection. */
  readonly maxInFlight?: number;
  /**
   * Bytes owed at once, per connection: WRITE payloads and READ lengths of
   * requests with the application, plus reply bytes not yet written to the
   * socket. One request is always admitted when nothing is owed, so the
   * bound may be exceeded by at most one request's payload.
   */
  readonly maxInFlightBytes?: number;
  /** Reply bytes queued and not yet handed to the OS past which reading pauses. */
  readonly maxQueuedReplyBytes?: number;
}

/** What flow control reads from and tells the rest of the connection (the session). */
export interface FlowHost {
  readonly decoder: FrameDecoder;
  /** Reply bytes queued and not yet handed to the OS. */
  queuedReplyBytes(): number;
  /** The connection machine is over: nothing more is pulled. */
  closed(): boolean;
  /** Frames may be pulled now (not while the raw socket belongs to a STARTTLS upgrade, nor while an option waits for the server's answer). */
  pulling(): boolean;
  /** The transmission machine is draining. */
  draining(): boolean;
  /** The connection machine's reading region is paused. */
  readingPaused(): boolean;
  /** Tell the connection machine that a budget is used up (true) or that all have room again (false). */
  crossed(full: boolean): void;
  /** Requests decoded from what is buffered, in order: one machine event for the lot. */
  sendRequests(frames: RequestFrame[]): void;
  /** Any other frame, or DISC, alone. */
  dispatch(frame: ClientFrame): void;
  /** The decoder gave up on the stream. */
  fatal(failure: DecodeFailure): void;
  /** DISC was dispatched: stop interpreting what follows. */
  afterDisc(): void;
  /** The client's EOF, once every request it sent before was taken from the decoder. */
  eof(): void;
  /** Draining and the last request in flight completed. */
  idle(): void;
}

/** Event-loop time one pump may take before it lets other connections run (see above). */
export const PUMP_SLICE_MS = 10;

/** The largest BLOCK_STATUS reply of a connection: `contexts` chunks of at most `maxExtents` descriptors (16 bytes extended, else 8), and a header each. */
export function blockStatusReplyBound(contexts: number, maxExtents: number, extendedHeaders: boolean): number {
  return contexts * (64 + maxExtents * (extendedHeaders ? 16 : 8));
}

export class FlowControl {
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  private readonly maxQueuedReplyBytes: number;
  /** Requests with the application. */
  private inFlight = 0;
  /** WRITE payload bytes, READ lengths and BLOCK_STATUS reply bounds held by requests with the application. */
  private inFlightBytes = 0;
  /** What a BLOCK_STATUS holds (its largest reply), with and without NBD_CMD_FLAG_REQ_ONE: set once negotiated. */
  private blockStatus = { all: 0, one: 0 };
  /** When the running pump began (performance.now()), for PUMP_SLICE_MS. */
  private sliceStart = 0;
  /** A pump is scheduled for the next turn of the event loop. */
  private resumeScheduled = false;
  private pumping = false;
  /** A completion happened while pumping: pump again before returning. */
  private repump = false;
  /**
   * The client closed its side: the machine hears of it only once every
   * request it sent before is taken from the decoder, so those are served
   * like any other, not refused as if sent while draining.
   */
  private eofPending = false;

  constructor(limits: FlowLimits, private readonly host: FlowHost) {
    this.maxInFlight = Math.max(1, limits.maxInFlight ?? DEFAULTS.maxInFlight);
    this.maxInFlightBytes = Math.max(1, limits.maxInFlightBytes ?? DEFAULTS.maxInFlightBytes);
    this.maxQueuedReplyBytes = Math.max(1, limits.maxQueuedReplyBytes ?? DEFAULTS.maxQueuedReplyBytes);
  }

  /** Requests with the application right now. */
  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** The negotiated reply form and contexts decide how large a BLOCK_STATUS reply may get. */
  negotiated(contexts: number, maxExtents: number, extendedHeaders: boolean): void {
    this.blockStatus = { all: blockStatusReplyBound(contexts, maxExtents, extendedHeaders), one: blockStatusReplyBound(contexts, 1, extendedHeaders) };
  }

  /**
   * Bytes a request holds while with the application: its WRITE payload, its READ reply to come,
   * or the largest reply its BLOCK_STATUS may send. The request gives the same back when answered.
   */
  held(frame: RequestFrame): number {
    switch (frame.type) {
      case CMD.NBD_CMD_WRITE:
      case CMD.NBD_CMD_READ:
        return frame.length;
      case CMD.NBD_CMD_BLOCK_STATUS:
        return (frame.flags & CMD_FLAG.NBD_CMD_FLAG_REQ_ONE) !== 0 ? this.blockStatus.one : this.blockStatus.all;
      default:
        return 0;
    }
  }

  /**
   * Whether one more request may be taken from the decoder: all three
   * budgets have room, counting `count` requests holding `bytes` that are
   * decoded but not yet delivered.
   */
  hasRoom(count = 0, bytes = 0): boolean {
    const queued = this.host.queuedReplyBytes();
    return (
      this.inFlight + count < this.maxInFlight &&
      queued < this.maxQueuedReplyBytes &&
      this.inFlightBytes + bytes + queued < this.maxInFlightBytes
    );
  }

  /** A request was handed to the application. */
  taken(frame: RequestFrame): void {
    this.inFlight++;
    this.inFlightBytes += this.held(frame);
  }

  /** A request was answered: its slot and the bytes it held (`released`) are free. */
  completed(released: number): void {
    if (this.inFlight > 0) this.inFlight--;
    this.inFlightBytes = Math.max(0, this.inFlightBytes - released);
    if (this.inFlight === 0 && this.host.draining()) {
      this.host.idle();
      return;
    }
    if (this.host.decoder.bufferedBytes > 0 || this.host.readingPaused()) this.pump();
  }

  /** The client's EOF: delivered to the machine once what it sent before is pulled. */
  endOfInput(): void {
    this.eofPending = true;
    this.pump();
  }

  /**
   * Pull frames from the decoder while the budgets allow. Requests decoded
   * from what is buffered go to the machine as one burst (DISC and anything
   * else alone, in order): one machine event per burst instead of one per
   * request (docs/design.md). Requests a synchronous backend completes
   * during delivery free their budget at once; a pump asked for meanwhile
   * (`repump`) runs before returning, so frames left behind at the cap are
   * never stranded waiting for more socket bytes.
   */
  pump(): void {
    if (this.pumping) {
      this.repump = true;
      return;
    }
    this.pumping = true;
    this.sliceStart = performance.now();
    let exhausted = false;
    try {
      do {
        this.repump = false;
        exhausted = this.pumpOnce();
      } while (this.repump && !this.host.closed() && !this.sliceUsed());
    } finally {
      this.pumping = false;
    }
    if (this.repump && !this.host.closed()) this.resumeLater();
    if (this.eofPending && exhausted && !this.host.closed()) {
      this.eofPending = false;
      this.host.eof();
    }
    this.update();
  }

  /** Tell the connection machine when the budgets cross (its reading region pauses and resumes the socket). */
  update(): void {
    if (this.host.closed()) return;
    const full = !this.hasRoom();
    if (full !== this.host.readingPaused()) this.host.crossed(full);
  }

  /** Replies reached the socket, or the socket drained: if reading waits on the budgets, it may go on. */
  readonly written = (): void => {
    if (this.host.closed() || !this.host.readingPaused()) return;
    this.update();
    if (!this.host.readingPaused()) this.pump();
  };

  /** This pump has had its PUMP_SLICE_MS. */
  private sliceUsed(): boolean {
    return performance.now() - this.sliceStart > PUMP_SLICE_MS;
  }

  /** Go on at the next turn of the event loop, after other connections' I/O. */
  private resumeLater(): void {
    this.repump = false;
    if (this.resumeScheduled) return;
    this.resumeScheduled = true;
    setImmediate(() => {
      this.resumeScheduled = false;
      if (!this.host.closed()) this.pump();
    });
  }

  /** One pass; true when it stopped because the decoder had no complete frame left. */
  private pumpOnce(): boolean {
    const host = this.host;
    const decoder = host.decoder;
    let batch: RequestFrame[] | null = null;
    let batchBytes = 0;
    let exhausted = false;
    while (!host.closed() && host.pulling() && this.hasRoom(batch === null ? 0 : batch.length, batchBytes)) {
      const f = decoder.next();
      if (f === null) {
        exhausted = true;
        break;
      }
      // Request frames exist only in transmission (the decoder starts decoding them once GO's ACK is out).
      if (f.kind === 'request' && f.type !== CMD.NBD_CMD_DISC) {
        (batch ??= []).push(f);
        batchBytes += this.held(f);
        // A BLOCK_STATUS may be slow to answer: it goes alone, and the slice is checked after it.
        if (f.type !== CMD.NBD_CMD_BLOCK_STATUS) continue;
        host.sendRequests(batch);
        batch = null;
        batchBytes = 0;
        if (this.sliceUsed()) {
          this.repump = true;
          return false;
        }
        continue;
      }
      if (batch !== null) {
        host.sendRequests(batch);
        batch = null;
        batchBytes = 0;
      }
      if (f.kind === 'fatal') {
        host.fatal(f);
        return false;
      }
      host.dispatch(f);
      // Nothing after DISC is interpreted, also when it comes while already draining (shutdown).
      if (f.kind === 'request' && f.type === CMD.NBD_CMD_DISC) host.afterDisc();
    }
    if (batch !== null) {
      host.sendRequests(batch);
      // The batch counted its READ / WRITE lengths before the machine saw it; requests it refused
      // (past the end, too long…) hold nothing, so the budget may have room again: go on.
      if (!exhausted && this.hasRoom()) this.repump = true;
    }
    return exhausted;
  }
}
