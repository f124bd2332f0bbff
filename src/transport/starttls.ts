/**
 * NBD_OPT_STARTTLS on a live connection: after the handshake machine has
 * queued the ACK and entered `upgradingTls`, the ACK goes out in plaintext,
 * the raw socket stops being read, and TLS takes it over. Anything the
 * client pipelined behind STARTTLS is plaintext that must never be
 * interpreted (docs/rules.md, tls.plaintext-after-starttls): the client is
 * disconnected, none of it parsed. The session continues on the encrypted
 * stream (`adopt`) or drops the connection (`fail`: one log line, only this
 * connection affected).
 */
import type { Duplex } from 'node:stream';
import type { TlsUpgrade } from './tls.js';
import type { FrameDecoder } from '../protocol/decoder.js';
import { messageOf } from '../protocol/errors.js';
import type { ConnectionTrace } from '../inspect/recorder.js';
import type { ConnectionViolations } from '../api/violations.js';
import type { Logger } from './logger.js';
import type { SocketInput } from './input.js';
import type { ConnectionMachines } from './machines.js';
import type { ConnectionEnding } from './endings.js';
import type { ReplyWriter } from './socket.js';
import { withCode } from './effects.js';

/** Why an upgrade is abandoned (src/protocol/errors.ts). */
export type TlsDropCode = 'NBD_ERR_TLS_NOT_CONFIGURED' | 'tls.plaintext-after-starttls' | 'tls.handshake-failed' | 'NBD_ERR_HANDSHAKE_TIMEOUT';

export interface UpgradeHost {
  /** Drop what the decoder holds (bytes pipelined behind STARTTLS); how many there were. */
  discardPlaintext(): number;
  /** Send what is queued (the ACK), stop reading the raw socket, and hand it over. */
  releaseRaw(): Duplex;
  /** The upgrade is still wanted: the connection is open and the handshake still upgrading. */
  stillUpgrading(): boolean;
  /** Continue the session on the encrypted stream. */
  adopt(upgraded: TlsUpgrade): void;
  /** Drop the connection: one log line, the handshake machine told `tls.failed`; `code` says why. */
  fail(code: TlsDropCode, logLine: string): void;
}

export function startTls(host: UpgradeHost, upgrade: ((socket: Duplex) => Promise<TlsUpgrade>) | undefined): void {
  if (!upgrade) {
    host.fail('NBD_ERR_TLS_NOT_CONFIGURED', 'STARTTLS accepted but no TLS credentials are configured; disconnecting');
    return;
  }
  const dropped = host.discardPlaintext();
  if (dropped > 0) {
    plaintextDuringUpgrade(host, dropped);
    return;
  }
  upgrade(host.releaseRaw()).then(
    (upgraded) => {
      // The upgrade was abandoned meanwhile (timeout, the connection gone): the new stream goes too.
      if (!host.stillUpgrading()) {
        upgraded.stream.destroy();
        return;
      }
      host.adopt(upgraded);
    },
    (err: Error) => host.fail('tls.handshake-failed', `TLS handshake failed: ${err.message}; disconnecting`),
  );
}

/** Plaintext arrived on the raw socket while the upgrade was under way: never interpreted. */
export function plaintextDuringUpgrade(host: UpgradeHost, bytes: number): void {
  host.fail('tls.plaintext-after-starttls', `${bytes} plaintext bytes pipelined behind STARTTLS; disconnecting`);
}

/** The session as its upgrade sees it; the stream and its writer are asked when used (they change at `switchTo`). */
export interface TlsSession {
  readonly peer: string;
  readonly log: Logger;
  readonly decoder: FrameDecoder;
  readonly input: SocketInput;
  readonly machines: ConnectionMachines;
  readonly ending: ConnectionEnding;
  trace(): ConnectionTrace | null;
  violations(): ConnectionViolations | null;
  stream(): Duplex;
  writer(): ReplyWriter;
  /** The raw socket's drain no longer concerns the session (it is TLS's socket now). */
  releaseDrain(): void;
  /** Carry on over `secure` (a writer on it, its error, close and drain handled), as `identity` if the client proved one. */
  switchTo(secure: Duplex, identity: string | undefined): void;
  send(event: { type: string; [k: string]: unknown }): void;
  pump(): void;
}

/** The upgrade's steps carried out on a session (the UpgradeHost that `startTls` drives). */
export class SessionUpgrade implements UpgradeHost {
  constructor(private readonly s: TlsSession) {}

  discardPlaintext(): number {
    return this.s.decoder.discardBuffered();
  }

  releaseRaw(): Duplex {
    // The ACK goes out in plaintext before the socket is handed to TLS.
    this.s.writer().flushNow();
    this.s.input.detach();
    this.s.releaseDrain();
    return this.s.stream();
  }

  stillUpgrading(): boolean {
    return !this.s.machines.closed && this.s.machines.upgrading;
  }

  adopt({ stream: secure, identity, protocol, cipher }: TlsUpgrade): void {
    this.s.trace()?.tls('established', [protocol, cipher].filter(Boolean).join(' '));
    this.s.log.info?.(`${this.s.peer}: TLS established (${[protocol, cipher, identity ? `identity ${identity}` : ''].filter(Boolean).join(', ')})`);
    this.s.switchTo(secure, identity);
    this.s.decoder.restartOptions();
    this.s.send({ type: 'tls.established' });
    this.s.input.attach(secure, false);
    this.s.pump();
  }

  /**
   * The upgrade failed or must not happen: one log line, the handshake machine told, the socket
   * dropped and the session finished (while upgrading, the raw socket's close is not ours to act on).
   */
  fail(code: TlsDropCode, logLine: string): void {
    if (this.s.machines.closed) return;
    this.s.ending.logDrop(withCode(code, logLine));
    this.s.trace()?.tls('failed', withCode(code, logLine));
    this.s.violations()?.dropped(code, messageOf(code));
    this.s.input.detach();
    const reason = messageOf(code);
    this.s.send({ type: 'tls.failed', message: reason });
    this.s.ending.because(code, reason);
    this.s.writer().destroy();
    this.s.stream().destroy();
    this.s.ending.finish();
  }
}
