/**
 * Two in-memory Duplex streams joined back to back, for unit tests of code
 * that owns a socket: what one side writes, the other reads. Backpressure
 * is real — a write is only called back once the other side's readable
 * buffer has room (its reader consumed it) — so a side that does not read
 * makes the other's `writableLength` grow, as a slow TCP peer would.
 * Ending or destroying one side ends the other's readable side. Written
 * bytes are copied, as a socket's kernel buffer would.
 */
import { Duplex } from 'node:stream';

export function duplexPair(highWaterMark = 16 * 1024): [Duplex, Duplex] {
  const sides: Duplex[] = [];
  /** Per side: the write callback waiting for the peer's reader. */
  const waiting: Array<(() => void) | null> = [null, null];
  const make = (me: number): Duplex => {
    const peer = 1 - me;
    return new Duplex({
      readableHighWaterMark: highWaterMark,
      writableHighWaterMark: highWaterMark,
      read() {
        // Our reader wants more: the peer's pending write may go on.
        const cb = waiting[peer];
        waiting[peer] = null;
        cb?.();
      },
      write(chunk: Buffer, _enc, cb) {
        const other = sides[peer]!;
        if (other.destroyed) return cb();
        // Copied, as a kernel would: the writer may reuse its memory once called back.
        if (other.push(Buffer.from(chunk))) cb();
        else waiting[me] = () => cb();
      },
      final(cb) {
        const other = sides[peer]!;
        if (!other.destroyed) other.push(null);
        cb();
      },
      destroy(err, cb) {
        const other = sides[peer]!;
        const cbw = waiting[me];
        waiting[me] = null;
        cbw?.();
        if (!other.destroyed && !other.readableEnded) other.push(null);
        cb(err);
      },
    });
  };
  sides.push(make(0), make(1));
  return [sides[0]!, sides[1]!];
}
