/**
 * An exact-length reader over any Duplex (a socket, a TLS stream, an
 * in-process pair end): what arrives is queued as chunks and `read(n)`
 * resolves with exactly n bytes (no quadratic concatenation on long reads).
 * The one reader of the client library (`nbd-engine/client`) and of the
 * tests' byte-level NBD clients.
 */
import type { Duplex } from 'node:stream';

export class ByteReader {
  private chunks: Buffer[] = [];
  private head = 0;
  private size = 0;
  private waiters: Array<() => void> = [];
  private stream: Duplex;
  private discarding = false;
  /** The stream ended, closed or failed: no more bytes will come. */
  ended = false;
  /** The first error the stream reported. */
  error: Error | undefined;
  /** Bytes received and thrown away since `discard()`. */
  discarded = 0;

  constructor(stream: Duplex) {
    this.stream = stream;
    this.attach(stream);
  }

  /** Called with every chunk that arrives, before it is queued (a wire log). */
  tap: ((d: Buffer) => void) | undefined;

  private readonly onData = (d: Buffer): void => {
    this.tap?.(d);
    if (this.discarding) {
      this.discarded += d.length;
      return;
    }
    this.chunks.push(d);
    this.size += d.length;
    this.wake();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };

  private readonly onError = (e: Error): void => {
    this.error ??= e;
    this.onEnd();
  };

  /** Read from `stream` from now on (after `detach()`, e.g. once TLS wraps the socket). */
  attach(stream: Duplex): void {
    this.stream = stream;
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** Stop reading the current stream (its 'error' handler stays, so a late error is not thrown). */
  detach(): void {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Bytes received and not read yet. */
  get available(): number {
    return this.size;
  }

  /** From now on, count what arrives and drop it (and drop whatever is pending). */
  discard(): void {
    this.discarding = true;
    this.discarded += this.size;
    this.chunks = [];
    this.head = 0;
    this.size = 0;
    this.stream.resume();
  }

  /**
   * Exactly n bytes (a buffer of its own); rejects if the stream ends first,
   * or after `timeout` ms when one is given.
   */
  async read(n: number, timeout?: number): Promise<Buffer> {
    const deadline = timeout === undefined ? undefined : Date.now() + timeout;
    while (this.size < n) {
      if (this.ended) throw new Error(`connection closed after ${this.size}/${n} bytes${this.error ? ` (${this.error.message})` : ''}`);
      if (deadline === undefined) {
        await new Promise<void>((r) => this.waiters.push(r));
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.size})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const m = Math.min(c.length - this.head, n - filled);
      c.copy(out, filled, this.head, this.head + m);
      filled += m;
      this.head += m;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.size -= n;
    return out;
  }
}
