/**
 * How a connection ends, said once. Whichever layer decides that the
 * connection ends records why (a catalogue code and its text, for
 * `connections$` and the log); a dropped connection gets one warning line,
 * whichever layer notices first; the socket's errors and its close are
 * handled here; and the wrap-up runs exactly once: the machines hear the
 * socket is gone, reading and the clocks stop, the connection actor stops,
 * and the application's `onClose` learns the outcome.
 */
import type { DecodeFailure } from '../protocol/decoder.js';
import type { CloseCode } from '../protocol/errors.js';
import type { Logger } from './logger.js';
import type { ConnectionActor } from './session-options.js';

/** What `onClose` is told: the handshake's outcome, and why the connection ended. */
export interface CloseInfo {
  outcome: string;
  code: CloseCode;
  reason: string;
}

/** The session, as its ending sees it. */
export interface EndingHost {
  readonly log: Logger;
  readonly peer: string;
  /** The connection actor. */
  actor(): ConnectionActor;
  /** An event for the active machine. */
  send(event: { type: string; [k: string]: unknown }): void;
  /** What the decoder holds of a frame not yet complete, if anything (its description). */
  incomplete(): string | null;
  /** The connection machine finished (or was stopped). */
  closed(): boolean;
  /** STARTTLS owns the raw socket: its errors and its close are the upgrade's to act on. */
  upgrading(): boolean;
  /** Destroy the socket now (through the reply writer). */
  dropSocket(): void;
  /** Stop reading the socket and the clocks. */
  halt(): void;
  /** Tell the application (its `onClose`). */
  notify(info: CloseInfo): void;
}

export class ConnectionEnding {
  private code: CloseCode = 'NBD_CLOSED_SOCKET';
  private reason = 'closed';
  /** The reason for a hard disconnect was logged already (one line per dropped connection). */
  private dropLogged = false;
  /** The socket closed (or the session failed) and `onClose` was told: once per session. */
  private notified = false;

  constructor(private readonly host: EndingHost) {}

  /** Why the connection ends (the latest word wins): its catalogue code and text. */
  because(code: CloseCode, reason: string): void {
    this.code = code;
    this.reason = reason;
  }

  /** Drop the connection now; `code` and `reason` say why. */
  destroy(reason: string, code: CloseCode): void {
    this.because(code, reason);
    this.host.dropSocket();
  }

  /** One warning per dropped connection, whichever layer notices first. */
  logDrop(message: string): void {
    if (this.dropLogged) return;
    this.dropLogged = true;
    this.host.log.warn(`${this.host.peer}: ${message}`);
  }

  /** A client that vanished in the middle of a frame (or with requests not yet decoded) gets one clear warning. */
  reportIncomplete(how: string): void {
    const partial = this.host.incomplete();
    if (partial) this.logDrop(`client ${how} ${partial}; connection closed`);
  }

  /** The client's bytes cannot be decoded: one warning, the machine told, the connection dropped. */
  fatal(f: DecodeFailure): void {
    this.logDrop(`${f.code}: ${f.message}; disconnecting`);
    this.host.send({ type: 'wire.fatal', code: f.code, message: `${f.code}: ${f.message}` });
    this.destroy(f.message, f.code);
  }

  /** Something went wrong on our side: one error line, the connection dropped and finished. */
  fail(message: string): void {
    // Already ending (a failure while finishing): the first failure said why, once.
    if (this.notified) return;
    this.host.log.error(`${this.host.peer}: NBD_ERR_INTERNAL: ${message}`);
    this.destroy(message, 'NBD_ERR_INTERNAL');
    this.finish();
  }

  /** The socket errored: a client gone mid-frame is reported, the error logged, the socket dropped. */
  readonly socketError = (err: Error): void => {
    const code = (err as NodeJS.ErrnoException).code;
    if (!this.host.closed() && !this.host.upgrading()) this.reportIncomplete(`reset the connection (${code ?? err.message})`);
    // A client vanishing mid-reply is routine; anything else is worth a warning. After the machines
    // finished (an ABORT or DISC was answered), the client may close before reading the last reply
    // (the spec lets it): nothing to say then.
    if (code !== 'EPIPE' && code !== 'ECONNRESET') this.host.log.warn(`${this.host.peer}: socket error: ${err.message}`);
    else if (!this.host.closed()) this.host.log.info?.(`${this.host.peer}: ${err.message}`);
    this.host.dropSocket();
  };

  /** The socket closed: the connection is over (unless STARTTLS is taking the raw socket over). */
  readonly socketClosed = (): void => {
    if (this.host.upgrading()) return;
    this.finish();
  };

  /** The connection is gone: wrap up, once. */
  finish(): void {
    if (this.notified) return;
    this.notified = true;
    this.host.send({ type: 'socket.closed' });
    this.host.halt();
    const actor = this.host.actor();
    try {
      actor.stop();
    } catch {
      /* stopping a stopped actor is harmless */
    }
    const outcome = actor.getSnapshot().context.outcome ?? 'closed';
    try {
      this.host.notify({ outcome, code: this.code, reason: this.reason });
    } catch (err) {
      this.host.log.error(`${this.host.peer}: close handler threw: ${String(err)}`);
    }
  }
}
