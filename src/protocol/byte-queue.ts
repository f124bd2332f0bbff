/**
 * The decoder's input: socket chunks queued in arrival order, read from the
 * front. Bytes leave the queue by `take` (one buffer: a view when they lie
 * inside one chunk, else one copy), `takeParts` (the chunks' views),
 * `copyInto` (copied into memory the caller owns) or by being dropped
 * (`drop`, `discard`).
 *
 * Bytes that are copied out or dropped are reported dead (`DeadBytes`, the
 * queue's owner decides what that means: the transport reuses its read
 * memory by it), as they leave. Bytes handed out as views are not: whoever
 * holds the view reports them when done with it.
 */

/**
 * Told that `n` bytes of `buffer` (any range of it) are dead: parsed,
 * copied out, dropped, or a payload nobody reads any more. Each byte is
 * reported at most once. Sans-IO: the decoder only calls it.
 */
export type DeadBytes = (buffer: ArrayBufferLike, n: number) => void;

/** The default: nobody tracks the memory. */
export const ignoreDeadBytes: DeadBytes = () => {};

/** What `consume` does with each piece of bytes it walks over. */
type Sink = typeof COPY | typeof VIEWS | typeof DROP;
/** Copy into a buffer, then report the source bytes dead. */
const COPY = 0;
/** Collect views of the chunks (the bytes stay alive). */
const VIEWS = 1;
/** Drop: report the bytes dead. */
const DROP = 2;

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private size = 0;
  /** Bytes still to drop as they arrive (a skipped option or payload). */
  private dropping = 0;

  constructor(private readonly dead: DeadBytes = ignoreDeadBytes) {}

  /** Bytes held right now. */
  get length(): number {
    return this.size;
  }

  /** Bytes still to be dropped, held or not yet arrived. */
  get dropPending(): number {
    return this.dropping;
  }

  /** Bytes readable from the first chunk without crossing into the next. */
  get firstRun(): number {
    return this.size === 0 ? 0 : this.chunks[0]!.length - this.head;
  }

  /**
   * Append a chunk. Bytes still to be dropped are dropped first. Returns
   * false, and keeps nothing of the chunk, when the queue would then hold
   * more than `limit` bytes.
   */
  push(chunk: Buffer, limit: number): boolean {
    // Dropped bytes never need buffering: drop them as they arrive.
    if (this.dropping > 0 && this.size === 0) {
      const n = Math.min(this.dropping, chunk.length);
      this.dropping -= n;
      this.dead(chunk.buffer, n);
      if (n === chunk.length) return true;
      chunk = chunk.subarray(n);
    }
    if (this.size + chunk.length > limit) return false;
    this.chunks.push(chunk);
    this.size += chunk.length;
    return true;
  }

  /** Take exactly n buffered bytes: a view when inside one chunk, else one copy. */
  take(n: number): Buffer {
    // A zero-length frame part (e.g. EXPORT_NAME of the default export) may find the queue empty.
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (n <= first.length - this.head) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(first, n);
      this.size -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.consume(n, COPY, out, 0);
    return out;
  }

  /** Take exactly n buffered bytes as views of the chunks they arrived in (no copy). */
  takeParts(n: number): Buffer[] {
    const parts: Buffer[] = [];
    this.consume(n, VIEWS, parts, 0);
    return parts;
  }

  /** Copy up to n buffered bytes into `target` at `at`; returns how many were copied. */
  copyInto(target: Buffer, at: number, n: number): number {
    return this.consume(n, COPY, target, at);
  }

  /**
   * Drop the next n bytes of the stream: those buffered now, and the rest as
   * they arrive (`push`). Returns the bytes still to come.
   */
  drop(n: number): number {
    this.dropping = n;
    return this.dropBuffered();
  }

  /** Drop what is buffered of the bytes still to be dropped; returns the bytes still to come. */
  dropBuffered(): number {
    if (this.dropping > 0) this.dropping -= this.consume(this.dropping, DROP, null, 0);
    return this.dropping;
  }

  /** Forget everything buffered, and any bytes still to be dropped. Returns the bytes forgotten. */
  discard(): number {
    const dropped = this.size;
    this.chunks = [];
    this.head = 0;
    this.size = 0;
    this.dropping = 0;
    return dropped;
  }

  /**
   * The one walk over the front of the queue: up to n bytes (no more than
   * are buffered), chunk by chunk, each piece handed to `sink`. Returns the
   * bytes consumed.
   */
  private consume(n: number, sink: Sink, into: Buffer | Buffer[] | null, at: number): number {
    const want = n < this.size ? n : this.size;
    let done = 0;
    while (done < want) {
      const c = this.chunks[0]!;
      const m = Math.min(c.length - this.head, want - done);
      if (sink === VIEWS) {
        (into as Buffer[]).push(c.subarray(this.head, this.head + m));
      } else {
        if (sink === COPY) c.copy(into as Buffer, at + done, this.head, this.head + m);
        this.dead(c.buffer, m);
      }
      done += m;
      this.advance(c, m);
    }
    this.size -= want;
    return want;
  }

  /** Move the read position m bytes on inside the first chunk `c`; a chunk read through leaves the queue. */
  private advance(c: Buffer, m: number): void {
    this.head += m;
    if (this.head === c.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
