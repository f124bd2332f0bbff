/**
 * The socket edge: a socket as an rxjs Observable of its bytes, and the
 * reply writer (header + payload as separate buffers under cork, `drain`
 * honoured). The only code besides the listeners that touches sockets.
 */
import type { Duplex } from 'node:stream';
import { Observable } from 'rxjs';

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

/**
 * Writes whole frames. A frame (`Buffer[]`) is written contiguously, so
 * replies never interleave mid-frame; the socket is corked for the rest of
 * the tick so small replies coalesce into one syscall.
 */
export class ReplyWriter {
  private corked = false;
  private closed = false;
  bytesWritten = 0;

  constructor(
    private readonly socket: Duplex & { writableNeedDrain?: boolean },
    private readonly onDrainNeeded: () => void,
  ) {}

  /** Whether the socket wants us to wait for 'drain'. */
  get needsDrain(): boolean {
    return !this.closed && this.socket.writableNeedDrain === true;
  }

  write(frame: readonly Buffer[]): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    let ok = true;
    for (const b of frame) {
      if (b.length === 0) continue;
      this.bytesWritten += b.length;
      ok = this.socket.write(b) && ok;
    }
    if (!ok) this.onDrainNeeded();
  }

  private readonly uncork = () => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };

  /** Flush and half-close (soft disconnect). */
  end(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    if (!this.socket.destroyed) this.socket.end();
  }

  /** Drop the connection now (hard disconnect). */
  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
