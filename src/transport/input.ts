/**
 * A connection's input: the socket's bytes into the decoder. Plain sockets
 * that will never be handed to TLS read into reusable slabs, and a placed
 * WRITE's payload straight into the storage offered for it (socket.ts);
 * bytes that arrive while STARTTLS owns the raw socket are plaintext that
 * must never be interpreted; bytes after the end of the session (DISC, the
 * end of the handshake) are dropped, said once in the log. What the decoder
 * yields is pulled by flow control (flow.ts), not here.
 */
import type { Duplex } from 'node:stream';
import type { Subscription } from 'rxjs';
import type { DecodeFailure, FrameDecoder } from '../protocol/decoder.js';
import { fromSocket, type ReadWindow } from './socket.js';
import type { Logger } from './logger.js';

/** The session, as its input sees it. */
export interface InputHost {
  closed(): boolean;
  /** STARTTLS owns the raw socket. */
  upgrading(): boolean;
  plaintextDuringUpgrade(bytes: number): void;
  /** Bytes arrived (the idle clock). */
  touched(): void;
  /** Frames may be ready: pull them (flow control). */
  pump(): void;
  fatal(failure: DecodeFailure): void;
  socketError(err: Error): void;
  /** The client closed its side. */
  eof(): void;
  internalError(message: string): void;
  /** Bytes after the end of the session were dropped (strict mode reports them). */
  ignored?(bytes: number): void;
  readonly log: Logger;
  readonly peer: string;
}

export class SocketInput {
  private bytes: Subscription | null = null;
  /** Bytes received after the end of the session (ignored). */
  private ignored = 0;

  constructor(
    private readonly decoder: FrameDecoder,
    private readonly host: InputHost,
  ) {}

  /** Read `socket`; `slabReads` only for a socket that is never handed to TLS afterwards. */
  attach(socket: Duplex, slabReads: boolean): void {
    this.detach();
    this.bytes = fromSocket(socket, { slabReads, window: slabReads ? this.window : undefined }).subscribe({
      next: (chunk) => this.received(chunk),
      error: (err: Error) => this.host.socketError(err),
      complete: () => this.host.eof(),
    });
  }

  /** Stop reading the socket (STARTTLS takes it over, or the connection is gone). */
  detach(): void {
    this.bytes?.unsubscribe();
    this.bytes = null;
  }

  /**
   * The connection is over: nothing more is read or interpreted. Bytes still undecoded here were
   * sent before the server ended the session (shutdown, a timeout, a fatal error): the client broke
   * no rule, so they are said as such, not as bytes after its DISC.
   */
  stop(): void {
    const left = this.decoder.stop();
    if (left > 0) this.host.log.info?.(`${this.host.peer}: the connection ended with ${left} bytes of requests not yet decoded`);
    this.detach();
  }

  /** Bytes received after the end of the session (NBD_CMD_DISC, the handshake's end): dropped, said once in the log. */
  ignore(n: number): void {
    if (n <= 0) return;
    if (this.ignored === 0) this.host.log.info?.(`${this.host.peer}: ignoring bytes sent after the end of the session (NBD_CMD_DISC or handshake end)`);
    this.ignored += n;
    this.host.ignored?.(n);
  }

  private received(chunk: Buffer): void {
    const host = this.host;
    if (host.upgrading()) return host.plaintextDuringUpgrade(chunk.length);
    host.touched();
    if (this.decoder.phase === 'stopped') return this.ignore(chunk.length);
    if (!this.decoder.push(chunk)) {
      const f = this.decoder.next();
      host.fatal(f && f.kind === 'fatal' ? f : { kind: 'fatal', code: 'NBD_ERR_BUFFER_LIMIT', message: 'decoder refused input' });
      return;
    }
    host.pump();
  }

  /** Socket reads straight into a placed WRITE's storage (see FrameDecoder.placementWindow). */
  private readonly window: ReadWindow = {
    get: (): Buffer | null => (this.host.closed() || this.host.upgrading() ? null : this.decoder.placementWindow()),
    filled: (n: number): void => {
      try {
        this.decoder.placed(n);
      } catch (err) {
        this.host.internalError(`zero-copy WRITE bookkeeping failed: ${String(err)}`);
        return;
      }
      this.host.pump();
    },
  };
}
