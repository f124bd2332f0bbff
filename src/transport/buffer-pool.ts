/**
 * Buffers of exact lengths kept for reuse, at most `maxIdleBytes` of them
 * idle: the READ reply buffers a server lends and takes back
 * (`Backend.readInto`, `NbdRequest.readBuffer`; one pool per server), and the
 * memory backend's spare receive buffers for zero-copy WRITEs.
 *
 * READs: a buffer is lent for one READ; the backend (or request handler) fills it and
 * the request is answered with it. It comes back once the reply's bytes are
 * out of it: copied into the connection's staging chunk (small READs) or
 * written to the socket (the write's callback, without error). A buffer that
 * never comes back — the connection closed with the reply still queued, the
 * request failed after the backend may have kept it, a recorder holds the
 * reply — is left to the garbage collector, never reused.
 *
 * Why: a READ answered with a freshly allocated buffer costs an allocation
 * V8 counts as external memory, and 1 GiB copied out of a file export in
 * 256 KiB READs made the collector run full collections for a third of the
 * copy's time (bench/RESULTS.md, "Stop 25: the file backend's READs …"). Reused
 * buffers cost nothing of the kind.
 *
 * Idle buffers are kept by exact length (clients repeat a few sizes: 4 KiB,
 * 64 KiB, 256 KiB, 1 MiB …), at most `maxIdleBytes` of them in all (the
 * server's `readBufferPool` limit); buffers in use are bounded by each
 * connection's in-flight limits like any READ.
 */
export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>();
  private idleBytes = 0;
  /** Counters for tests and diagnostics: buffers allocated, lent from the idle lists, and taken back. */
  readonly counters = { allocated: 0, reused: 0, returned: 0 };

  constructor(readonly maxIdleBytes: number) {}

  /** A buffer of exactly `length` bytes (contents undefined), lent until `give`. */
  take(length: number): Buffer {
    const list = this.idle.get(length);
    const b = list?.pop();
    if (b !== undefined) {
      this.idleBytes -= length;
      this.counters.reused++;
      return b;
    }
    this.counters.allocated++;
    // Its own memory (not a slice of Node's shared pool): nothing else lives in it.
    return Buffer.allocUnsafeSlow(length);
  }

  /** A lent buffer is free again: kept for the next READ of its length, or dropped when the pool is full. */
  give(b: Buffer): void {
    this.counters.returned++;
    const n = b.length;
    if (this.idleBytes + n > this.maxIdleBytes) return;
    let list = this.idle.get(n);
    if (list === undefined) this.idle.set(n, (list = []));
    list.push(b);
    this.idleBytes += n;
  }

  /** Bytes kept idle now. */
  get idleSize(): number {
    return this.idleBytes;
  }
}
